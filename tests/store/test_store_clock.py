"""The in-process stores (memory, SQLite) time by the clock they are given, not the
wall's: a job's creation and end, and its expiry. The clock starts in 2001, so a time
taken from the wall clock anywhere would be years off and show."""

from __future__ import annotations

import pytest

from llm_worker.jobs.model import EventKind, JobSpec
from llm_worker.jobs.templates import Assistant
from llm_worker.store import MemoryStore
from tests.support.clock import ManualClock
from tests.support.stores import StoreFactory, store_factory

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    return store_factory(request, request.param)


async def test_a_finished_job_expires_by_the_store_clock(make_store: StoreFactory) -> None:
    clock = ManualClock()
    store = await make_store(queue_max=10, job_ttl=60, clock=clock)
    assert isinstance(store, MemoryStore)
    job_id = (await store.submit(SPEC)).id
    clock.advance(5)
    await store.claim(max_wait=0)
    await store.append(job_id, 1, EventKind.DONE)
    record = await store.get(job_id)
    assert record is not None
    assert (record.created_at, record.finished_at) == (clock() - 5, clock())

    clock.advance(59)  # within the TTL: kept, though by the wall clock it is long over
    assert await store.get(job_id) is not None
    assert store.sweep() == 0
    assert [r.id for r in await store.recent(None, 10, None)] == [job_id]

    clock.advance(2)  # 61 s after its end: gone, though the wall clock hardly moved
    assert await store.get(job_id) is None
    assert await store.recent(None, 10, None) == []
    assert store.sweep() == 1
