"""The job store of one process: the jobs' logic, kept through a journal.

Everything here runs on the event loop's thread, so each method body up to its
first ``await`` is atomic. What survives the process is the journal's to say
(:mod:`.journal`): :class:`MemoryStore` with the default :class:`NullJournal`
keeps nothing beyond the process; :class:`~.sqlite.SQLiteStore` is this store
writing through the SQLite journal.

One order everywhere: a change is written to the journal first and takes
effect for others only once the journal has saved it. A job is queued, and
``submit`` returns, once it is saved (so a job whose saving failed never runs);
an event is shown to listeners once it is saved; a job's end (its terminal
event, and the record's state with it) likewise. When the journal cannot save
a job's writes, the job is lost to the store: what it wrote since its last
saved change is dropped, and it ends ``failed`` with a message naming the
store, shown at once so that no listener waits for ever; its end is saved when
the journal works again.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import heapq
import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable

from llm_worker.jobs.model import Claim, Event, EventKind, JobRecord, JobSpec, JobState, spec_json
from llm_worker.ops.logs import about
from llm_worker.store import queue_policy
from llm_worker.store.base import (
    JobStore,
    ListingKey,
    NotOwner,
    QueueFull,
    RateLimited,
    StoreError,
    StoreStats,
    UnknownJob,
    Unstorable,
)
from llm_worker.store.eventlog import EventLog
from llm_worker.store.journal import Failures, Journal, NullJournal, Restored
from llm_worker.store.limits import UNLIMITED, TenantLimits
from llm_worker.store.waiters import Waiters

log = logging.getLogger(__name__)

# Tries to save the end of a job lost to the store before giving up on it.
SAVE_END_TRIES = 5


class StoredJob:
    """A job as the store holds it: record, request, place in the queue, log."""

    __slots__ = (
        "cancel_callbacks",
        "end_tries",
        "ending",
        "log",
        "record",
        "reset_after",
        "saved",
        "spec",
        "ticket",
    )

    def __init__(self, record: JobRecord, spec: bytes | None, ticket: int) -> None:
        self.record = record
        self.spec = spec
        """What the client asked for, as JSON (compact while it waits); dropped once
        the job ended, to keep little."""
        self.ticket = ticket
        """Order of submission: the queue is sorted by it."""
        self.log = EventLog()
        self.cancel_callbacks: list[Callable[[], None]] = []
        self.saved = False
        """Whether the journal has the job at all (a new job is not queued before)."""
        self.ending: JobRecord | None = None
        """The record the job takes once its terminal event, written, is saved."""
        self.reset_after = 0
        """A re-run's ``reset`` takes a seq above this one (see :class:`Restored`)."""
        self.end_tries = 0


class MemoryStore(JobStore):
    def __init__(
        self,
        *,
        queue_max: int,
        job_ttl: float,
        queue_max_bytes: int = 1 << 62,
        limits: Callable[[str], TenantLimits] | None = None,
        clock: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.limits = limits or (lambda tenant: UNLIMITED)
        self.job_ttl = job_ttl
        self.journal = journal or NullJournal()
        self.journal.on_round_end = self._round_ended
        self._clock = clock
        self._jobs: dict[str, StoredJob] = {}
        # Every job's ListingKey, sorted: a listing's page is a binary search and a
        # walk of about its length. Jobs come in created_at order, so an insert lands
        # at the end.
        self._listing: list[ListingKey] = []
        # Pending jobs in FIFO order: tickets grow with each submit, so the
        # list stays sorted and a job's position is a binary search.
        self._pending: list[int] = []
        self._pending_jobs: dict[int, StoredJob] = {}
        self._tickets = itertools.count(1)
        self._queued_bytes = 0
        # Per tenant: its waiting jobs' tickets (sorted), and how many of its jobs run.
        self._tenant_pending: dict[str, list[int]] = {}
        self._tenant_running: Counter[str] = Counter()
        self._rates = AddRates(clock)
        self._running = 0
        self._claim_waiters: Waiters[None] = Waiters()
        self._queue_waiters: Waiters[None] = Waiters()
        self._expiry: list[tuple[float, str]] = []
        self._sweeper: asyncio.Task[None] | None = None
        # Per round the journal has under way: the jobs to show once it is saved,
        # each up to the seq it had written by then.
        self._rounds: dict[asyncio.Future[Failures], dict[StoredJob, int]] = {}

    async def start(self) -> None:
        restored = await self.journal.open()
        if self.journal.durable:
            self._restore(restored)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="store-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.journal.close()

    def report_commits(self, observe: Callable[[float], None]) -> None:
        self.journal.on_commit = observe

    # -- gateway side -------------------------------------------------------

    async def submit(self, spec: JobSpec, tenant: str = "") -> JobRecord:
        limits = self.limits(tenant)
        if len(self._pending) >= self.queue_max:
            raise QueueFull.of_jobs(self.queue_max)
        queued = limits.max_queued_jobs
        if queued is not None and len(self._tenant_pending.get(tenant, ())) >= queued:
            raise QueueFull.of_tenant(tenant, queued)
        try:
            text = spec_json(spec)
        except ValueError as exc:
            raise Unstorable(str(exc)) from None
        if self._queued_bytes + len(text) > self.queue_max_bytes:
            raise QueueFull.of_bytes(self.queue_max_bytes)
        if limits.adds_per_minute:
            wait = self._rates.take(tenant, limits.adds_per_minute)
            if wait:
                raise RateLimited(tenant, limits.adds_per_minute, wait)
        record = JobRecord(
            id=str(uuid.uuid4()), state=JobState.PENDING, created_at=self._clock(), tenant=tenant
        )
        job = StoredJob(record, text, next(self._tickets))
        self.journal.add_job(record, text, job.ticket)
        self._jobs[record.id] = job
        bisect.insort(self._listing, ListingKey.of(record))
        await self._saved(job)
        self._enqueue(job)
        return record

    def _job(self, job_id: str) -> StoredJob | None:
        job = self._jobs.get(job_id)
        if job is None or not job.saved or self._expired(job.record):
            return None
        return job

    def _known(self, job_id: str) -> StoredJob:
        job = self._job(job_id)
        if job is None:
            raise UnknownJob(job_id)
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
        if job.log.ended or record.state.finished:
            if job.ending is not None:
                # Its end is being saved: answer with the record it ends with.
                with contextlib.suppress(StoreError):
                    await self._saved(job)
            return job.record
        if record.state is JobState.PENDING:
            self._leave_queue(job)
        callbacks, job.cancel_callbacks = job.cancel_callbacks, []
        self._end(job, EventKind.CANCELLED, "")
        # The worker stops now; a cancel that cannot be saved loses the job anyway.
        _call_all(callbacks, job_id)
        await self._saved(job)
        return job.record

    async def position(self, job_id: str) -> int | None:
        job = self._job(job_id)
        if job is None or job.record.state is not JobState.PENDING or job.log.ended:
            return None
        index = bisect.bisect_left(self._pending, job.ticket)
        if index == len(self._pending) or self._pending[index] != job.ticket:
            return None
        return index + 1

    async def queue_moved(self) -> None:
        await self._queue_waiters.wait()

    async def stats(self) -> StoreStats:
        return StoreStats(pending=len(self._pending), running=self._running)

    async def recent(
        self,
        state: JobState | None,
        limit: int,
        tenant: str | None,
        below: ListingKey | None = None,
    ) -> list[JobRecord]:
        # Every job this store knows is in memory (the SQLite store too: it restores
        # them all at start): a walk down the index from the page's start, O(limit)
        # plus the jobs a filter passes over.
        end = len(self._listing) if below is None else bisect.bisect_left(self._listing, below)
        found: list[JobRecord] = []
        for index in range(end - 1, -1, -1):
            job = self._jobs[self._listing[index].job_id]
            record = job.record
            if (
                job.saved
                and (state is None or record.state is state)
                and (tenant is None or record.tenant == tenant)
                and not self._expired(record)
            ):
                found.append(record)
                if len(found) == limit:
                    break
        return found

    def _unlist(self, record: JobRecord) -> None:
        key = ListingKey.of(record)
        index = bisect.bisect_left(self._listing, key)
        if index < len(self._listing) and self._listing[index] == key:
            del self._listing[index]

    # -- worker side --------------------------------------------------------

    async def claim(self, max_wait: float) -> Claim | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while (job := self._next_to_run()) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._claim_waiters.wait(), remaining)
            except TimeoutError:
                return None
        self._leave_queue(job)
        record = job.record
        record.state = JobState.RUNNING
        record.attempt += 1
        self._running += 1
        self._tenant_running[record.tenant] += 1
        self.journal.update_job(record)
        if record.attempt > 1:
            # What an earlier attempt wrote is void: listeners start over.
            seq = max(job.log.last_seq, job.reset_after) + 1
            self._add(job, Event(seq, EventKind.RESET, "", record.attempt))
        # The worker starts the job (calls the model) while the claim is saved: the
        # attempt's events are written after it, so none is shown before it is.
        self._save(job)
        assert job.spec is not None, "a queued job keeps its spec"
        spec = JobSpec.model_validate_json(job.spec)
        return Claim(
            job_id=record.id,
            attempt=record.attempt,
            spec=spec,
            tenant=record.tenant,
            created_at=record.created_at,
        )

    def _next_to_run(self) -> StoredJob | None:
        """The job :func:`.queue_policy.next_ticket` says runs next."""
        oldest = None
        if self._pending:
            head = self._pending_jobs[self._pending[0]]
            oldest = (head.ticket, head.record.tenant)
        ticket = queue_policy.next_ticket(oldest, self._tenant_pending, self._may_run)
        return None if ticket is None else self._pending_jobs[ticket]

    def _may_run(self, tenant: str) -> bool:
        limit = self.limits(tenant).max_running_jobs
        return queue_policy.may_run(self._tenant_running[tenant], limit)

    def _held(self, job_id: str, attempt: int) -> StoredJob:
        job = self._jobs.get(job_id)
        if (
            job is None
            or job.record.state is not JobState.RUNNING
            or job.record.attempt != attempt
            or job.log.ended
        ):
            raise NotOwner(f"job {job_id} is no longer held by attempt {attempt}")
        return job

    async def append(self, job_id: str, attempt: int, kind: EventKind, message: str = "") -> Event:
        job = self._held(job_id, attempt)
        if kind.terminal:
            event = self._end(job, kind, message)
            await self._saved(job)
            return event
        event = Event(job.log.last_seq + 1, kind, message, attempt)
        self._add(job, event)
        self._save(job)
        return event

    async def release(self, job_id: str, attempt: int, reason: str) -> None:
        try:
            job = self._held(job_id, attempt)
        except NotOwner:
            return
        if not self.journal.durable:
            # Nothing outlives this process, so nobody could run the job again.
            with contextlib.suppress(StoreError):
                await self.append(job_id, attempt, EventKind.FAILED, reason)
            return
        log.info("job %s queued again: %s", job_id, reason, extra=about(job_id))
        job.record.state = JobState.PENDING
        self._stopped_running(job)
        self._enqueue(job)
        self.journal.update_job(job.record)
        with contextlib.suppress(StoreError):
            await self._saved(job)

    def on_cancel(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        job = self._jobs.get(job_id)
        if job is None:
            return lambda: None
        job.cancel_callbacks.append(callback)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                job.cancel_callbacks.remove(callback)

        return stop

    # -- writing, saving, showing ---------------------------------------------

    def _add(self, job: StoredJob, event: Event) -> None:
        job.log.add(event)
        self.journal.add_event(job.record.id, event)

    def _end(self, job: StoredJob, kind: EventKind, message: str) -> Event:
        """Write the job's terminal event; the record takes the end when it is saved."""
        record = job.record
        event = Event(job.log.last_seq + 1, kind, message, record.attempt)
        self._add(job, event)
        job.ending = dataclasses.replace(
            record,
            state=kind.final_state,
            finished_at=self._clock(),
            error=message if kind is EventKind.FAILED else record.error,
        )
        self.journal.update_job(job.ending)
        job.cancel_callbacks = []
        return event

    def _save(self, job: StoredJob) -> asyncio.Future[Failures] | None:
        """Have the journal save what was written for ``job``; show it once saved.

        Returns the round doing it, or ``None`` when the journal saves at once.
        """
        if self.journal.immediate:
            job.saved = True
            self._show(job)
            return None
        round_ = self.journal.save()
        jobs = self._rounds.get(round_)
        if jobs is None:
            jobs = self._rounds[round_] = {}
        jobs[job] = job.log.last_seq
        return round_

    async def _saved(self, job: StoredJob) -> None:
        """:meth:`_save`, and wait for it; :class:`StoreError` if the job was lost."""
        round_ = self._save(job)
        if round_ is None:
            return
        # Shielded: a caller that goes away must not cancel a round others wait on.
        failures = await asyncio.shield(round_)
        if job.record.id in failures:
            raise StoreError(_lost_message(failures[job.record.id]))

    def _round_ended(self, round_: asyncio.Future[Failures], failures: Failures) -> None:
        """The journal finished a round: show what it saved, lose what it could not."""
        waiting = self._rounds.pop(round_, {})
        for job, through in waiting.items():
            error = failures.get(job.record.id)
            if error is None:
                job.saved = True
                self._show(job, through)
            else:
                self._lost(job, error)
        for job_id, error in failures.items():
            # Writes nobody waited for: deletions, ends of jobs lost before.
            job = self._jobs.get(job_id)
            if job is not None and job not in waiting and job.record.state.finished:
                self._end_unsaved(job, error)

    def _show(self, job: StoredJob, through: int | None = None) -> None:
        job.log.show(through)
        if job.ending is not None and job.log.finished:
            self._finished(job)

    def _finished(self, job: StoredJob) -> None:
        """The job's end is shown: its record ends too."""
        assert job.ending is not None
        if job.record.state is JobState.RUNNING:
            self._stopped_running(job)
        job.record, job.ending = job.ending, None
        job.cancel_callbacks = []
        self._schedule_expiry(job.record)
        # A finished job is kept for its TTL: in a form the garbage collector
        # need not walk, without what only running it needed.
        job.log.freeze()
        job.spec = None

    def _lost(self, job: StoredJob, error: str) -> None:
        """The journal could not save the job's writes: the job ends, failed.

        What it wrote since its last saved change is dropped (nobody saw it). A
        new job is forgotten (its ``submit`` fails); any other ends ``failed``
        with a message naming the store, shown at once though not saved: no
        listener is left waiting. Its end is saved when the journal works again.
        """
        job_id = job.record.id
        self.journal.forget(job_id)
        job.log.truncate()
        job.ending = None
        if not job.saved:
            if self._jobs.pop(job_id, None) is not None:
                self._unlist(job.record)
            return
        if job.record.state.finished:
            self._end_unsaved(job, error)
            return
        log.error(
            "job %s failed: the job store could not save it: %s", job_id, error, extra=about(job_id)
        )
        if job.record.state is JobState.PENDING:
            self._leave_queue(job)
        callbacks, job.cancel_callbacks = job.cancel_callbacks, []
        self._end(job, EventKind.FAILED, _lost_message(error))
        self._show(job)
        _call_all(callbacks, job_id)

    def _end_unsaved(self, job: StoredJob, error: str) -> None:
        """Write the end of a job again, for a later round: it is shown, not saved."""
        job.end_tries += 1
        if job.end_tries > SAVE_END_TRIES:
            log.error(
                "job %s: giving up saving its end: %s",
                job.record.id,
                error,
                extra=about(job.record.id),
            )
            return
        self.journal.update_job(job.record)
        for event in job.log.events[-1:]:
            self.journal.add_event(job.record.id, event)

    # -- the queue ------------------------------------------------------------

    def _stopped_running(self, job: StoredJob) -> None:
        self._running -= 1
        tenant = job.record.tenant
        self._tenant_running[tenant] -= 1
        if not self._tenant_running[tenant]:
            del self._tenant_running[tenant]
        # A job of a tenant at its limit of running jobs may now start.
        self._claim_waiters.wake(None)

    def _enqueue(self, job: StoredJob) -> None:
        bisect.insort(self._pending, job.ticket)
        self._pending_jobs[job.ticket] = job
        bisect.insort(self._tenant_pending.setdefault(job.record.tenant, []), job.ticket)
        self._queued_bytes += len(job.spec or b"")
        self._claim_waiters.wake(None)

    def _leave_queue(self, job: StoredJob) -> None:
        index = bisect.bisect_left(self._pending, job.ticket)
        if index < len(self._pending) and self._pending[index] == job.ticket:
            del self._pending[index]
            del self._pending_jobs[job.ticket]
            tenant = job.record.tenant
            tickets = self._tenant_pending[tenant]
            del tickets[bisect.bisect_left(tickets, job.ticket)]
            if not tickets:
                del self._tenant_pending[tenant]
            self._queued_bytes -= len(job.spec or b"")
            self._queue_waiters.wake(None)

    def _restore(self, restored: list[Restored]) -> None:
        """Bring back the jobs the journal kept; those that were running queue again."""
        requeued = 0
        for kept in sorted(restored, key=lambda r: r.ticket):
            job = StoredJob(kept.record, kept.spec, kept.ticket)
            job.saved = True
            job.reset_after = kept.reset_after
            for event in kept.events:
                job.log.add(event)
            job.log.show()
            self._jobs[kept.record.id] = job
            self._listing.append(ListingKey.of(kept.record))
            record = job.record
            if record.state is JobState.RUNNING:
                # Its worker died with the process: it runs again, in its original place.
                record.state = JobState.PENDING
                self.journal.update_job(record)
                requeued += 1
            if record.state is JobState.PENDING:
                self._enqueue(job)
            elif record.finished_at is not None:
                self._schedule_expiry(record)
                job.log.freeze()
        self._listing.sort()
        self._tickets = itertools.count(max((r.ticket for r in restored), default=0) + 1)
        # Said in the name of the store in use (SQLite's, for one), not of this base.
        logging.getLogger(type(self).__module__).info(
            "%d jobs kept, %d queued (%d of them were running)",
            len(restored),
            len(self._pending),
            requeued,
        )

    # -- expiry ---------------------------------------------------------------

    def _schedule_expiry(self, record: JobRecord) -> None:
        assert record.finished_at is not None
        heapq.heappush(self._expiry, (record.finished_at + self.job_ttl, record.id))

    def sweep(self) -> int:
        """Forget finished jobs whose TTL has passed; returns how many."""
        now = self._clock()
        removed = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = heapq.heappop(self._expiry)
            job = self._jobs.get(job_id)
            if job is not None and self._expired(job.record):
                del self._jobs[job_id]
                self._unlist(job.record)
                self.journal.delete_job(job_id)
                removed += 1
        return removed

    async def _sweep_forever(self) -> None:
        interval = min(max(self.job_ttl / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            removed = self.sweep()
            if removed:
                log.debug("forgot %d expired jobs", removed)
            # Deletions, and the ends of jobs lost to the store, wait for no one.
            if self.journal.unsaved():
                self.journal.save()


class AddRates:
    """How fast each tenant adds jobs, against its limit (GCRA: a burst of a minute's
    worth, then one every 1/rate of a minute)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._next: dict[str, float] = {}
        """Per tenant: when its allowance is whole again (its theoretical arrival time)."""

    def take(self, tenant: str, per_minute: int) -> float:
        """0 if the tenant may add a job now (and it counts), else seconds to wait."""
        now = self._clock()
        interval = 60.0 / per_minute
        arrival = max(self._next.get(tenant, now), now)
        allowed_from = arrival - 60.0 + interval
        if now < allowed_from:
            return allowed_from - now
        self._next[tenant] = arrival + interval
        if len(self._next) > 10_000:  # forget tenants whose allowance is whole again
            self._next = {t: a for t, a in self._next.items() if a > now}
        return 0.0


def _lost_message(error: str) -> str:
    return f"the job store could not save the job: {error}"


def _call_all(callbacks: list[Callable[[], None]], job_id: str) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("cancel callback of job %s failed", job_id, extra=about(job_id))
