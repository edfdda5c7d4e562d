"""A job store in this process's memory: for tests and throwaway runs.

Jobs are lost with the process. Everything here runs on the event loop's
thread, so each method body up to its first ``await`` is atomic.
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
from llm_worker.store.base import (
    JobStore,
    NotOwner,
    QueueFull,
    StoreStats,
    UnknownJob,
)

log = logging.getLogger(__name__)


class _Job:
    __slots__ = ("cancel_callbacks", "events", "record", "spec", "ticket", "waiters")

    def __init__(self, record: JobRecord, spec: JobSpec, ticket: int) -> None:
        self.record = record
        self.spec = spec
        self.ticket = ticket
        self.events: list[Event] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.cancel_callbacks: list[Callable[[], None]] = []


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
        self._jobs: dict[str, _Job] = {}
        # Pending jobs in FIFO order: tickets grow with each submit, so the
        # list stays sorted and a job's position is a binary search.
        self._pending: list[int] = []
        self._pending_jobs: dict[int, _Job] = {}
        self._tickets = itertools.count(1)
        self._running = 0
        self._claim_waiters: list[asyncio.Future[None]] = []
        self._queue_waiters: list[asyncio.Future[None]] = []
        self._expiry: list[tuple[float, str]] = []
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-store-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    # -- gateway side -------------------------------------------------------

    async def submit(self, spec: JobSpec) -> JobRecord:
        if len(self._pending) >= self.queue_max:
            raise QueueFull(f"the queue is full ({self.queue_max} jobs waiting); try again later")
        record = JobRecord(id=str(uuid.uuid4()), state=JobState.PENDING, created_at=self._clock())
        job = _Job(record, spec, next(self._tickets))
        self._jobs[record.id] = job
        self._pending.append(job.ticket)
        self._pending_jobs[job.ticket] = job
        _wake(self._claim_waiters)
        return record

    def _job(self, job_id: str) -> _Job | None:
        job = self._jobs.get(job_id)
        if job is not None and self._expired(job.record):
            return None
        return job

    def _expired(self, record: JobRecord) -> bool:
        return record.finished_at is not None and record.finished_at + self.job_ttl <= self._clock()

    async def get(self, job_id: str) -> JobRecord | None:
        job = self._job(job_id)
        return job.record if job is not None else None

    async def read(self, job_id: str, after: int = 0) -> list[Event]:
        job = self._job(job_id)
        if job is None:
            raise UnknownJob(f"unknown job_id {job_id!r}")
        return job.events[after:]

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        job = self._job(job_id)
        if job is None:
            raise UnknownJob(f"unknown job_id {job_id!r}")
        seen = max(after, 0)
        loop = asyncio.get_running_loop()
        while True:
            events = job.events
            if len(events) > seen:
                batch = events[seen:]
                seen = len(events)
                yield batch
                if batch[-1].kind.terminal:
                    return
            elif job.record.state.finished:
                return
            else:
                waiter = loop.create_future()
                job.waiters.append(waiter)
                await waiter

    async def cancel(self, job_id: str) -> JobRecord:
        job = self._job(job_id)
        if job is None:
            raise UnknownJob(f"unknown job_id {job_id!r}")
        record = job.record
        if record.state is JobState.PENDING:
            self._leave_queue(job)
        elif record.state is JobState.RUNNING:
            self._running -= 1
        else:
            return record
        callbacks, job.cancel_callbacks = job.cancel_callbacks, []
        self._record(job, EventKind.CANCELLED, "")
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
        job.record.state = JobState.RUNNING
        job.record.attempt += 1
        self._running += 1
        return Claim(job_id=job.record.id, attempt=job.record.attempt, spec=job.spec)

    async def append(self, job_id: str, attempt: int, kind: EventKind, message: str = "") -> Event:
        job = self._jobs.get(job_id)
        if job is None or job.record.state is not JobState.RUNNING or job.record.attempt != attempt:
            raise NotOwner(f"job {job_id} is no longer held by attempt {attempt}")
        if kind.terminal:
            self._running -= 1
        return self._record(job, kind, message)

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

    def _record(self, job: _Job, kind: EventKind, message: str) -> Event:
        event = Event(len(job.events) + 1, kind, message)
        job.events.append(event)
        if kind.terminal:
            record = job.record
            record.state = kind.final_state
            record.finished_at = self._clock()
            if kind is EventKind.FAILED:
                record.error = message
            job.cancel_callbacks = []
            heapq.heappush(self._expiry, (record.finished_at + self.job_ttl, record.id))
        _wake(job.waiters)
        return event

    def _leave_queue(self, job: _Job) -> None:
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
                removed += 1
        return removed

    async def _sweep_forever(self) -> None:
        interval = min(max(self.job_ttl / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            removed = self.sweep()
            if removed:
                log.debug("forgot %d expired jobs", removed)
