"""What saving before showing costs on the token path of the SQLite store.

``--jobs`` running jobs append ``--deltas`` token deltas each, ``--interval``
seconds apart (as a model streams; 0 for as fast as possible), straight into
the store (no network, no model). Reported: deltas per second, and the time
from an append until followers see the delta (for SQLite, until the round that
saves it has committed), for:

* ``memory``: the in-memory store, which saves nothing: the floor;
* ``sqlite-FULL``: the default, synchronous=FULL (survives power loss);
* ``sqlite-NORMAL``: synchronous=NORMAL (survives a crash of the process,
  not of the machine).

    python bench/sqlite_commits.py [--jobs 16] [--deltas 500] [--interval 0.005]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from llm_worker.jobs.model import EventKind, JobSpec
from llm_worker.jobs.templates import Assistant
from llm_worker.store import JobStore, MemoryStore
from llm_worker.store.sqlite import SQLiteStore

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")


async def measure(store: JobStore, jobs: int, deltas: int, interval: float) -> dict[str, Any]:
    ids = [(await store.submit(SPEC)).id for _ in range(jobs)]
    for _ in ids:
        await store.claim(max_wait=0)
    appended: dict[tuple[str, int], float] = {}
    delays: list[float] = []

    async def follow(job_id: str) -> None:
        async for batch in store.follow(job_id):
            now = time.perf_counter()
            delays.extend(now - appended.pop((job_id, e.seq), now) for e in batch)

    async def produce(job_id: str) -> None:
        for index in range(deltas):
            event = await store.append(job_id, 1, EventKind.RUNNING, f" token{index}")
            appended[(job_id, event.seq)] = time.perf_counter()
            await asyncio.sleep(interval)  # others interleave, as live jobs do
        await store.append(job_id, 1, EventKind.DONE)

    followers = [asyncio.create_task(follow(job_id)) for job_id in ids]
    commits = getattr(getattr(store, "sqlite", None), "commits", 0)
    started = time.perf_counter()
    await asyncio.gather(*(produce(job_id) for job_id in ids))
    await asyncio.gather(*followers)
    elapsed = time.perf_counter() - started
    delays.sort()
    return {
        "deltas_per_second": jobs * deltas / elapsed,
        "shown_p50_us": statistics.median(delays) * 1e6,
        "shown_p99_us": delays[int(len(delays) * 0.99)] * 1e6,
        "commits": getattr(getattr(store, "sqlite", None), "commits", 0) - commits,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--deltas", type=int, default=500)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "jobs": args.jobs,
        "deltas_per_job": args.deltas,
        "interval": args.interval,
        "runs": {},
    }
    print(f"{args.jobs} jobs x {args.deltas} deltas, {args.interval * 1e3:g} ms apart")
    print(f"{'store':16}{'deltas/s':>11}{'shown after: p50':>18}{'p99':>10}{'commits':>9}")
    with tempfile.TemporaryDirectory() as directory:
        configs: list[tuple[str, Any]] = [
            ("memory", lambda: MemoryStore(queue_max=1000, job_ttl=60)),
            ("sqlite-FULL", lambda: SQLiteStore(Path(directory, "a.db"), queue_max=1000,
                                                job_ttl=60, synchronous="FULL")),
            ("sqlite-NORMAL", lambda: SQLiteStore(Path(directory, "b.db"), queue_max=1000,
                                                  job_ttl=60, synchronous="NORMAL")),
        ]  # fmt: skip
        for name, make in configs:
            store = make()
            await store.start()
            try:
                result = await measure(store, args.jobs, args.deltas, args.interval)
            finally:
                await store.close()
            results["runs"][name] = result
            print(
                f"{name:16}{result['deltas_per_second']:>11,.0f}"
                f"{result['shown_p50_us']:>16.0f}us{result['shown_p99_us']:>8.0f}us"
                f"{result['commits']:>9}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
