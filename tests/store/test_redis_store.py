"""What the Redis store adds to the contract: workers that die or pause lose their
jobs to others, and a worker that lost a job can neither write to it nor disturb
the worker that took it over."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from llm_worker.jobs.model import EventKind, JobSpec, JobState
from llm_worker.jobs.templates import Assistant
from llm_worker.store import NotOwner, UnknownJob
from llm_worker.store.redis import GROUP, RedisStore
from llm_worker.store.redis.scripts import APPEND
from tests.support.stores import StoreFactory, store_factory, until_shown
from tests.support.waiting import eventually

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")


def heartbeat(store: RedisStore) -> asyncio.Task[None]:
    return next(task for task in store._tasks if task.get_name() == "redis-heartbeat")


async def owner_of(store: RedisStore, entry: str) -> str | None:
    client = aioredis.Redis.from_url(store.url)
    try:
        pending = await client.xpending_range(store.keys.jobs_key, GROUP, entry, entry, 1)
    finally:
        await client.aclose()
    return pending[0]["consumer"].decode() if pending else None


async def taken_over(factory: StoreFactory) -> tuple[RedisStore, RedisStore, str, str]:
    """A job claimed by a first worker that then pauses, taken over by a second one."""
    first = await factory(queue_max=10, job_ttl=60, heartbeat_timeout=0.6)
    second = await factory(queue_max=10, job_ttl=60, heartbeat_timeout=0.6, prefix=first.prefix)
    assert isinstance(first, RedisStore)
    assert isinstance(second, RedisStore)
    job_id = (await first.submit(SPEC)).id
    claim = await first.claim(max_wait=1)
    assert claim is not None
    assert claim.attempt == 1
    await first.append(job_id, 1, EventKind.RUNNING)
    await first.append(job_id, 1, EventKind.RUNNING, "partial")
    entry = first._claims.held[job_id].entry
    heartbeat(first).cancel()  # the pause: no more heartbeats
    for _ in range(40):
        takeover = await second.claim(max_wait=0.1)
        if takeover is not None:
            break
    else:
        raise AssertionError("the job was not taken over")
    assert takeover.job_id == job_id
    assert takeover.attempt == 2
    assert await owner_of(second, entry) == second.worker_name
    return first, second, job_id, entry


async def finish(store: RedisStore, job_id: str, entry: str) -> None:
    await store.append(job_id, 2, EventKind.RUNNING)
    await store.append(job_id, 2, EventKind.RUNNING, "whole")
    await store.append(job_id, 2, EventKind.DONE)
    events = await store.read(job_id)
    assert [(e.kind, e.message, e.attempt) for e in events] == [
        (EventKind.RESET, "", 2),
        (EventKind.RUNNING, "", 2),
        (EventKind.RUNNING, "whole", 2),
        (EventKind.DONE, "", 2),
    ]
    assert (await store.get(job_id)).state is JobState.DONE  # type: ignore[union-attr]
    assert await owner_of(store, entry) is None  # acknowledged once done


async def test_a_worker_that_lost_its_job_cannot_write_to_it_nor_drop_its_entry(
    redis_store_factory: StoreFactory,
) -> None:
    first, second, job_id, entry = await taken_over(redis_store_factory)
    lost = asyncio.Event()
    first.on_cancel(job_id, lost.set)
    # The first worker wakes up and writes on: refused when the write reaches Redis,
    # which stops the job there; the entry stays put.
    await first.append(job_id, 1, EventKind.RUNNING, "stale")
    await asyncio.wait_for(lost.wait(), 5)
    with pytest.raises(NotOwner):
        await first.append(job_id, 1, EventKind.RUNNING, "staler")
    assert "stale" not in [e.message for e in await second.read(job_id)]
    assert await owner_of(second, entry) == second.worker_name
    await second.beat()
    assert job_id in second._claims.held
    await finish(second, job_id, entry)


async def test_a_worker_that_lost_its_job_does_not_take_it_back_by_heartbeat(
    redis_store_factory: StoreFactory,
) -> None:
    first, second, job_id, entry = await taken_over(redis_store_factory)
    lost = asyncio.Event()
    first.on_cancel(job_id, lost.set)
    await first.beat()
    assert await owner_of(second, entry) == second.worker_name
    assert lost.is_set()  # it learns it lost the job, and stops it
    await finish(second, job_id, entry)


async def test_appends_retried_after_a_lost_reply_are_not_doubled(
    redis_store_factory: StoreFactory,
) -> None:
    store = await redis_store_factory(queue_max=10, job_ttl=60)
    assert isinstance(store, RedisStore)
    job_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=1)
    await store.append(job_id, 1, EventKind.RUNNING, "a")
    await store.append(job_id, 1, EventKind.RUNNING, "b")
    await until_shown(store, job_id, 2)
    # Replay the write of those events, as a retry after a lost reply would.
    held = store._claims.held[job_id]
    seq = await store._conn.run(
        APPEND,
        job_key=store.keys.job_key(job_id),
        events_key=store.keys.events_key(job_id),
        gone_key=store.keys.gone_key(job_id),
        attempt=1,
        last_op=held.ops,
        ttl_ms=60_000,
        now="0",
        tombstone_ms=60_000,
        events=["running", "a", "running", "b"],
    )
    assert seq == 2
    await store.append(job_id, 1, EventKind.RUNNING, "c")
    await until_shown(store, job_id, 3)
    assert [e.message for e in await store.read(job_id)] == ["a", "b", "c"]


async def test_cancel_reaches_the_worker_in_another_process(
    redis_store_factory: StoreFactory,
) -> None:
    worker = await redis_store_factory(queue_max=10, job_ttl=60)
    assert isinstance(worker, RedisStore)
    gateway = await redis_store_factory(queue_max=10, job_ttl=60, prefix=worker.prefix)
    job_id = (await gateway.submit(SPEC)).id
    await worker.claim(max_wait=1)
    cancelled = asyncio.Event()
    worker.on_cancel(job_id, cancelled.set)
    await gateway.cancel(job_id)
    await asyncio.wait_for(cancelled.wait(), 2)


async def test_followers_joining_while_a_log_loads_share_its_outcome(
    redis_store_factory: StoreFactory,
) -> None:
    store = await redis_store_factory(queue_max=10, job_ttl=60)
    job_id = (await store.submit(SPEC)).id

    async def first_batch(job: str) -> list[int]:
        async for batch in store.follow(job):
            return [e.seq for e in batch]
        return []

    # Two followers of an unknown job at once: both are told, neither hangs.
    results = await asyncio.wait_for(
        asyncio.gather(first_batch("nope"), first_batch("nope"), return_exceptions=True), 5
    )
    assert all(isinstance(r, UnknownJob) for r in results), results

    # One follower gives up while the log loads; the other still gets the events.
    quitter = asyncio.create_task(first_batch(job_id))
    stayer = asyncio.create_task(first_batch(job_id))
    await asyncio.sleep(0)
    quitter.cancel()
    await store.claim(max_wait=1)
    await store.append(job_id, 1, EventKind.RUNNING)
    assert await asyncio.wait_for(stayer, 5) == [1]
    assert store._mirrors.feeds == {}


async def test_a_worker_never_takes_over_its_own_running_job(
    redis_store_factory: StoreFactory,
) -> None:
    # As after a Redis outage longer than the heartbeat timeout: the worker's own
    # entry looks abandoned, but the job still runs here and must not run twice.
    store = await redis_store_factory(queue_max=10, job_ttl=60, heartbeat_timeout=0.3)
    assert isinstance(store, RedisStore)
    job_id = (await store.submit(SPEC)).id
    claim = await store.claim(max_wait=1)
    assert claim is not None
    heartbeat(store).cancel()  # no heartbeats
    await store.append(job_id, 1, EventKind.RUNNING)
    await asyncio.sleep(0.5)
    store._claims.next_takeover_check = 0.0
    assert await store.claim(max_wait=0.2) is None
    await store.append(job_id, 1, EventKind.RUNNING, "one")
    await store.append(job_id, 1, EventKind.RUNNING, "two")
    await until_shown(store, job_id, 3)
    assert [e.message for e in await store.read(job_id)] == ["", "one", "two"]


@pytest.fixture(params=["redis", "redis-cluster"])
def make_shared_store(request: pytest.FixtureRequest) -> StoreFactory:
    return store_factory(request, request.param)


async def test_hundreds_of_followers_at_once_keep_to_a_bounded_pool(
    make_shared_store: StoreFactory,
) -> None:
    # A gateway whose clients follow 300 jobs loads 300 logs at once: more commands
    # than a cluster client may have connections per node. They wait their turn.
    gateway = await make_shared_store(queue_max=1000, job_ttl=60)
    assert isinstance(gateway, RedisStore)
    worker = await make_shared_store(queue_max=1000, job_ttl=60, prefix=gateway.prefix)
    ids = [(await gateway.submit(SPEC)).id for _ in range(300)]

    async def text_of(job_id: str) -> str:
        text = ""
        async for batch in gateway.follow(job_id):
            text += "".join(e.message for e in batch if e.kind is EventKind.RUNNING)
            if batch[-1].kind.terminal:
                assert batch[-1].kind is EventKind.DONE
                return text
        raise AssertionError("the log ended without an end")

    followers = [asyncio.create_task(text_of(job_id)) for job_id in ids]
    for _ in ids:
        claim = await worker.claim(max_wait=5)
        assert claim is not None
        await worker.append(claim.job_id, claim.attempt, EventKind.RUNNING)
        await worker.append(claim.job_id, claim.attempt, EventKind.RUNNING, claim.job_id[:8])
        await worker.append(claim.job_id, claim.attempt, EventKind.DONE)
    texts = await asyncio.wait_for(asyncio.gather(*followers), 60)
    assert texts == [job_id[:8] for job_id in ids]


async def test_the_index_of_recent_jobs_pages_through_ties_and_drops_expired_jobs(
    make_shared_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_worker.store.redis import listing

    monkeypatch.setattr(listing, "_RECENT_PAGE", 2)  # pages of two ids
    store = await make_shared_store(queue_max=20, job_ttl=0.3)
    assert isinstance(store, RedisStore)
    ids = [(await store.submit(SPEC)).id for _ in range(5)]
    assert [r.id for r in await store.recent(None, 10, None)] == ids[::-1]
    client = aioredis.RedisCluster.from_url(store.url) if store.cluster else None
    client = client or aioredis.Redis.from_url(store.url)
    try:
        # Jobs created at the very same time: each is listed once all the same.
        await client.zadd(store.keys.recent_key, dict.fromkeys(ids[1:], 1000.0))
        listed = [r.id for r in await store.recent(None, 10, None)]
        assert listed[0] == ids[0] and sorted(listed[1:]) == sorted(ids[1:])
        assert len(await store.recent(None, 3, None)) == 3
        # A finished job expires: a sweep drops it from the index, as a listing would.
        claim = await store.claim(max_wait=0)
        assert claim is not None
        await store.append(claim.job_id, 1, EventKind.DONE)
        swept = 0

        async def expired_and_swept() -> bool:
            nonlocal swept
            swept += await store.sweep_recent()
            return swept >= 1

        # Expiry is Redis's, 0.3 s after the end: on a busy machine, somewhat later.
        await eventually(expired_and_swept, what="the finished job's sweep")
        assert swept == 1
        assert await client.zcard(store.keys.recent_key) == 4
        assert claim.job_id not in [r.id for r in await store.recent(None, 10, None)]
    finally:
        await client.aclose()


async def test_kinds_from_a_newer_version_are_left_out(redis_store_factory: StoreFactory) -> None:
    store = await redis_store_factory(queue_max=10, job_ttl=60)
    assert isinstance(store, RedisStore)
    job_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=1)
    await store.append(job_id, 1, EventKind.RUNNING)
    await store.append(job_id, 1, EventKind.NOTICE, "loading local model 'm'")
    await store.append(job_id, 1, EventKind.RUNNING, "an answer")
    await store.append(job_id, 1, EventKind.DONE)
    await until_shown(store, job_id, 4)
    # The log as a newer version might have written it: a kind this one does not know
    # between the notice and the text.
    key = store.keys.events_key(job_id)
    client = aioredis.Redis.from_url(store.url)
    try:
        entries = [fields for _, fields in await client.xrange(key)]
        await client.delete(key)
        entries.insert(2, {b"k": b"from-the-future", b"m": b"?", b"a": b"1"})
        for seq, fields in enumerate(entries, start=1):
            await client.xadd(key, fields, id=f"0-{seq}")
    finally:
        await client.aclose()

    reader = await redis_store_factory(queue_max=10, job_ttl=60, prefix=store.prefix)
    events = await reader.read(job_id)
    assert [(e.seq, e.kind, e.message) for e in events] == [
        (1, EventKind.RUNNING, ""),
        (2, EventKind.NOTICE, "loading local model 'm'"),
        (4, EventKind.RUNNING, "an answer"),
        (5, EventKind.DONE, ""),
    ]
    for after, seqs in ((1, [2, 4, 5]), (3, [4, 5]), (4, [5])):
        followed = [e.seq async for batch in reader.follow(job_id, after) for e in batch]
        assert followed == seqs, after
