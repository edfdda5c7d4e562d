"""A job store in this process's memory: for tests and throwaway runs.

Everything here runs on the event loop's thread, so each method body up to its
first ``await`` is atomic. :class:`~llm_worker.store.sqlite.SQLiteStore` adds
durability to the same logic through the ``_write_*`` and ``_commit`` hooks.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from llm_worker.jobs import Claim, Event, EventKind, JobRecord, JobSpec, JobState
from llm_worker.store.base import JobStore, NotOwner, QueueFull, StoreStats, UnknownJob
from llm_worker.store.eventlog import EventLog

log = logging.getLogger(__name__)


class StoredJob:
    """A job as the store holds it: record, request, place in the queue, log."""

    __slots__ = ("cancel_callbacks", "log", "record", "settling", "spec", "ticket")

    def __init__(self, record: JobRecord, spec: JobSpec | None, ticket: int) -> None:
        self.record = record
        self.spec: JobSpec | None = spec
        """What the client asked for; dropped once the job ended, to keep little."""
        self.ticket = ticket
        """Order of submission: the queue is sorted by it."""
        self.log = EventLog()
        self.cancel_callbacks: list[Callable[[], None]] = []
        self.settling: asyncio.Future[None] | None = None
        """The commit of the job's latest claim, while it is under way."""


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


class MemoryStore(JobStore):
    def __init__(
        self,
        *,
        queue_max: int,
        job_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue_max = queue_max
        self.job_ttl = job_ttl
        self._clock = clock
        self._jobs: dict[str, StoredJob] = {}
        # Pending jobs in FIFO order: tickets grow with each submit, so the
        # list stays sorted and a job's position is a binary search.
        self._pending: list[int] = []
        self._pending_jobs: dict[int, StoredJob] = {}
        self._tickets = itertools.count(1)
        self._running = 0
        self._claim_waiters: list[asyncio.Future[None]] = []
        self._queue_waiters: list[asyncio.Future[None]] = []
        self._expiry: list[tuple[float, str]] = []
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="store-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    # -- persistence hooks: a durable store writes through these -------------

    def _write_job(self, job: StoredJob, *, new: bool = False) -> None:
        """The job was added (``new``), or its record changed."""

    def _write_event(self, job_id: str, event: Event) -> None:
        """An event joined the job's log."""

    def _delete_job(self, job_id: str) -> None:
        """The job expired."""

    async def _commit(self) -> None:
        """Return once everything written so far is durable."""

    def _commit_soon(self) -> asyncio.Future[None] | None:
        """Start making everything written so far durable; ``None`` if it already is."""
        return None

    def _claimed(self, job: StoredJob) -> None:
        """The job is about to start an attempt (its record is written next)."""

    def _must_reserve(self, job: StoredJob) -> bool:
        """Whether the job's next event needs :meth:`_reserve` before anyone sees it."""
        return False

    async def _reserve(self, job: StoredJob) -> None:
        """Make the job's next seq safe to show: never reused after a crash."""

    def _reset_seq(self, job: StoredJob) -> int:
        """The seq of a new attempt's ``reset`` event."""
        return job.log.last_seq + 1

    # -- gateway side -------------------------------------------------------

    async def submit(self, spec: JobSpec) -> JobRecord:
        if len(self._pending) >= self.queue_max:
            raise QueueFull(f"the queue is full ({self.queue_max} jobs waiting); try again later")
        record = JobRecord(id=str(uuid.uuid4()), state=JobState.PENDING, created_at=self._clock())
        job = StoredJob(record, spec, next(self._tickets))
        self._jobs[record.id] = job
        self._enqueue(job)
        self._write_job(job, new=True)
        await self._commit()
        return record

    def _job(self, job_id: str) -> StoredJob | None:
        job = self._jobs.get(job_id)
        if job is not None and self._expired(job.record):
            return None
        return job

    def _known(self, job_id: str) -> StoredJob:
        job = self._job(job_id)
        if job is None:
            raise UnknownJob(f"unknown job_id {job_id!r}")
        return job

    def _expired(self, record: JobRecord) -> bool:
        return record.finished_at is not None and record.finished_at + self.job_ttl <= self._clock()

    async def get(self, job_id: str) -> JobRecord | None:
        job = self._job(job_id)
        return job.record if job is not None else None

    async def read(self, job_id: str, after: int = 0) -> list[Event]:
        return self._known(job_id).log.since(after)

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        async for batch in self._known(job_id).log.follow(after):
            yield batch

    async def cancel(self, job_id: str) -> JobRecord:
        job = self._known(job_id)
        record = job.record
        if record.state is JobState.PENDING:
            self._leave_queue(job)
        elif record.state is JobState.RUNNING:
            self._running -= 1
        else:
            return record
        callbacks, job.cancel_callbacks = job.cancel_callbacks, []
        self._record(job, EventKind.CANCELLED, "", wake=False)
        await self._commit()
        job.log.wake()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("cancel callback of job %s failed", job_id)
        return record

    async def position(self, job_id: str) -> int | None:
        job = self._job(job_id)
        if job is None or job.record.state is not JobState.PENDING:
            return None
        return bisect.bisect_left(self._pending, job.ticket) + 1

    async def queue_moved(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._queue_waiters.append(waiter)
        await waiter

    async def stats(self) -> StoreStats:
        return StoreStats(pending=len(self._pending), running=self._running)

    # -- worker side --------------------------------------------------------

    async def claim(self, max_wait: float) -> Claim | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while not self._pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            waiter = loop.create_future()
            self._claim_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return None
        job = self._pending_jobs[self._pending[0]]
        self._leave_queue(job)
        record = job.record
        record.state = JobState.RUNNING
        record.attempt += 1
        self._running += 1
        self._claimed(job)
        self._write_job(job)
        if record.attempt > 1:
            # What an earlier attempt wrote is void: listeners start over.
            self._record(job, EventKind.RESET, "", wake=False)
        # The worker may start the job (call the model) while the claim is made
        # durable; nothing of the attempt is shown before it is (see append).
        settling = self._commit_soon()
        if settling is None:
            job.log.wake()
        else:
            job.settling = settling
            settling.add_done_callback(lambda _: job.log.wake())
        assert job.spec is not None, "a queued job keeps its spec"
        return Claim(job_id=record.id, attempt=record.attempt, spec=job.spec)

    def _held(self, job_id: str, attempt: int) -> StoredJob:
        job = self._jobs.get(job_id)
        if job is None or job.record.state is not JobState.RUNNING or job.record.attempt != attempt:
            raise NotOwner(f"job {job_id} is no longer held by attempt {attempt}")
        return job

    async def append(self, job_id: str, attempt: int, kind: EventKind, message: str = "") -> Event:
        job = self._held(job_id, attempt)
        if job.settling is not None:
            await job.settling
            job.settling = None
            job = self._held(job_id, attempt)
        if not kind.terminal:
            if self._must_reserve(job):
                await self._reserve(job)
                job = self._held(job_id, attempt)
            return self._record(job, kind, message)
        self._running -= 1
        # Listeners hear that a job ended only once that is durable.
        event = self._record(job, kind, message, wake=False)
        await self._commit()
        job.log.wake()
        return event

    async def release(self, job_id: str, attempt: int, reason: str) -> None:
        # Nothing outlives this process, so nobody could run the job again.
        with contextlib.suppress(NotOwner):
            await self.append(job_id, attempt, EventKind.FAILED, reason)

    def on_cancel(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        job = self._jobs.get(job_id)
        if job is None:
            return lambda: None
        job.cancel_callbacks.append(callback)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                job.cancel_callbacks.remove(callback)

        return stop

    # -- internals ----------------------------------------------------------

    def _record(self, job: StoredJob, kind: EventKind, message: str, *, wake: bool = True) -> Event:
        record = job.record
        seq = self._reset_seq(job) if kind is EventKind.RESET else job.log.last_seq + 1
        event = Event(seq, kind, message, record.attempt)
        job.log.add(event)
        self._write_event(record.id, event)
        if kind.terminal:
            record.state = kind.final_state
            record.finished_at = self._clock()
            if kind is EventKind.FAILED:
                record.error = message
            job.cancel_callbacks = []
            self._schedule_expiry(record)
            self._write_job(job)
        if wake:
            job.log.wake()
        if kind.terminal:
            # A finished job is kept for its TTL: in a form the garbage collector
            # need not walk, without what only running it needed.
            job.log.freeze()
            job.spec = None
        return event

    def _schedule_expiry(self, record: JobRecord) -> None:
        assert record.finished_at is not None
        heapq.heappush(self._expiry, (record.finished_at + self.job_ttl, record.id))

    def _requeue(self, job: StoredJob) -> None:
        """A running job goes back to its place in the queue, to run again."""
        job.record.state = JobState.PENDING
        self._running -= 1
        self._enqueue(job)
        self._write_job(job)

    def _enqueue(self, job: StoredJob) -> None:
        bisect.insort(self._pending, job.ticket)
        self._pending_jobs[job.ticket] = job
        _wake(self._claim_waiters)

    def _leave_queue(self, job: StoredJob) -> None:
        index = bisect.bisect_left(self._pending, job.ticket)
        del self._pending[index]
        del self._pending_jobs[job.ticket]
        _wake(self._queue_waiters)

    def sweep(self) -> int:
        """Forget finished jobs whose TTL has passed; returns how many."""
        now = self._clock()
        removed = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = heapq.heappop(self._expiry)
            job = self._jobs.get(job_id)
            if job is not None and self._expired(job.record):
                del self._jobs[job_id]
                self._delete_job(job_id)
                removed += 1
        return removed

    async def _sweep_forever(self) -> None:
        interval = min(max(self.job_ttl / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            removed = self.sweep()
            if removed:
                log.debug("forgot %d expired jobs", removed)
