"""Webhook deliveries of an SQLite store, in a file beside its jobs' file.

Not in the jobs' file: its writer holds that one in exclusive locking mode (see
:mod:`.sqlite`). The store's lock, taken on the jobs' file, makes this one the process's
alone too. Each call is one statement in a transaction of its own, committed before it
returns (``synchronous`` as the store's), in a thread, so the event loop never waits for
the disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from pathlib import Path
from typing import Any

from llm_worker.store.deliveries import Delivery, DeliveryStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_at REAL,
    last_status INTEGER,
    last_error TEXT,
    last_excerpt TEXT NOT NULL,
    settled_at REAL,
    created_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_next ON deliveries (next_at) WHERE next_at IS NOT NULL;
"""
COLUMNS = [field.name for field in dataclasses.fields(Delivery)]


def deliveries_path(jobs_path: Path) -> Path:
    """Where the deliveries of the store kept in ``jobs_path`` are kept."""
    return jobs_path.with_name(jobs_path.name + ".webhooks")


class SQLiteDeliveries(DeliveryStore):
    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def start(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.executescript(SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await asyncio.to_thread(self._close)

    def _close(self) -> None:
        # After the statement a cancelled call left running in its thread, if any.
        with self._lock:
            if self._db is not None:
                db, self._db = self._db, None
                db.close()

    async def _run(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self._execute, [(sql, params)])

    def _execute(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        assert self._db is not None, "start() first"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows: list[tuple[Any, ...]] = []
                for sql, params in statements:
                    rows = self._db.execute(sql, params).fetchall()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return rows

    async def add(self, delivery: Delivery) -> None:
        names = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        values = [getattr(delivery, name) for name in COLUMNS]
        await self._run(f"INSERT OR REPLACE INTO deliveries ({names}) VALUES ({marks})", *values)

    async def get(self, job_id: str) -> Delivery | None:
        rows = await self._run(
            f"SELECT {', '.join(COLUMNS)} FROM deliveries WHERE job_id = ?", job_id
        )
        return Delivery(*rows[0]) if rows else None

    async def claim(self, now: float, limit: int, lease: float) -> list[Delivery]:
        rows = await asyncio.to_thread(
            self._execute,
            [
                ("DELETE FROM deliveries WHERE expires_at <= ?", (now,)),
                (
                    "UPDATE deliveries SET lease_until = ? WHERE job_id IN ("
                    "SELECT job_id FROM deliveries WHERE next_at <= ? AND lease_until <= ? "
                    "AND state IN ('waiting', 'due') ORDER BY next_at LIMIT ?) "
                    f"RETURNING {', '.join(COLUMNS)}",
                    (now + lease, now, now, limit),
                ),
            ],
        )
        return [Delivery(*row) for row in rows]

    async def save(self, delivery: Delivery, keep: float) -> None:
        settled = delivery.settled_at
        expires = settled + keep if not delivery.open and settled is not None else None
        assignments = ", ".join(f"{name} = ?" for name in COLUMNS)
        values = [getattr(delivery, name) for name in COLUMNS]
        await self._run(
            f"UPDATE deliveries SET {assignments}, lease_until = 0, expires_at = ? "
            "WHERE job_id = ?",
            *values,
            expires,
            delivery.job_id,
        )
