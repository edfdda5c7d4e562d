"""The default job store: the in-process store, kept in one SQLite file.

Every durability rule of the SQLite store lives here, in its journal:

* writes are saved in *rounds*: a round commits, in one transaction, every
  write made before it started, each job's writes wholly or not at all, so
  that a write that fails costs its job only; a commit that fails (a full
  disk, a read-only file) costs every job in it;
* rounds follow each other without pause (group commit): while one is
  committed, the next gathers, so a token delta is shown about one commit
  (with ``synchronous=FULL``, one fsync) after the provider sent it, and the
  rate of commits adapts to the load;
* the store shows nothing before its round is saved (:mod:`.memory`): ``done``
  is seen, ``resp_add`` is sent, only once on disk, and a crash takes back
  nothing a listener saw;
* commits happen in a small process of its own (:mod:`.sqlite_writer`), so
  the event loop never waits for the disk, and the writer never waits for the
  event loop's GIL;
* the file is opened in exclusive locking mode, so the WAL index lives in
  memory: no ``-shm`` file is mapped, whose page faults on a full or failing
  disk would kill the process (SIGBUS). One process owns the file anyway (a
  lock file next to it says which).

On start, jobs that were running are queued again, in their original order,
and run again behind a ``reset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pickle
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from llm_worker.jobs.model import Event, JobRecord, JobState, keeps_request, stored_kind
from llm_worker.store import sqlite_side_tables as side_tables
from llm_worker.store import sqlite_writer as writer
from llm_worker.store.base import StoreError
from llm_worker.store.idempotency import FirstJob
from llm_worker.store.journal import Failures, Journal, Restored
from llm_worker.store.limits import TenantLimits
from llm_worker.store.memory import MemoryStore
from llm_worker.store.tombstones import DEFAULT_TOMBSTONE_SECONDS, Tombstone

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
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
    seq_reserved INTEGER NOT NULL DEFAULT 0,
    tenant TEXT NOT NULL DEFAULT ''
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
# seq_reserved: versions before 0.2 showed deltas before saving them and reserved
# seqs ahead on disk; a job such a version left running must reset above them.

Statement = tuple[int, tuple[Any, ...]]
# After the writer process died, how long before starting another.
RESTART_WRITER_SECONDS = 1.0


class DatabaseInUse(StoreError):
    pass


class SQLiteJournal(Journal):
    """Saves an in-process store's changes to one SQLite file, in rounds."""

    def __init__(
        self,
        path: Path,
        *,
        job_ttl: float,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_SECONDS,
    ) -> None:
        super().__init__()
        self.path = path
        self.job_ttl = job_ttl
        self.tombstone_ttl = tombstone_ttl
        self.synchronous = synchronous
        self.commits = 0
        self._clock = clock
        self._lock_file: IO[str] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._replies: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._unsaved: dict[str, list[Statement]] = {}
        self._gathering: asyncio.Future[Failures] | None = None
        """The next round: it saves what is unsaved when it starts."""
        self._saving: tuple[asyncio.Future[Failures], list[str]] | None = None
        self._round_started = 0.0
        """The round being committed, and its jobs."""

    # -- the file -------------------------------------------------------------

    def lock(self) -> None:
        """Make the file this process's; :class:`DatabaseInUse` if another has it.

        Done by :meth:`open` if not before: a process that cannot have its
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

    async def open(self) -> list[Restored]:
        self.lock()
        try:
            with contextlib.closing(writer.connect(str(self.path), self.synchronous)) as connection:
                connection.executescript(SCHEMA + side_tables.SCHEMA)
                _migrate(connection)
                restored = self._load(connection)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the job database {self.path}: {exc}") from exc
        await self._start_writer()
        return restored

    def _load(self, connection: sqlite3.Connection) -> list[Restored]:
        """The unexpired jobs and their logs; expired ones are deleted."""
        now = self._clock()
        jobs: dict[str, Restored] = {}
        expired: list[tuple[str, Tombstone]] = []
        for row in connection.execute(
            "SELECT id, ticket, state, attempt, spec, created_at, finished_at, error,"
            " seq_reserved, tenant FROM jobs"
        ):
            (job_id, ticket, state, attempt, spec, created_at, finished_at, error, reserved,
             tenant) = row  # fmt: skip
            if finished_at is not None and finished_at + self.job_ttl <= now:
                expired.append((job_id, Tombstone(job_id, tenant, finished_at + self.job_ttl)))
                continue
            record = JobRecord(
                job_id, JobState(state), created_at, attempt, error, finished_at, tenant
            )
            # A finished job is only listened to: its request is not needed again,
            # unless it asked to be kept.
            request = spec.encode()
            if finished_at is not None and not keeps_request(request):
                request = None
            jobs[job_id] = Restored(record, request, ticket, reset_after=reserved)
        for job_id, seq, kind, message, attempt in connection.execute(
            "SELECT job_id, seq, kind, message, attempt FROM events ORDER BY job_id, seq"
        ):
            kept = jobs.get(job_id)
            known = stored_kind(kind)
            if kept is not None and known is not None:
                kept.events.append(Event(seq, known, message, attempt))
        for job_id, _ in expired:
            connection.execute(writer.STATEMENTS[writer.DELETE_EVENTS], (job_id,))
            connection.execute(writer.STATEMENTS[writer.DELETE_JOB], (job_id,))
        self.kept_once = side_tables.load_once(connection, now)
        self.kept_tombstones = side_tables.load_tombstones(
            connection, now, self.tombstone_ttl, [tombstone for _, tombstone in expired]
        )
        log.info("job database %s: %d expired jobs deleted", self.path, len(expired))
        return list(jobs.values())

    async def _start_writer(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            writer.__file__,
            str(self.path),
            self.synchronous,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Out of the terminal's process group: Ctrl-C is for the store to handle.
            start_new_session=True,
        )
        hello = await _read_frame(process)
        if hello is None or hello[0] != "ready":
            await process.wait()
            why = hello[1] if hello is not None else f"it exited with {process.returncode}"
            raise StoreError(f"cannot open the job database {self.path}: {why}")
        self._process = process
        self._replies = asyncio.create_task(self._read_replies(process), name="sqlite-replies")

    async def _read_replies(self, process: asyncio.subprocess.Process) -> None:
        while (failures := await _read_frame(process)) is not None:
            if self._saving is not None:
                self.commits += 1
                self._round_done(self._saving[0], failures)
        await process.wait()
        if self._process is not process:
            return  # closed on purpose
        self._process = None
        log.error("the job database writer stopped (exit code %s)", process.returncode)
        if self._saving is not None:
            round_, job_ids = self._saving
            self._round_done(round_, dict.fromkeys(job_ids, "the job database writer stopped"))

    async def _restart_writer(self) -> None:
        await asyncio.sleep(RESTART_WRITER_SECONDS)
        try:
            await self._start_writer()
        except (StoreError, OSError) as exc:
            log.error("%s", exc)
        finally:
            self._restarting = None

    async def close(self) -> None:
        pending = self._unsaved or self._gathering is not None or self._saving is not None
        if pending and self._process is not None:
            await self.save()
        process, self._process = self._process, None
        if process is not None and process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                process.stdin.write(writer.frame(("close",)))
                await process.stdin.drain()
            process.stdin.close()
            await process.wait()
        for task in (self._replies, self._restarting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- writes -----------------------------------------------------------------

    def add_job(self, record: JobRecord, spec: bytes, ticket: int) -> None:
        self._write(
            record.id,
            writer.INSERT_JOB,
            (
                record.id,
                ticket,
                record.state.value,
                record.attempt,
                spec.decode(),
                record.created_at,
                record.finished_at,
                record.error,
                record.tenant,
            ),
        )

    def update_job(self, record: JobRecord) -> None:
        self._write(
            record.id,
            writer.UPDATE_JOB,
            (record.state.value, record.attempt, record.finished_at, record.error, record.id),
        )

    def add_event(self, job_id: str, event: Event) -> None:
        self._write(
            job_id,
            writer.INSERT_EVENT,
            (job_id, event.seq, event.kind.value, event.message, event.attempt),
        )

    def delete_job(self, job_id: str) -> None:
        self._write(job_id, writer.DELETE_EVENTS, (job_id,))
        self._write(job_id, writer.DELETE_JOB, (job_id,))

    def add_once(self, tenant: str, key: str, first: FirstJob) -> None:
        self._write(first.job_id, writer.INSERT_ONCE, side_tables.once_row(tenant, key, first))

    def delete_once(self, tenant: str, key: str, first: FirstJob) -> None:
        self._write(f"once {tenant} {key}", writer.DELETE_ONCE, (tenant, key, first.job_id))

    def bury(self, tombstone: Tombstone) -> None:
        row = (tombstone.job_id, tombstone.tenant, tombstone.expired_at)
        self._write(tombstone.job_id, writer.INSERT_TOMBSTONE, row)

    def unbury(self, tombstone: Tombstone) -> None:
        row = (tombstone.job_id, tombstone.expired_at)
        self._write(f"tombstone {tombstone.job_id}", writer.DELETE_TOMBSTONE, row)

    def _write(self, job_id: str, statement: int, params: tuple[Any, ...]) -> None:
        statements = self._unsaved.get(job_id)
        if statements is None:
            self._unsaved[job_id] = [(statement, params)]
        else:
            statements.append((statement, params))

    def forget(self, job_id: str) -> None:
        self._unsaved.pop(job_id, None)

    def unsaved(self) -> bool:
        return bool(self._unsaved)

    # -- rounds ---------------------------------------------------------------

    def save(self) -> asyncio.Future[Failures]:
        if self._gathering is None:
            loop = asyncio.get_running_loop()
            self._gathering = loop.create_future()
            if self._saving is None:
                # At the end of this turn of the loop: what other jobs write in it rides along.
                loop.call_soon(self._start_round)
        return self._gathering

    def _start_round(self) -> None:
        round_, self._gathering = self._gathering, None
        if round_ is None or self._saving is not None:
            return
        groups, self._unsaved = list(self._unsaved.items()), {}
        job_ids = [job_id for job_id, _ in groups]
        self._saving = (round_, job_ids)
        self._round_started = time.perf_counter()
        process = self._process
        if not groups:
            asyncio.get_running_loop().call_soon(self._round_done, round_, {})
        elif process is None or process.stdin is None or process.stdin.is_closing():
            if self._restarting is None and self._lock_file is not None:
                self._restarting = asyncio.create_task(self._restart_writer())
            reason = "the job database writer is not running"
            asyncio.get_running_loop().call_soon(
                self._round_done, round_, dict.fromkeys(job_ids, reason)
            )
        else:
            process.stdin.write(writer.frame(("round", groups)))

    def _round_done(self, round_: asyncio.Future[Failures], failures: Failures) -> None:
        if self._saving is None or self._saving[0] is not round_:
            return
        self._saving = None
        self.on_commit(time.perf_counter() - self._round_started)
        # The store lets go of lost jobs' writes before the next round can take them.
        try:
            self.on_round_end(round_, failures)
        finally:
            round_.set_result(failures)
            if self._gathering is not None:
                asyncio.get_running_loop().call_soon(self._start_round)


def _migrate(connection: sqlite3.Connection) -> None:
    """Bring a database an earlier version wrote up to this schema."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(jobs)")}
    if "tenant" not in columns:  # schema 1
        connection.execute("ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT ''")
    connection.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
        (str(SCHEMA_VERSION),),
    )


async def _read_frame(process: asyncio.subprocess.Process) -> Any:
    """The writer's next message; ``None`` once it has stopped."""
    assert process.stdout is not None
    try:
        head = await process.stdout.readexactly(4)
        (length,) = (int.from_bytes(head, "big"),)
        return pickle.loads(await process.stdout.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class SQLiteStore(MemoryStore):
    """:class:`MemoryStore` kept in an SQLite file (see :class:`SQLiteJournal`)."""

    def __init__(
        self,
        path: Path,
        *,
        queue_max: int,
        job_ttl: float,
        queue_max_bytes: int = 1 << 62,
        limits: Callable[[str], TenantLimits] | None = None,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_SECONDS,
    ) -> None:
        self.path = path
        self.sqlite = SQLiteJournal(
            path, job_ttl=job_ttl, synchronous=synchronous, clock=clock, tombstone_ttl=tombstone_ttl
        )
        super().__init__(
            queue_max=queue_max,
            job_ttl=job_ttl,
            queue_max_bytes=queue_max_bytes,
            limits=limits,
            clock=clock,
            journal=self.sqlite,
            tombstone_ttl=tombstone_ttl,
        )

    def lock(self) -> None:
        """See :meth:`SQLiteJournal.lock`."""
        self.sqlite.lock()
