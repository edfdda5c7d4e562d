"""How long one tenant's job waits behind another tenant's backlog, on each store.

Tenant ``big`` adds ``--jobs`` jobs (2,000), then tenant ``small`` adds one; workers
(``--concurrency`` claims at once, each job "running" ``--run-ms``) then claim jobs
until ``small``'s starts. The table gives, per store, how many jobs started before it
(its wait in slots) and the seconds from its add to its start. The stores are used
directly (no server): what is measured is the queue's order, and the claims' pace.

With first come, first served (the queue as it stands, 2026-12-08) the small job
waits the whole backlog; a fair policy (issue 25: round robin among tenants within a
priority level) is to start it within a few slots.

    python bench/fair_queue.py [--jobs 2000] [--concurrency 8] [--run-ms 1] [--markdown]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from llm_worker.jobs.model import EventKind, JobSpec
from llm_worker.jobs.templates import Assistant
from llm_worker.store import JobStore
from llm_worker.store.memory import MemoryStore
from llm_worker.store.redis.store import RedisStore
from llm_worker.store.sqlite import SQLiteStore
from llm_worker.testing.redis_server import RedisServer, unique_prefix
from tables import Column, Table

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")


@contextlib.asynccontextmanager
async def store_of(kind: str, jobs: int, workdir: Path) -> AsyncIterator[JobStore]:
    """A fresh store of ``kind`` with room for the backlog."""
    options = {"queue_max": jobs + 10, "job_ttl": 600}
    store: JobStore
    if kind == "memory":
        store = MemoryStore(**options)
    elif kind == "sqlite":
        store = SQLiteStore(path=workdir / "jobs.db", **options)
    else:
        server = RedisServer(workdir / "redis")
        server.start()
        store = RedisStore(server.url, prefix=unique_prefix(), **options)
    await store.start()
    try:
        yield store
    finally:
        await store.close()
        if kind == "redis":
            server.stop()


async def wait_of_small(
    store: JobStore, jobs: int, concurrency: int, run_s: float
) -> tuple[int, float]:
    """The backlog, then the small tenant's job: (jobs started before it, seconds it waited)."""
    for _ in range(jobs):
        await store.submit(SPEC, "big")
    added = time.perf_counter()
    small = (await store.submit(SPEC, "small")).id
    started: list[str] = []
    found = asyncio.Event()
    waited = 0.0

    async def worker() -> None:
        nonlocal waited
        while not found.is_set():
            claim = await store.claim(max_wait=0.5)
            if claim is None:
                continue
            started.append(claim.job_id)
            if claim.job_id == small:
                waited = time.perf_counter() - added
                found.set()
            await asyncio.sleep(run_s)
            await store.append(claim.job_id, claim.attempt, EventKind.DONE, "{}")

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await found.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return started.index(small), waited


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--run-ms", type=float, default=1.0)
    parser.add_argument("--stores", default="memory,sqlite,redis")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    table = Table(["store", "backlog", Column("small job's wait, slots", key=True), "seconds"])
    for kind in args.stores.split(","):
        with tempfile.TemporaryDirectory() as workdir:
            async with store_of(kind, args.jobs, Path(workdir)) as store:
                slots, seconds = await wait_of_small(
                    store, args.jobs, args.concurrency, args.run_ms / 1000
                )
        table.add(kind, f"{args.jobs:,}", f"{slots:,}", f"{seconds:.2f}")
    print(table.markdown() if args.markdown else table.text())


if __name__ == "__main__":
    asyncio.run(main())
