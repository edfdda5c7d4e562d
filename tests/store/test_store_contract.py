"""The job store contract, on every store: memory, SQLite, Redis and a Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from llm_worker.jobs.model import EventKind, JobSpec, JobState, has_text, output_of, spec_json
from llm_worker.jobs.templates import Assistant
from llm_worker.store import JobStore, NotOwner, QueueFull, RateLimited, UnknownJob
from llm_worker.store.base import ListingKey
from llm_worker.store.limits import TenantLimits
from tests.support.clock import ManualClock
from tests.support.stores import (
    CONTRACT_DURABLE_STORE_KINDS,
    CONTRACT_STORE_KINDS,
    StoreFactory,
    store_factory,
    until_shown,
)
from tests.support.waiting import eventually

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")


@pytest.fixture(params=CONTRACT_STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture(params=CONTRACT_DURABLE_STORE_KINDS)
def make_durable_store(request: pytest.FixtureRequest) -> StoreFactory:
    return store_factory(request, request.param)


@pytest.fixture
async def store(make_store: StoreFactory) -> JobStore:
    return await make_store(queue_max=100, job_ttl=60)


class ShortLived:
    """A store whose finished jobs expire, and how a test lets their TTL pass."""

    def __init__(self, store: JobStore, clock: ManualClock | None) -> None:
        self.store = store
        self.clock = clock

    def a_moment_later(self) -> None:
        """Let a moment pass (for jobs added apart to be listed in order)."""
        if self.clock is not None:  # Redis: real time has passed already
            self.clock.advance(1)

    async def pass_ttl(self, gone: Callable[[], Awaitable[bool]], what: str) -> None:
        """Let the TTL of the jobs finished so far pass; return once ``gone()`` holds."""
        if self.clock is None:  # Redis: the TTL passes in real time (see short_lived)
            await eventually(gone, what=what)
            return
        assert not await gone(), f"{what}: before the TTL passed"
        self.clock.advance(61)
        assert await gone(), what


@pytest.fixture
async def short_lived(make_store: StoreFactory, store_kind: str) -> ShortLived:
    if store_kind.startswith("redis"):
        # Redis expires a finished job by its own clock (PEXPIRE), which no test
        # moves: a short TTL passes in real time, and the test asks until it has
        # (on a busy machine, somewhat after it).
        return ShortLived(await make_store(queue_max=10, job_ttl=0.3), None)
    # The memory and SQLite stores time expiry by the clock they are given: the
    # test moves it past the TTL at once.
    clock = ManualClock()
    return ShortLived(await make_store(queue_max=10, job_ttl=60, clock=clock), clock)


async def test_claim_is_fifo_and_counts_attempts(store: JobStore) -> None:
    ids = [(await store.submit(SPEC)).id for _ in range(3)]
    assert [await store.position(i) for i in ids] == [1, 2, 3]
    claim = await store.claim(max_wait=0)
    assert claim is not None
    assert claim.job_id == ids[0]
    assert claim.attempt == 1
    assert (await store.get(ids[0])).state is JobState.RUNNING  # type: ignore[union-attr]
    assert [await store.position(i) for i in ids] == [None, 1, 2]
    assert (await store.stats()).pending == 2
    assert (await store.stats()).running == 1


async def test_claim_waits_for_work_and_times_out(store: JobStore) -> None:
    assert await store.claim(max_wait=0.05) is None
    waiting = asyncio.create_task(store.claim(max_wait=5))
    await asyncio.sleep(0.01)
    record = await store.submit(SPEC)
    claim = await asyncio.wait_for(waiting, 1)
    assert claim is not None
    assert claim.job_id == record.id


async def test_queue_max(make_store: StoreFactory) -> None:
    small = await make_store(queue_max=2, job_ttl=60)
    await small.submit(SPEC)
    await small.submit(SPEC)
    with pytest.raises(QueueFull):
        await small.submit(SPEC)
    await small.claim(max_wait=0)  # running jobs do not count against the queue
    await small.submit(SPEC)


async def test_events_get_consecutive_seq_and_end_the_job(store: JobStore) -> None:
    job_id = (await store.submit(SPEC)).id
    claim = await store.claim(max_wait=0)
    assert claim is not None
    first = await store.append(job_id, 1, EventKind.RUNNING)
    second = await store.append(job_id, 1, EventKind.RUNNING, "hi")
    done = await store.append(job_id, 1, EventKind.DONE)
    assert [first.seq, second.seq, done.seq] == [1, 2, 3]
    assert (await store.get(job_id)).state is JobState.DONE  # type: ignore[union-attr]
    with pytest.raises(NotOwner):
        await store.append(job_id, 1, EventKind.RUNNING, "late")
    assert [e.seq for e in await store.read(job_id, after=1)] == [2, 3]


async def test_only_the_current_attempt_may_append(store: JobStore) -> None:
    job_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    with pytest.raises(NotOwner):
        await store.append(job_id, 2, EventKind.RUNNING)
    with pytest.raises(NotOwner):
        await store.append("nope", 1, EventKind.RUNNING)


async def test_follow_replays_then_goes_live_then_ends(store: JobStore) -> None:
    job_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    await store.append(job_id, 1, EventKind.RUNNING)
    await store.append(job_id, 1, EventKind.RUNNING, "a")
    await until_shown(store, job_id, 2)

    batches: list[list[int]] = []

    async def follow(after: int) -> None:
        async for batch in store.follow(job_id, after):
            batches.append([e.seq for e in batch])

    follower = asyncio.create_task(follow(0))
    await asyncio.sleep(0.01)
    assert batches == [[1, 2]]
    await store.append(job_id, 1, EventKind.RUNNING, "b")
    await store.append(job_id, 1, EventKind.RUNNING, "c")
    await until_shown(store, job_id, 4)
    await asyncio.sleep(0.01)
    # A listener that falls behind gets what accumulated as one batch.
    assert batches == [[1, 2], [3, 4]]
    await store.append(job_id, 1, EventKind.DONE)
    await asyncio.wait_for(follower, 1)
    assert batches == [[1, 2], [3, 4], [5]]

    # Following a finished job replays what is after `after`; with nothing
    # after it, the terminal event alone, so that a listener learns the end.
    batches.clear()
    await asyncio.wait_for(follow(3), 1)
    assert batches == [[4, 5]]
    for after in (5, 6, 1000):
        batches.clear()
        await asyncio.wait_for(follow(after), 1)
        assert batches == [[5]]


async def test_a_notice_is_kept_replayed_and_resumed_across(store: JobStore) -> None:
    job_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    await store.append(job_id, 1, EventKind.RUNNING)
    notice = await store.append(job_id, 1, EventKind.NOTICE, "loading local model 'm'")
    assert notice.seq == 2
    await until_shown(store, job_id, 2)
    before_text = await store.read(job_id)
    assert not has_text(before_text)
    assert output_of(before_text) == ""
    await store.append(job_id, 1, EventKind.RUNNING, "an answer")
    await store.append(job_id, 1, EventKind.DONE)
    await until_shown(store, job_id, 4)
    events = await store.read(job_id)
    assert [(e.seq, e.kind, e.message) for e in events] == [
        (1, EventKind.RUNNING, ""),
        (2, EventKind.NOTICE, "loading local model 'm'"),
        (3, EventKind.RUNNING, "an answer"),
        (4, EventKind.DONE, ""),
    ]
    assert output_of(events) == "an answer"
    record = await store.get(job_id)
    assert record is not None
    assert (record.state, record.error) == (JobState.DONE, None)

    async def follow(after: int) -> list[tuple[int, EventKind]]:
        return [(e.seq, e.kind) async for batch in store.follow(job_id, after) for e in batch]

    assert await asyncio.wait_for(follow(1), 5) == [
        (2, EventKind.NOTICE),
        (3, EventKind.RUNNING),
        (4, EventKind.DONE),
    ]
    assert await asyncio.wait_for(follow(2), 5) == [(3, EventKind.RUNNING), (4, EventKind.DONE)]


async def test_follow_an_unknown_job(store: JobStore) -> None:
    with pytest.raises(UnknownJob):
        async for _ in store.follow("nope"):
            pass


async def test_cancel_pending_and_running_jobs(store: JobStore) -> None:
    running_id = (await store.submit(SPEC)).id
    pending_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    fired: list[str] = []
    store.on_cancel(running_id, lambda: fired.append("running"))

    record = await store.cancel(pending_id)
    assert record.state is JobState.CANCELLED
    assert [e.kind for e in await store.read(pending_id)] == [EventKind.CANCELLED]
    assert await store.claim(max_wait=0) is None  # it left the queue

    await store.append(running_id, 1, EventKind.RUNNING)
    record = await store.cancel(running_id)
    assert record.state is JobState.CANCELLED
    assert fired == ["running"]
    with pytest.raises(NotOwner):
        await store.append(running_id, 1, EventKind.RUNNING, "after cancel")
    assert [e.kind for e in await store.read(running_id)] == [
        EventKind.RUNNING,
        EventKind.CANCELLED,
    ]
    assert (await store.stats()).running == 0

    # Cancelling again changes nothing.
    assert (await store.cancel(running_id)).state is JobState.CANCELLED
    assert len(await store.read(running_id)) == 2
    with pytest.raises(UnknownJob):
        await store.cancel("nope")


async def test_queue_moved_fires_when_a_job_leaves_the_queue(store: JobStore) -> None:
    first = (await store.submit(SPEC)).id
    await store.submit(SPEC)
    moved = asyncio.create_task(store.queue_moved())
    await asyncio.sleep(0.01)
    await store.submit(SPEC)  # joining at the back moves nobody up
    await asyncio.sleep(0.01)
    assert not moved.done()
    await store.cancel(first)
    await asyncio.wait_for(moved, 1)


async def test_finished_jobs_expire_after_their_ttl(short_lived: ShortLived) -> None:
    store = short_lived.store
    done_id = (await store.submit(SPEC)).id
    pending_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    await store.append(done_id, 1, EventKind.DONE)
    assert await store.get(done_id) is not None

    async def expired() -> bool:
        return await store.get(done_id) is None

    await short_lived.pass_ttl(expired, "the finished job's expiry")
    with pytest.raises(UnknownJob):
        await store.read(done_id)
    # Unfinished jobs never expire.
    assert await store.get(pending_id) is not None


async def test_a_request_asked_to_be_kept_is_kept_with_the_record(
    short_lived: ShortLived,
) -> None:
    store = short_lived.store
    kept = SPEC.model_copy(update={"keep_request": True, "query": "kept"})
    kept_id = (await store.submit(kept)).id
    plain_id = (await store.submit(SPEC)).id
    assert await store.request(kept_id) == kept
    assert await store.request(plain_id) is None
    for _ in range(2):
        claim = await store.claim(max_wait=0)
        assert claim is not None
        await store.append(claim.job_id, 1, EventKind.DONE)
    assert await store.request(kept_id) == kept  # after its end, for the TTL
    assert await store.request(plain_id) is None
    assert await store.request("no-such-job") is None

    async def gone() -> bool:
        return await store.request(kept_id) is None

    await short_lived.pass_ttl(gone, "the kept request's expiry")
    assert await store.get(kept_id) is None


async def test_an_ended_job_forgotten_is_gone_at_once(
    make_store: StoreFactory, store_kind: str, tmp_path: Path
) -> None:
    options = {"path": tmp_path / "forget.db"} if store_kind == "sqlite" else {}
    store = await make_store(queue_max=10, job_ttl=60, **options)
    kept = SPEC.model_copy(update={"keep_request": True})
    done_id, running_id, pending_id = [(await store.submit(kept)).id for _ in range(3)]
    await store.claim(max_wait=0)
    await store.append(done_id, 1, EventKind.RUNNING, "text")
    await until_shown(store, done_id, 1)

    following = asyncio.Event()

    async def follow() -> list[EventKind]:
        kinds = []
        async for batch in store.follow(done_id):
            kinds += [event.kind for event in batch]
            following.set()
        return kinds

    follower = asyncio.create_task(follow())  # waiting on the job when it ends
    await asyncio.wait_for(following.wait(), 10)
    await store.append(done_id, 1, EventKind.DONE)
    await store.claim(max_wait=0)  # running_id runs
    for refused in (running_id, pending_id, "no-such-job"):
        assert await store.forget(refused) is False, refused
    assert await store.forget(done_id) is True
    kinds = await asyncio.wait_for(follower, 10)  # ended, not left hanging
    assert kinds == [EventKind.RUNNING, EventKind.DONE]
    assert await store.forget(done_id) is False  # forgotten already
    assert await store.get(done_id) is None
    assert await store.request(done_id) is None
    with pytest.raises(UnknownJob):
        await store.read(done_id)
    with pytest.raises(UnknownJob):
        await follow()
    assert [r.id for r in await store.recent(None, 10, None)] == [pending_id, running_id]
    assert await store.request(running_id) == kept  # the others are untouched
    if store_kind == "sqlite":  # gone for good: not back after a restart
        await store.close()
        store = await make_store(queue_max=10, job_ttl=60, **options)
        assert await store.get(done_id) is None
        assert await store.request(done_id) is None
        assert [r.id for r in await store.recent(None, 10, None)] == [pending_id, running_id]


async def test_a_new_attempt_resets_the_log(make_durable_store: StoreFactory) -> None:
    # release() is how a worker hands a job back (as when it stops); stores that
    # outlive a worker then run it again.
    store = await make_durable_store(queue_max=10, job_ttl=60)
    job_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    await store.append(job_id, 1, EventKind.RUNNING)
    await store.append(job_id, 1, EventKind.RUNNING, "first try")
    await store.release(job_id, 1, "stopping")
    record = await store.get(job_id)
    assert record is not None
    assert record.state is JobState.PENDING
    assert await store.position(job_id) == 1
    claim = await store.claim(max_wait=0)
    assert claim is not None
    assert claim.attempt == 2
    with pytest.raises(NotOwner):
        await store.append(job_id, 1, EventKind.RUNNING, "stale attempt")
    await store.append(job_id, 2, EventKind.RUNNING)
    await store.append(job_id, 2, EventKind.RUNNING, "second try")
    await until_shown(store, job_id, 5)
    # Replays show the last attempt only, starting with its reset.
    events = await store.read(job_id)
    assert [(e.seq, e.kind, e.attempt) for e in events] == [
        (3, EventKind.RESET, 2),
        (4, EventKind.RUNNING, 2),
        (5, EventKind.RUNNING, 2),
    ]
    assert [e.seq for e in await store.read(job_id, after=1)] == [3, 4, 5]
    assert [e.seq for e in await store.read(job_id, after=4)] == [5]


async def test_release_in_memory_fails_the_job_because_nothing_survives_the_process(
    memory_store_factory: StoreFactory,
) -> None:
    store = await memory_store_factory(queue_max=10, job_ttl=60)
    job_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    await store.release(job_id, 1, "worker stopped")
    record = await store.get(job_id)
    assert record is not None
    assert record.state is JobState.FAILED
    assert record.error == "worker stopped"


def limits_of(**by_tenant: TenantLimits) -> Callable[[str], TenantLimits]:
    return lambda tenant: by_tenant.get(tenant, TenantLimits())


async def test_jobs_belong_to_their_tenant(store: JobStore) -> None:
    record = await store.submit(SPEC, tenant="acme")
    assert record.tenant == "acme"
    assert (await store.get(record.id)).tenant == "acme"  # type: ignore[union-attr]
    assert (await store.get((await store.submit(SPEC)).id)).tenant == ""  # type: ignore[union-attr]


async def test_a_tenant_s_share_of_the_queue(make_store: StoreFactory) -> None:
    store = await make_store(
        queue_max=100, job_ttl=60, limits=limits_of(a=TenantLimits(max_queued_jobs=2))
    )
    await store.submit(SPEC, tenant="a")
    await store.submit(SPEC, tenant="a")
    with pytest.raises(QueueFull, match=r"tenant 'a' has 2 jobs waiting, its limit"):
        await store.submit(SPEC, tenant="a")
    await store.submit(SPEC, tenant="b")  # others are not held back
    await store.claim(max_wait=1)  # a job that runs is no longer waiting
    await store.submit(SPEC, tenant="a")


async def test_a_tenant_runs_no_more_than_its_limit_and_others_pass(
    make_store: StoreFactory,
) -> None:
    store = await make_store(
        queue_max=100, job_ttl=60, limits=limits_of(a=TenantLimits(max_running_jobs=1))
    )
    a1 = (await store.submit(SPEC, tenant="a")).id
    a2 = (await store.submit(SPEC, tenant="a")).id
    b1 = (await store.submit(SPEC, tenant="b")).id
    first = await store.claim(max_wait=1)
    second = await store.claim(max_wait=1)
    assert (first and first.job_id, second and second.job_id) == (a1, b1)
    assert await store.claim(max_wait=0.2) is None  # a runs all it may
    assert await store.position(a2) == 1  # still waiting, first in line
    await store.append(a1, 1, EventKind.DONE)
    third = await store.claim(max_wait=2)
    assert third is not None and third.job_id == a2


async def test_the_queue_is_bounded_in_bytes(make_store: StoreFactory) -> None:
    size = len(spec_json(SPEC))
    store = await make_store(queue_max=100, job_ttl=60, queue_max_bytes=3 * size)
    for _ in range(3):
        await store.submit(SPEC)
    with pytest.raises(QueueFull, match=r"MiB of requests waiting, QUEUE_MAX_BYTES"):
        await store.submit(SPEC)
    await store.claim(max_wait=1)  # what runs leaves the queue's bytes
    await store.submit(SPEC)


async def test_a_tenant_adds_no_faster_than_its_rate(make_store: StoreFactory) -> None:
    store = await make_store(
        queue_max=100, job_ttl=60, limits=limits_of(a=TenantLimits(adds_per_minute=2))
    )
    await store.submit(SPEC, tenant="a")
    await store.submit(SPEC, tenant="a")
    with pytest.raises(RateLimited, match=r"tenant 'a' may add 2 jobs a minute") as limited:
        await store.submit(SPEC, tenant="a")
    assert 0 < limited.value.retry_after <= 30
    await store.submit(SPEC, tenant="b")


async def test_recent_lists_the_newest_jobs_first_of_a_state_and_a_tenant(
    store: JobStore,
) -> None:
    ids = [(await store.submit(SPEC, tenant)).id for tenant in ["a", "b", "a", "b", "a"]]
    a0, b0, a1, b1, a2 = ids
    claim = await store.claim(max_wait=0)
    assert claim is not None and claim.job_id == a0
    await store.append(a0, 1, EventKind.DONE)
    await store.cancel(b0)
    newest = await store.recent(None, 10, None)
    assert [r.id for r in newest] == [a2, b1, a1, b0, a0]
    created = [r.created_at for r in newest]
    assert created == sorted(created, reverse=True)
    assert [r.id for r in await store.recent(None, 2, None)] == [a2, b1]
    assert [r.id for r in await store.recent(None, 10, "a")] == [a2, a1, a0]
    assert [r.id for r in await store.recent(JobState.PENDING, 10, None)] == [a2, b1, a1]
    assert [r.id for r in await store.recent(JobState.PENDING, 1, "b")] == [b1]
    (done,) = await store.recent(JobState.DONE, 10, None)
    assert (done.id, done.state, done.tenant, done.attempt, done.error) == (
        a0, JobState.DONE, "a", 1, None,
    )  # fmt: skip
    assert done.finished_at is not None and done.finished_at >= done.created_at
    assert [r.id for r in await store.recent(JobState.CANCELLED, 10, "b")] == [b0]
    assert await store.recent(JobState.FAILED, 10, None) == []
    assert await store.recent(None, 10, "nobody") == []


async def test_recent_pages_walk_every_job_once_while_jobs_are_added(store: JobStore) -> None:
    first = [(await store.submit(SPEC, "a" if i % 3 else "b")).id for i in range(23)]
    seen: list[str] = []
    below: ListingKey | None = None
    while page := await store.recent(None, 5, None, below):
        assert len(page) <= 5
        seen += [record.id for record in page]
        below = ListingKey.of(page[-1])
        # Newer jobs added between pages shift no page: none of them shows from here on.
        await store.submit(SPEC, "a")
    assert seen == first[::-1]
    # A filtered walk, from a cursor made by the same key.
    b_jobs, below = [], None
    while page := await store.recent(None, 2, "b", below):
        b_jobs += [record.id for record in page]
        below = ListingKey.from_cursor(ListingKey.of(page[-1]).cursor())
    assert b_jobs == [job_id for i, job_id in enumerate(first) if not i % 3][::-1]


async def test_recent_leaves_out_expired_jobs(short_lived: ShortLived) -> None:
    store = short_lived.store
    done_id = (await store.submit(SPEC)).id
    short_lived.a_moment_later()
    pending_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    await store.append(done_id, 1, EventKind.DONE)
    assert [r.id for r in await store.recent(None, 10, None)] == [pending_id, done_id]

    async def only_the_pending_job_listed() -> bool:
        return [r.id for r in await store.recent(None, 10, None)] == [pending_id]

    await short_lived.pass_ttl(only_the_pending_job_listed, "the finished job's leaving the list")
    assert [r.id for r in await store.recent(JobState.DONE, 10, None)] == []
