"""The SQLite store's writer: a small process of its own that commits rounds.

Run by :class:`~llm_worker.store.sqlite.SQLiteJournal` as
``python -I -S sqlite_writer.py PATH SYNCHRONOUS``, it needs the standard
library only. Why a process and not a thread: a thread must take the GIL
back from the event loop to report each commit, and a busy event loop keeps
it for tens of milliseconds at a time (it releases and retakes the GIL at
every poll, which defeats CPython's switch interval); tokens would reach
listeners in bursts. A process reports through a pipe that the loop reads
like any socket.

Protocol, on stdin and stdout: frames of a 4-byte big-endian length and a
pickle. The writer says ``("ready",)`` once the database is open (or
``("error", message)`` and exits). Each ``("round", groups)`` -- ``groups`` a
list of ``(job_id, [(statement, params), ...])``, ``statement`` an index into
:data:`STATEMENTS` -- is committed as one transaction and answered with the
dict of the jobs whose writes failed (job id -> why). End of input, or
``("close",)``, ends the process after what it was given. So does the store's
process going away (a ``kill -9``), quietly: input cut off mid-frame is the end
of input, and replies nobody reads are dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import signal
import sqlite3
import struct
import sys
from typing import Any, BinaryIO

INSERT_JOB = 0
UPDATE_JOB = 1
INSERT_EVENT = 2
DELETE_EVENTS = 3
DELETE_JOB = 4
INSERT_ONCE = 5
DELETE_ONCE = 6
INSERT_TOMBSTONE = 7
DELETE_TOMBSTONE = 8
_EVENT_COLUMNS = "INSERT OR REPLACE INTO events (job_id, seq, kind, message, attempt) VALUES"
STATEMENTS = (
    "INSERT INTO jobs (id, ticket, state, attempt, spec, created_at, finished_at, error, tenant)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "UPDATE jobs SET state = ?, attempt = ?, finished_at = ?, error = ? WHERE id = ?",
    f"{_EVENT_COLUMNS} (?, ?, ?, ?, ?)",
    "DELETE FROM events WHERE job_id = ?",
    "DELETE FROM jobs WHERE id = ?",
    # Idempotency keys and tombstones (:mod:`.sqlite_side_tables`); a deletion names the
    # row it means, so that one put again in the same round stays.
    "INSERT OR REPLACE INTO once_keys (tenant, key, job_id, digest, created_at, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?)",
    "DELETE FROM once_keys WHERE tenant = ? AND key = ? AND job_id = ?",
    "INSERT OR REPLACE INTO tombstones (id, tenant, expired_at) VALUES (?, ?, ?)",
    "DELETE FROM tombstones WHERE id = ? AND expired_at = ?",
)
# Rows per multi-row INSERT of events: 5 parameters each, under SQLite's historic 999.
EVENTS_PER_INSERT = 199

Group = tuple[str, list[tuple[int, tuple[Any, ...]]]]
_LENGTH = struct.Struct(">I")


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    """The connection every user of the file opens it with."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # Before the first access: the WAL index stays in the process's heap, and no
    # -shm file is mapped (its page faults on a full disk would be a SIGBUS).
    connection.execute("PRAGMA locking_mode=EXCLUSIVE")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    return connection


def reason(exc: BaseException) -> str:
    return f"{exc} (the job database)" if isinstance(exc, sqlite3.Error) else repr(exc)


def write_round(connection: sqlite3.Connection, groups: list[Group]) -> dict[str, str]:
    """Commit the groups in one transaction; the failures of those left out.

    Every group at once first, in a few statements; if one fails, again with a
    savepoint per group, so that a bad write costs its job only. A failed
    commit (a full disk, a read-only file) costs every job of the round.
    """
    try:
        connection.execute("BEGIN")
        try:
            for sql, rows in batches(groups):
                if len(rows) > 1:
                    connection.executemany(sql, rows)
                else:
                    connection.execute(sql, rows[0])
            failures: dict[str, str] = {}
        except sqlite3.Error:
            connection.execute("ROLLBACK")
            connection.execute("BEGIN")
            failures = write_apart(connection, groups)
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        return {job_id: reason(exc) for job_id, _ in groups}
    return failures


def write_apart(connection: sqlite3.Connection, groups: list[Group]) -> dict[str, str]:
    failures: dict[str, str] = {}
    for job_id, statements in groups:
        connection.execute("SAVEPOINT job")
        try:
            for statement, params in statements:
                connection.execute(STATEMENTS[statement], params)
        except sqlite3.Error as exc:
            connection.execute("ROLLBACK TO job")
            failures[job_id] = reason(exc)
        connection.execute("RELEASE job")
    return failures


def batches(groups: list[Group]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The groups' statements as few calls: rows by statement, in a safe order
    (a job's row before its updates, deletions last), events in multi-row INSERTs."""
    rows_of: list[list[tuple[Any, ...]]] = [[] for _ in STATEMENTS]
    for _, statements in groups:
        for statement, params in statements:
            rows_of[statement].append(params)
    calls = []
    for statement, rows in enumerate(rows_of):
        if not rows:
            continue
        if statement != INSERT_EVENT:
            calls.append((STATEMENTS[statement], rows))
            continue
        for start in range(0, len(rows), EVENTS_PER_INSERT):
            chunk = rows[start : start + EVENTS_PER_INSERT]
            values = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
            calls.append(
                (f"{_EVENT_COLUMNS} {values}", [tuple(itertools.chain.from_iterable(chunk))])
            )
    return calls


def read_frame(stream: BinaryIO) -> Any:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    payload = stream.read(length)
    if len(payload) < length:
        return None  # cut off: the store's process has gone
    return pickle.loads(payload)


def frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def main(path: str, synchronous: str) -> int:
    # The store's process says when to stop (end of input), signals or not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return serve(path, synchronous)
    except BrokenPipeError:
        # The store's process has gone: nobody to answer. Python flushes stdout on
        # exit; pointed at devnull, that flush cannot fail aloud in the shared log.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def serve(path: str, synchronous: str) -> int:
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    try:
        connection = connect(path, synchronous)
        connection.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        replies.write(frame(("error", str(exc))))
        replies.flush()
        return 1
    replies.write(frame(("ready",)))
    replies.flush()
    try:
        while (message := read_frame(requests)) is not None and message[0] == "round":
            replies.write(frame(write_round(connection, message[1])))
            replies.flush()
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
