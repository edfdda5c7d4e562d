"""Tombstones, on every store: a job whose TTL passed leaves one (so a client is told
it expired), a job never known or forgotten on purpose none, and a tombstone goes
itself after ``TOMBSTONE_SECONDS``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from llm_worker.jobs.model import EventKind, JobSpec
from llm_worker.jobs.templates import Assistant
from llm_worker.store import JobStore, UnknownJob
from llm_worker.store.base import ExpiredJob
from llm_worker.store.sqlite import SQLiteStore
from tests.support.clock import ManualClock
from tests.support.stores import CONTRACT_STORE_KINDS, StoreFactory
from tests.support.waiting import eventually

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")
TTL = 60.0
KEEP = 600.0


class Timeline:
    """A store with short-lived jobs and tombstones, and how a test lets time pass: a
    clock moved at once (memory, SQLite), or real time (Redis expires by its own)."""

    def __init__(self, store: JobStore, clock: ManualClock | None) -> None:
        self.store = store
        self.clock = clock

    async def until(self, seconds: float, holds: Callable[[], Awaitable[bool]], what: str) -> None:
        """Let ``seconds`` (of the in-process stores' clock) pass; return once ``holds()``."""
        if self.clock is None:
            await eventually(holds, what=what)
            return
        self.clock.advance(seconds)
        assert await holds(), what


@pytest.fixture(params=CONTRACT_STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def timeline(make_store: StoreFactory, store_kind: str) -> Timeline:
    make = make_store
    if store_kind.startswith("redis"):
        return Timeline(await make(queue_max=10, job_ttl=0.3, tombstone_ttl=0.6), None)
    clock = ManualClock()
    store = await make(queue_max=10, job_ttl=TTL, tombstone_ttl=KEEP, clock=clock)
    return Timeline(store, clock)


async def finished_job(store: JobStore, tenant: str = "t") -> str:
    job_id = (await store.submit(SPEC, tenant)).id
    claim = await store.claim(max_wait=1)
    assert claim is not None and claim.job_id == job_id
    await store.append(job_id, claim.attempt, EventKind.DONE)
    return job_id


async def test_an_expired_job_leaves_a_tombstone_that_goes_in_its_turn(
    timeline: Timeline,
) -> None:
    store = timeline.store
    job_id = await finished_job(store, "acme")
    record = await store.get(job_id)
    assert record is not None and record.finished_at is not None
    assert await store.tombstone(job_id) is None  # kept: no tombstone yet
    assert await store.tombstone("never-was") is None

    async def expired() -> bool:
        return await store.get(job_id) is None and await store.tombstone(job_id) is not None

    await timeline.until(TTL + 1, expired, "the job's expiry")
    tombstone = await store.tombstone(job_id)
    assert tombstone is not None
    assert (tombstone.job_id, tombstone.tenant) == (job_id, "acme")
    ttl = TTL if timeline.clock is not None else 0.3
    assert tombstone.expired_at == pytest.approx(record.finished_at + ttl, abs=0.01)
    if timeline.clock is not None:
        store.sweep()  # type: ignore[attr-defined]  # swept or not: the same answer
        assert await store.tombstone(job_id) == tombstone
        with pytest.raises(ExpiredJob):
            await store.read(job_id)

    async def gone() -> bool:
        return await store.tombstone(job_id) is None

    await timeline.until(KEEP, gone, "the tombstone's expiry")
    if timeline.clock is not None:
        store.sweep()  # type: ignore[attr-defined]
        with pytest.raises(UnknownJob) as unknown:
            await store.read(job_id)
        assert not isinstance(unknown.value, ExpiredJob)


async def test_a_forgotten_job_leaves_no_tombstone(timeline: Timeline) -> None:
    store = timeline.store
    forgotten = await finished_job(store)
    expiring = await finished_job(store)
    assert await store.forget(forgotten)

    async def expired() -> bool:
        return await store.tombstone(expiring) is not None

    await timeline.until(TTL + 1, expired, "the other job's expiry")
    assert await store.tombstone(forgotten) is None


async def test_sqlite_keeps_tombstones_across_restarts(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "jobs.db"

    async def opened() -> SQLiteStore:
        store = SQLiteStore(path, queue_max=10, job_ttl=TTL, clock=clock, tombstone_ttl=KEEP)
        await store.start()
        return store

    store = await opened()
    swept = await finished_job(store)
    clock.advance(TTL + 1)
    store.sweep()  # its tombstone is written as the sweep deletes it
    found_at_start = await finished_job(store)
    await store.close()

    clock.advance(TTL + 1)  # the second expires while the store is closed
    store = await opened()
    try:
        assert {t.job_id for t in store.sqlite.kept_tombstones} == {swept, found_at_start}
        for job_id in (swept, found_at_start):
            assert await store.tombstone(job_id) is not None
    finally:
        await store.close()

    clock.advance(KEEP)
    store = await opened()
    try:
        assert store.sqlite.kept_tombstones == []
        assert await store.tombstone(swept) is None
    finally:
        await store.close()
