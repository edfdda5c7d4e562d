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

This module is the store's logic; its parts hold its state: :mod:`.kept_jobs` every
job (by id, in the listing's order, until its TTL has passed), :mod:`.queue` the jobs
waiting and how many run, :mod:`.stored_job` a job as held here, :mod:`.limits` the
tenants' rates of adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from llm_worker.jobs.model import (
    Claim,
    Event,
    EventKind,
    JobRecord,
    JobSpec,
    JobState,
    keeps_request,
    spec_json,
)
from llm_worker.ops.logs import about
from llm_worker.store.base import (
    JobStore,
    ListingQuery,
    NotOwner,
    QueueFull,
    RateLimited,
    StoreError,
    StoreStats,
    Unstorable,
)
from llm_worker.store.idempotency import IdempotencyKey, Submitted
from llm_worker.store.journal import Failures, Journal, NullJournal, Restored
from llm_worker.store.kept_jobs import KeptJobs
from llm_worker.store.limits import UNLIMITED, AddRates, TenantLimits
from llm_worker.store.once_keys import OnceKeys
from llm_worker.store.queue import JobQueue
from llm_worker.store.stored_job import StoredJob
from llm_worker.store.tombstones import DEFAULT_TOMBSTONE_SECONDS, Tombstone

log = logging.getLogger(__name__)

# Tries to save the end of a job lost to the store before giving up on it.
SAVE_END_TRIES = 5


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
        tombstone_ttl: float = DEFAULT_TOMBSTONE_SECONDS,
    ) -> None:
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.limits = limits or (lambda tenant: UNLIMITED)
        self.job_ttl = job_ttl
        self.journal = journal or NullJournal()
        self.journal.on_round_end = self._round_ended
        self._clock = clock
        """The time, for every time the store writes or compares (see :mod:`.kept_jobs`)."""
        self._kept = KeptJobs(job_ttl, clock, tombstone_ttl, self.journal)
        self._jobs = self._kept.by_id
        """Every job by id, for the workers' calls (clients see :meth:`.KeptJobs.visible`)."""
        self._tickets = itertools.count(1)
        self._queue = JobQueue(self.limits, clock, lambda: next(self._tickets))
        self._rates = AddRates(clock)
        self._once = OnceKeys(clock, self.journal, self._new_job, self._queued)
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
        record = self._new_job(spec, tenant)
        await self._queued(record)
        return record

    async def submit_once(self, spec: JobSpec, tenant: str, key: IdempotencyKey) -> Submitted:
        return await self._once.submit(spec, tenant, key)

    async def tombstone(self, job_id: str) -> Tombstone | None:
        return self._kept.tombstone(job_id)

    def _new_job(self, spec: JobSpec, tenant: str) -> JobRecord:
        """Write a new job, if the limits let it in: kept, not saved or queued yet."""
        limits = self.limits(tenant)
        if self._queue.ready >= self.queue_max:  # scheduled jobs aside
            raise QueueFull.of_jobs(self.queue_max)
        queued = limits.max_queued_jobs
        if queued is not None and self._queue.waiting_of(tenant) >= queued:
            raise QueueFull.of_tenant(tenant, queued)
        try:
            text = spec_json(spec)
        except ValueError as exc:
            raise Unstorable(str(exc)) from None
        if self._queue.bytes + len(text) > self.queue_max_bytes:
            raise QueueFull.of_bytes(self.queue_max_bytes)
        if limits.adds_per_minute:
            wait = self._rates.take(tenant, limits.adds_per_minute)
            if wait:
                raise RateLimited(tenant, limits.adds_per_minute, wait)
        record = JobRecord(str(uuid.uuid4()), JobState.PENDING, self._clock(), tenant=tenant)
        record.run_at = spec.run_at
        job = StoredJob(record, text, next(self._tickets))
        self.journal.add_job(record, text, job.ticket)
        self._kept.add(job)
        return record

    async def _queued(self, record: JobRecord) -> None:
        """Queue the job :meth:`_new_job` wrote, once saved."""
        job = self._jobs[record.id]
        await self._saved(job)
        self._queue.add(job)

    def _known(self, job_id: str) -> StoredJob:
        job = self._kept.visible(job_id)
        if job is None:
            raise self._kept.unknown(job_id)
        return job

    async def get(self, job_id: str) -> JobRecord | None:
        job = self._kept.visible(job_id)
        return job.record if job is not None else None

    async def request(self, job_id: str) -> JobSpec | None:
        job = self._kept.visible(job_id)
        if job is None or job.spec is None or not keeps_request(job.spec):
            return None
        return JobSpec.model_validate_json(job.spec)

    async def forget(self, job_id: str) -> bool:
        job = self._kept.visible(job_id)
        if job is None or job.ending is not None or not job.record.state.finished:
            return False  # unknown, or not ended (its end not shown yet, at least)
        # Its listeners follow the log itself, which has ended: they are not cut off.
        self._kept.drop(job_id)
        self.journal.delete_job(job_id)
        if self.journal.immediate:
            return True
        failures = await asyncio.shield(self.journal.save())
        if job_id in failures:
            self._kept.add(job)  # still on disk: kept here too, as a restart would find it
            raise StoreError(f"the job store could not forget the job: {failures[job_id]}")
        return True

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
            self._queue.remove(job)
        callbacks, job.cancel_callbacks = job.cancel_callbacks, []
        self._end(job, EventKind.CANCELLED, "")
        # The worker stops now; a cancel that cannot be saved loses the job anyway.
        _call_all(callbacks, job_id)
        await self._saved(job)
        return job.record

    async def position(self, job_id: str) -> int | None:
        job = self._kept.visible(job_id)
        if job is None or job.record.state is not JobState.PENDING or job.log.ended:
            return None
        return self._queue.position(job)

    async def queue_moved(self) -> None:
        await self._queue.moved()

    async def stats(self) -> StoreStats:
        return StoreStats(pending=self._queue.ready, running=self._queue.running)

    async def _recent(self, query: ListingQuery) -> list[JobRecord]:
        # Every job this store knows is in memory (the SQLite store too: it restores
        # them all at start).
        return self._kept.page(query)

    # -- worker side --------------------------------------------------------

    async def claim(self, max_wait: float) -> Claim | None:
        job = await self._queue.take(max_wait)
        if job is None:
            return None
        record = job.record
        record.state = JobState.RUNNING
        record.attempt += 1
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
        self._queue.stopped(job)
        self._queue.add(job)
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
            self._queue.stopped(job)
        job.record, job.ending = job.ending, None
        job.cancel_callbacks = []
        self._kept.ended(job.record)
        # A finished job is kept for its TTL: in a form the garbage collector
        # need not walk, without what only running it needed.
        job.log.freeze()
        if job.spec is not None and not keeps_request(job.spec):
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
            self._kept.drop(job_id)
            return
        if job.record.state.finished:
            self._end_unsaved(job, error)
            return
        log.error(
            "job %s failed: the job store could not save it: %s", job_id, error, extra=about(job_id)
        )
        if job.record.state is JobState.PENDING:
            self._queue.remove(job)
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

    # -- the jobs kept before ------------------------------------------------

    def _restore(self, restored: list[Restored]) -> None:
        """Bring back the jobs the journal kept; those that were running queue again."""
        jobs = [StoredJob.restored(kept) for kept in sorted(restored, key=lambda r: r.ticket)]
        self._kept.add_restored(jobs)
        self._once.restore()
        requeued = 0
        for job in jobs:
            record = job.record
            if record.state is JobState.RUNNING:
                # Its worker died with the process: it runs again, in its original place.
                record.state = JobState.PENDING
                self.journal.update_job(record)
                requeued += 1
            if record.state is JobState.PENDING:
                self._queue.add(job)
            elif record.finished_at is not None:
                self._kept.ended(record)
                job.log.freeze()
        self._tickets = itertools.count(max((r.ticket for r in restored), default=0) + 1)
        # Said in the name of the store in use (SQLite's, for one), not of this base.
        logging.getLogger(type(self).__module__).info(
            "%d jobs kept, %d queued (%d of them were running)",
            len(restored),
            len(self._queue),
            requeued,
        )

    # -- expiry ---------------------------------------------------------------

    def sweep(self) -> int:
        """Forget finished jobs whose TTL has passed, by the store's clock; returns how many."""
        dropped = self._kept.drop_expired()
        self._once.drop_expired()
        return len(dropped)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._kept.sweep_interval)
            removed = self.sweep()
            if removed:
                log.debug("forgot %d expired jobs", removed)
            # Deletions, and the ends of jobs lost to the store, wait for no one.
            if self.journal.unsaved():
                self.journal.save()


def _lost_message(error: str) -> str:
    return f"the job store could not save the job: {error}"


def _call_all(callbacks: list[Callable[[], None]], job_id: str) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("cancel callback of job %s failed", job_id, extra=about(job_id))
