"""The SQLite store's tables beside its jobs and their events: idempotency keys
(:mod:`.idempotency`) and tombstones (:mod:`.tombstones`).

Both are written through the journal in the round of the job they are about (a key
with its first job, a tombstone with its job's deletion), so each is saved with it or
not at all; both are read back when the store opens, without those whose time is up,
which are deleted then.
"""

from __future__ import annotations

import sqlite3

from llm_worker.store.idempotency import FirstJob
from llm_worker.store.tombstones import Tombstone

SCHEMA = """
CREATE TABLE IF NOT EXISTS once_keys (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    expired_at REAL NOT NULL
) WITHOUT ROWID;
"""


def once_row(tenant: str, key: str, first: FirstJob) -> tuple[object, ...]:
    """The parameters of the writer's ``INSERT_ONCE``."""
    return (tenant, key, first.job_id, first.digest, first.created_at, first.expires_at)


def load_once(connection: sqlite3.Connection, now: float) -> list[tuple[str, str, FirstJob]]:
    """The keys in their window; the others are deleted."""
    connection.execute("DELETE FROM once_keys WHERE expires_at <= ?", (now,))
    return [
        (tenant, key, FirstJob(job_id, digest, created_at, expires_at))
        for tenant, key, job_id, digest, created_at, expires_at in connection.execute(
            "SELECT tenant, key, job_id, digest, created_at, expires_at FROM once_keys"
        )
    ]


def load_tombstones(
    connection: sqlite3.Connection, now: float, keep: float, buried: list[Tombstone]
) -> list[Tombstone]:
    """The tombstones kept, with ``buried`` (those of jobs found expired at this start)
    added; those older than ``keep`` are deleted."""
    connection.executemany(
        "INSERT OR REPLACE INTO tombstones (id, tenant, expired_at) VALUES (?, ?, ?)",
        [(t.job_id, t.tenant, t.expired_at) for t in buried],
    )
    connection.execute("DELETE FROM tombstones WHERE expired_at + ? <= ?", (keep, now))
    return [
        Tombstone(job_id, tenant, expired_at)
        for job_id, tenant, expired_at in connection.execute(
            "SELECT id, tenant, expired_at FROM tombstones"
        )
    ]
