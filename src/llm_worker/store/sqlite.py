"""A durable job store in one SQLite file: the default.

The jobs live in memory as in :class:`~.memory.MemoryStore` (same logic, same
speed for readers) and every change is written through to SQLite, in WAL mode,
by one writer thread:

* a token delta is handed to the writer before listeners see it and is
  committed with whatever else arrived within ``flush_ms`` milliseconds, so
  the token path never waits for a disk sync;
* a change of state (a job added, claimed, finished, cancelled) is committed
  before the caller goes on: ``resp_add`` is sent, and ``done`` is seen, only
  once it is on disk.

A crash can lose the last ``flush_ms`` of a running job's deltas; that job runs
again from the start after the restart anyway, behind a ``reset``. On start,
jobs that were running are queued again, in their original order.

Seqs never go back, even across a crash: each running job reserves seqs on
disk a block ahead of use (the next block is asked for, in the background,
half a block before the end), and the ``reset`` of a job re-run after a crash
takes a seq above its reservation, so above anything a listener saw. A client
resuming with ``after`` therefore always gets the ``reset``.

One process owns the file (a lock file next to it says which); several
processes sharing jobs use the Redis store.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_worker.jobs import Event, EventKind, JobRecord, JobSpec, JobState
from llm_worker.store.base import StoreError
from llm_worker.store.memory import MemoryStore, StoredJob

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    ticket INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    error TEXT,
    seq_reserved INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""
INSERT_JOB = (
    "INSERT INTO jobs (id, ticket, state, attempt, spec, created_at, finished_at, error)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
UPDATE_JOB = (
    "UPDATE jobs SET state = ?, attempt = ?, finished_at = ?, error = ?, seq_reserved = ?"
    " WHERE id = ?"
)
RESERVE_SEQ = "UPDATE jobs SET seq_reserved = ? WHERE id = ?"
# Seqs reserved on disk ahead of use, and the margin at which the next block is asked for.
RESERVE_BLOCK = 256
RESERVE_MARGIN = RESERVE_BLOCK // 2
INSERT_EVENT = "INSERT INTO events (job_id, seq, kind, message, attempt) VALUES (?, ?, ?, ?, ?)"
DELETE_EVENTS = "DELETE FROM events WHERE job_id = ?"
DELETE_JOB = "DELETE FROM jobs WHERE id = ?"


class DatabaseInUse(StoreError):
    pass


class _Writer:
    """Owns the connection in a thread of its own; batches statements into commits."""

    def __init__(self, connection: sqlite3.Connection, flush_seconds: float) -> None:
        self._connection = connection
        self._flush_seconds = flush_seconds
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self.commits = 0

    def start(self) -> None:
        self._thread.start()

    def execute(self, sql: str, params: tuple[Any, ...]) -> None:
        """Queue a statement for the next commit (at most ``flush_seconds`` away)."""
        self._queue.put((sql, params))

    def commit(self) -> asyncio.Future[None]:
        """A future resolved once everything queued so far is committed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((loop, done))
        return done

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            # Gather until a commit is asked for, or the flush interval is up.
            deadline = time.monotonic() + self._flush_seconds
            while batch[-1] is not None and not isinstance(batch[-1][0], asyncio.AbstractEventLoop):
                remaining = deadline - time.monotonic()
                try:
                    batch.append(
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
            # And take whatever else is already waiting: one commit serves all.
            with contextlib.suppress(queue.Empty):
                while batch[-1] is not None:
                    batch.append(self._queue.get_nowait())
            stopping = batch[-1] is None
            self._write([item for item in batch if item is not None])

    def _write(self, batch: list[Any]) -> None:
        waiters = [item for item in batch if isinstance(item[0], asyncio.AbstractEventLoop)]
        statements = [item for item in batch if not isinstance(item[0], asyncio.AbstractEventLoop)]
        error: BaseException | None = None
        if statements:
            try:
                self._connection.execute("BEGIN")
                for sql, group in _runs(statements):
                    self._connection.executemany(sql, group)
                self._connection.execute("COMMIT")
                self.commits += 1
            except sqlite3.Error as exc:
                log.exception("writing %d statements to the job database failed", len(statements))
                error = exc
                with contextlib.suppress(sqlite3.Error):
                    self._connection.execute("ROLLBACK")
        for loop, waiter in waiters:
            loop.call_soon_threadsafe(_settle, waiter, error)


def _runs(statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Consecutive statements with the same SQL, grouped for ``executemany``."""
    runs: list[tuple[str, list[tuple[Any, ...]]]] = []
    for sql, params in statements:
        if runs and runs[-1][0] == sql:
            runs[-1][1].append(params)
        else:
            runs.append((sql, [params]))
    return runs


def _settle(waiter: asyncio.Future[None], error: BaseException | None) -> None:
    if waiter.done():
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(StoreError(f"the job database could not be written: {error}"))


class SQLiteStore(MemoryStore):
    def __init__(
        self,
        path: Path,
        *,
        queue_max: int,
        job_ttl: float,
        flush_ms: float = 5.0,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(queue_max=queue_max, job_ttl=job_ttl, clock=clock)
        self.path = path
        self.flush_ms = flush_ms
        self.synchronous = synchronous
        self._writer: _Writer | None = None
        self._lock_file: Any = None
        self._reserved: dict[str, int] = {}
        """Per running job: the highest seq that is durably reserved."""
        self._reserving: dict[str, asyncio.Future[None]] = {}
        self._floors: dict[str, int] = {}
        """Per job re-run after a crash: the seq its reset must exceed."""

    async def start(self) -> None:
        self.lock()
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self.synchronous}")
        connection.executescript(SCHEMA)
        connection.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        self._writer = _Writer(connection, self.flush_ms / 1000)
        self._load(connection)
        self._writer.start()
        await self._commit()
        await super().start()

    async def close(self) -> None:
        await super().close()
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def lock(self) -> None:
        """Make the file this process's; :class:`DatabaseInUse` if another has it.

        Done by :meth:`start` if not before: a process that cannot have its
        database learns so before it listens for clients.
        """
        if self._lock_file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock_file = open(lock_path, "a+")  # noqa: SIM115 - held open for the process's life
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            owner = lock_file.read().strip() or "another process"
            lock_file.close()
            raise DatabaseInUse(
                f"{self.path} is in use by {owner}: an SQLite store belongs to one process "
                "(run gateway and worker together, or use a redis:// STORE_URL)"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"llm-worker pid {os.getpid()}\n")
        lock_file.flush()
        self._lock_file = lock_file

    def _load(self, connection: sqlite3.Connection) -> None:
        """Bring the unexpired jobs back into memory; queue again those that were running."""
        now = self._clock()
        jobs: dict[str, StoredJob] = {}
        expired: list[str] = []
        max_ticket = 0
        for row in connection.execute(
            "SELECT id, ticket, state, attempt, spec, created_at, finished_at, error,"
            " seq_reserved FROM jobs"
        ):
            job_id, ticket, state, attempt, spec, created_at, finished_at, error, reserved = row
            max_ticket = max(max_ticket, ticket)
            if finished_at is not None and finished_at + self.job_ttl <= now:
                expired.append(job_id)
                continue
            record = JobRecord(job_id, JobState(state), created_at, attempt, error, finished_at)
            # A finished job is only listened to: its request is not needed again.
            request = JobSpec.model_validate_json(spec) if finished_at is None else None
            jobs[job_id] = StoredJob(record, request, ticket)
            if record.state is JobState.RUNNING:
                # Listeners may have seen seqs up to the reservation, committed or not.
                self._floors[job_id] = reserved
        for job_id, seq, kind, message, attempt in connection.execute(
            "SELECT job_id, seq, kind, message, attempt FROM events ORDER BY job_id, seq"
        ):
            job = jobs.get(job_id)
            if job is not None:
                job.log.add(Event(seq, EventKind(kind), message, attempt))
        for job_id in expired:
            connection.execute(DELETE_EVENTS, (job_id,))
            connection.execute(DELETE_JOB, (job_id,))

        requeued = []
        for job in sorted(jobs.values(), key=lambda j: j.ticket):
            self._jobs[job.record.id] = job
            record = job.record
            if record.state is JobState.RUNNING:
                # Its worker died with it: run it again, in its original place.
                self._running += 1
                self._requeue(job)
                requeued.append(job)
            elif record.state is JobState.PENDING:
                self._enqueue(job)
            elif record.finished_at is not None:
                self._schedule_expiry(record)
                job.log.freeze()
        self._tickets = itertools.count(max_ticket + 1)
        log.info(
            "job database %s: %d jobs kept, %d queued (%d of them were running), %d expired",
            self.path,
            len(jobs),
            len(self._pending),
            len(requeued),
            len(expired),
        )

    # -- persistence hooks --------------------------------------------------

    def _write_job(self, job: StoredJob, *, new: bool = False) -> None:
        assert self._writer is not None
        record = job.record
        if new:
            assert job.spec is not None
            self._writer.execute(
                INSERT_JOB,
                (
                    record.id,
                    job.ticket,
                    record.state.value,
                    record.attempt,
                    job.spec.model_dump_json(),
                    record.created_at,
                    record.finished_at,
                    record.error,
                ),
            )
        else:
            self._writer.execute(
                UPDATE_JOB,
                (
                    record.state.value,
                    record.attempt,
                    record.finished_at,
                    record.error,
                    self._reserved.get(record.id, 0),
                    record.id,
                ),
            )
            if record.state is not JobState.RUNNING:
                self._reserved.pop(record.id, None)

    def _write_event(self, job_id: str, event: Event) -> None:
        assert self._writer is not None
        self._writer.execute(
            INSERT_EVENT, (job_id, event.seq, event.kind.value, event.message, event.attempt)
        )

    def _delete_job(self, job_id: str) -> None:
        assert self._writer is not None
        self._writer.execute(DELETE_EVENTS, (job_id,))
        self._writer.execute(DELETE_JOB, (job_id,))

    async def _commit(self) -> None:
        assert self._writer is not None
        await self._writer.commit()

    def _commit_soon(self) -> asyncio.Future[None]:
        assert self._writer is not None
        return self._writer.commit()

    def _reset_seq(self, job: StoredJob) -> int:
        return max(job.log.last_seq, self._floors.pop(job.record.id, 0)) + 1

    def _claimed(self, job: StoredJob) -> None:
        # Reserved with the claim's own commit: the reset and a block after it.
        floor = max(job.log.last_seq, self._floors.get(job.record.id, 0))
        self._reserved[job.record.id] = floor + 1 + RESERVE_BLOCK

    def _must_reserve(self, job: StoredJob) -> bool:
        job_id = job.record.id
        next_seq = job.log.last_seq + 1
        reserved = self._reserved.get(job_id, 0)
        if next_seq + RESERVE_MARGIN > reserved and job_id not in self._reserving:
            self._reserving[job_id] = asyncio.ensure_future(self._extend(job))
        return next_seq > reserved

    async def _reserve(self, job: StoredJob) -> None:
        job_id = job.record.id
        while job.log.last_seq + 1 > self._reserved.get(job_id, 0):
            pending = self._reserving.get(job_id)
            if pending is None:
                pending = self._reserving[job_id] = asyncio.ensure_future(self._extend(job))
            await asyncio.shield(pending)

    async def _extend(self, job: StoredJob) -> None:
        assert self._writer is not None
        job_id = job.record.id
        target = job.log.last_seq + RESERVE_BLOCK
        self._writer.execute(RESERVE_SEQ, (target, job_id))
        try:
            await self._commit()
        finally:
            del self._reserving[job_id]
        if job.record.state is JobState.RUNNING:
            self._reserved[job_id] = max(self._reserved.get(job_id, 0), target)

    async def release(self, job_id: str, attempt: int, reason: str) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.record.state is not JobState.RUNNING or job.record.attempt != attempt:
            return
        log.info("job %s queued again: %s", job_id, reason)
        self._requeue(job)
        await self._commit()
