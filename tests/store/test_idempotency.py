"""Idempotent submission, on every store: memory, SQLite, Redis and a Redis Cluster.

One key of one tenant makes one job within its window, however many adds race with
it; the same key for another request is refused; keys are per tenant; a key whose
window ended makes a new job.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llm_worker.jobs.model import JobSpec, JobState, spec_json
from llm_worker.jobs.templates import Assistant
from llm_worker.store import JobStore, QueueFull
from llm_worker.store.base import KeyReused
from llm_worker.store.idempotency import IdempotencyKey, key_problem, request_digest
from llm_worker.store.sqlite import SQLiteStore
from tests.support.clock import ManualClock
from tests.support.stores import CONTRACT_STORE_KINDS, StoreFactory
from tests.support.waiting import eventually

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")
OTHER = SPEC.model_copy(update={"query": "another question"})


def key_of(spec: JobSpec, key: str = "key-1", window: float = 60) -> IdempotencyKey:
    return IdempotencyKey(key, request_digest(spec_json(spec)), window)


@pytest.fixture(params=CONTRACT_STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def store(make_store: StoreFactory) -> JobStore:
    return await make_store(queue_max=100, job_ttl=60)


async def test_racing_adds_of_one_key_make_one_job(store: JobStore) -> None:
    results = await asyncio.gather(*(store.submit_once(SPEC, "t", key_of(SPEC)) for _ in range(8)))
    assert len({result.record.id for result in results}) == 1
    assert sorted(result.replayed for result in results) == [False] + [True] * 7
    assert (await store.stats()).pending == 1
    first = next(result.record for result in results if not result.replayed)
    # A replay answers as the first add did: the job just queued.
    assert all(result.record == first for result in results)
    assert first.state is JobState.PENDING
    assert (await store.get(first.id)) is not None


async def test_a_key_comes_back_with_the_first_job_after_it_ran(store: JobStore) -> None:
    first = await store.submit_once(SPEC, "t", key_of(SPEC))
    claim = await store.claim(max_wait=0)
    assert claim is not None and claim.job_id == first.record.id
    again = await store.submit_once(SPEC, "t", key_of(SPEC))
    assert again.replayed and again.record.id == first.record.id
    assert await store.claim(max_wait=0) is None  # nothing new was queued


async def test_the_same_key_for_another_request_is_refused(store: JobStore) -> None:
    first = await store.submit_once(SPEC, "t", key_of(SPEC))
    with pytest.raises(KeyReused) as refused:
        await store.submit_once(OTHER, "t", key_of(OTHER))
    assert refused.value.job_id == first.record.id
    assert "different request" in str(refused.value)
    assert (await store.stats()).pending == 1


async def test_keys_are_per_tenant(store: JobStore) -> None:
    a = await store.submit_once(SPEC, "a", key_of(SPEC))
    b = await store.submit_once(OTHER, "b", key_of(OTHER))  # the same key, another tenant
    assert not b.replayed and a.record.id != b.record.id
    assert b.record.tenant == "b"
    assert (await store.submit_once(SPEC, "a", key_of(SPEC))).record.id == a.record.id


async def test_an_add_refused_keeps_no_key(make_store: StoreFactory) -> None:
    small = await make_store(queue_max=1, job_ttl=60)
    await small.submit(SPEC)
    with pytest.raises(QueueFull):
        await small.submit_once(SPEC, "t", key_of(SPEC))
    await small.claim(max_wait=0)
    made = await small.submit_once(SPEC, "t", key_of(SPEC))
    assert not made.replayed


async def test_a_key_whose_window_ended_makes_a_new_job(
    make_store: StoreFactory, store_kind: str
) -> None:
    if store_kind.startswith("redis"):
        # Redis ends the window by its own clock (PX): a short one passes in real time.
        store = await make_store(queue_max=10, job_ttl=60)
        first = await store.submit_once(SPEC, "t", key_of(SPEC, window=0.3))

        async def new_job() -> bool:
            made = await store.submit_once(SPEC, "t", key_of(SPEC, window=0.3))
            return made.record.id != first.record.id

        await eventually(new_job, what="the key's window ending")
        return
    clock = ManualClock()
    store = await make_store(queue_max=10, job_ttl=60, clock=clock)
    first = await store.submit_once(SPEC, "t", key_of(SPEC))
    clock.advance(59)
    assert (await store.submit_once(SPEC, "t", key_of(SPEC))).replayed
    clock.advance(2)
    # Past the window: another request is no conflict, and it makes a new job.
    second = await store.submit_once(OTHER, "t", key_of(OTHER))
    assert not second.replayed and second.record.id != first.record.id


async def test_sqlite_keeps_keys_across_a_restart_until_their_window_ends(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path, queue_max=10, job_ttl=60, clock=clock)
    await store.start()
    first = await store.submit_once(SPEC, "t", key_of(SPEC))
    await store.close()

    store = SQLiteStore(path, queue_max=10, job_ttl=60, clock=clock)
    await store.start()
    try:
        again = await store.submit_once(SPEC, "t", key_of(SPEC))
        assert again.replayed and again.record.id == first.record.id
        with pytest.raises(KeyReused):
            await store.submit_once(OTHER, "t", key_of(OTHER))
        clock.advance(61)
        store.sweep()
    finally:
        await store.close()

    store = SQLiteStore(path, queue_max=10, job_ttl=60, clock=clock)
    await store.start()
    try:
        assert store.sqlite.kept_once == []
        assert not (await store.submit_once(OTHER, "t", key_of(OTHER))).replayed
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "must not be empty"),
        ("k" * 256, "at most 255 characters, not 256"),
        ("caf\u00e9", "printable ASCII"),
        ("a\nb", "printable ASCII"),
    ],
)
def test_a_bad_key_says_why(key: str, problem: str) -> None:
    found = key_problem(key)
    assert found is not None and problem in found


def test_a_good_key_and_the_digest() -> None:
    assert key_problem("k" * 255) is None
    assert key_problem("4f6c1d3e-8b2a-4c59-9d7e-0a1b2c3d4e5f") is None
    reordered = JobSpec.model_validate_json(
        b'{"query": "q", "assistant": {"streams": [{"pipeline": "echo"}]}}'
    )
    assert request_digest(spec_json(reordered)) == request_digest(spec_json(SPEC))
    assert request_digest(spec_json(OTHER)) != request_digest(spec_json(SPEC))
