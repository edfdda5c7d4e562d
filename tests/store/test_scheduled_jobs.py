"""Scheduled jobs (``run_at``) on every store: apart from the queue until due, then at
its end; cancelled before they start; kept across a restart; and a worker's claim
waits for the first to fall due without looking again and again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from llm_worker.jobs.model import Assistant, JobSpec, JobState, spec_json
from llm_worker.store import JobStore, QueueFull
from llm_worker.store.idempotency import IdempotencyKey, request_digest
from llm_worker.store.limits import TenantLimits
from tests.support.stores import (
    CONTRACT_STORE_KINDS,
    StoreFactory,
    store_factory,
    unique_prefix,
)

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")


def later(seconds: float) -> JobSpec:
    return SPEC.model_copy(update={"run_at": time.time() + seconds})


@pytest.fixture(params=CONTRACT_STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


async def test_a_scheduled_job_waits_apart_until_due(make_store: StoreFactory) -> None:
    store = await make_store(queue_max=10, job_ttl=60)
    record = await store.submit(later(1.0))
    assert record.shown_state(time.time()) == "scheduled"
    kept = await store.get(record.id)
    assert kept is not None and kept.state is JobState.PENDING
    assert kept.run_at == pytest.approx(record.run_at)
    assert await store.position(record.id) is None  # no place in the queue yet
    started = time.monotonic()
    assert await store.claim(max_wait=0.3) is None
    claim = await store.claim(max_wait=5)
    waited = time.monotonic() - started
    assert claim is not None and claim.job_id == record.id
    assert 0.9 <= waited < 2.5, waited


async def test_a_due_job_joins_the_end_of_the_queue(make_store: StoreFactory) -> None:
    store = await make_store(queue_max=10, job_ttl=60)
    scheduled = await store.submit(later(0.5))
    first = await store.submit(SPEC)
    second = await store.submit(SPEC)
    assert await store.position(second.id) == 2
    await asyncio.sleep(1.0)
    # Whichever process looked first, the job is queued once its time came (Redis:
    # a timer of the store's; memory and SQLite: on the next look at the queue).
    for _ in range(40):
        if await store.position(scheduled.id) is not None:
            break
        await asyncio.sleep(0.05)
    assert await store.position(scheduled.id) == 3
    order = [(await store.claim(max_wait=1)) for _ in range(3)]
    assert [claim.job_id for claim in order if claim] == [first.id, second.id, scheduled.id]


async def test_a_scheduled_job_cancelled_before_it_starts(make_store: StoreFactory) -> None:
    limits = TenantLimits(max_queued_jobs=1)
    store = await make_store(queue_max=10, job_ttl=60, limits=lambda tenant: limits)
    record = await store.submit(later(0.5), "t1")
    cancelled = await store.cancel(record.id)
    assert cancelled.state is JobState.CANCELLED
    assert await store.claim(max_wait=1.0) is None  # past its time: it never runs
    # Its place in the tenant's share is free again.
    again = await store.submit(SPEC, "t1")
    claim = await store.claim(max_wait=1)
    assert claim is not None and claim.job_id == again.id


async def test_a_claim_waits_for_the_earliest_scheduled_job(make_store: StoreFactory) -> None:
    store = await make_store(queue_max=10, job_ttl=60)
    await store.submit(later(30))
    soon = await store.submit(later(0.6))
    started = time.monotonic()
    claim = await store.claim(max_wait=5)
    waited = time.monotonic() - started
    assert claim is not None and claim.job_id == soon.id
    assert 0.5 <= waited < 1.6, waited
    assert (await store.stats()).pending == 0  # the one a month ahead does not wait to run


async def test_scheduled_jobs_count_in_shares_not_in_queue_max(make_store: StoreFactory) -> None:
    limits = TenantLimits(max_queued_jobs=2)
    store = await make_store(queue_max=2, job_ttl=60, limits=lambda tenant: limits)
    await store.submit(later(30), "t1")
    await store.submit(later(30), "t1")
    with pytest.raises(QueueFull) as full:
        await store.submit(SPEC, "t1")  # the tenant's share counts its scheduled jobs
    assert full.value.per_tenant
    # QUEUE_MAX counts the jobs waiting to run now: two more fit, not three.
    await store.submit(SPEC, "t2")
    await store.submit(SPEC, "t3")
    with pytest.raises(QueueFull) as full:
        await store.submit(SPEC, "t4")
    assert not full.value.per_tenant


async def test_a_scheduled_job_added_once_by_its_key(make_store: StoreFactory) -> None:
    store = await make_store(queue_max=10, job_ttl=60)
    spec = later(0.5)
    key = IdempotencyKey("k", request_digest(spec_json(spec)), 60)
    first = await store.submit_once(spec, "t", key)
    again = await store.submit_once(spec, "t", key)
    assert not first.replayed and again.replayed
    assert again.record.id == first.record.id
    assert await store.position(first.record.id) is None  # scheduled, not queued
    claim = await store.claim(max_wait=3)
    assert claim is not None and claim.job_id == first.record.id
    assert await store.claim(max_wait=0.2) is None  # once


@pytest.fixture(params=["sqlite", "redis"])
def durable_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_durable(request: pytest.FixtureRequest, durable_kind: str) -> StoreFactory:
    return store_factory(request, durable_kind)


async def test_a_scheduled_job_survives_a_restart(
    make_durable: StoreFactory, durable_kind: str, tmp_path: Path
) -> None:
    options: dict[str, Any] = {"queue_max": 10, "job_ttl": 60}
    if durable_kind == "sqlite":
        options["path"] = tmp_path / "jobs.db"
    else:
        options["prefix"] = unique_prefix()
    first: JobStore = await make_durable(**options)
    record = await first.submit(later(1.0))
    await first.close()
    store = await make_durable(**options)
    kept = await store.get(record.id)
    assert kept is not None and kept.shown_state(time.time()) == "scheduled"
    assert await store.claim(max_wait=0.2) is None
    claim = await store.claim(max_wait=5)
    assert claim is not None and claim.job_id == record.id
