"""What batching SQLite commits buys on the token path, and what it risks.

Appends ``--deltas`` token deltas to each of ``--jobs`` running jobs at once,
straight into the store (no network, no model), and reports deltas per second
and the time one append takes, for:

* ``memory``: the in-memory store, as the ceiling;
* ``batched-FULL``: the SQLite default, deltas committed every SQLITE_FLUSH_MS
  (5 ms) with synchronous=FULL (survives power loss);
* ``batched-NORMAL``: the same with synchronous=NORMAL (survives a crash of
  the process, not of the machine);
* ``commit-each-FULL``: every delta committed before the next one, as a store
  that made each delta durable before showing it would have to.

    python bench/sqlite_commits.py [--jobs 16] [--deltas 500]
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

from llm_worker.jobs import EventKind, JobSpec
from llm_worker.store import JobStore, MemoryStore
from llm_worker.store.sqlite import SQLiteStore
from llm_worker.templates import Assistant

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")


async def measure(store: JobStore, jobs: int, deltas: int, commit_each: bool) -> dict[str, Any]:
    ids = [(await store.submit(SPEC)).id for _ in range(jobs)]
    for _ in ids:
        await store.claim(max_wait=0)
    latencies: list[float] = []

    async def produce(job_id: str) -> None:
        for index in range(deltas):
            started = time.perf_counter()
            await store.append(job_id, 1, EventKind.RUNNING, f" token{index}")
            if commit_each:
                await store._commit()  # type: ignore[attr-defined]
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0)  # let the other jobs interleave, as live ones do

    started = time.perf_counter()
    await asyncio.gather(*(produce(job_id) for job_id in ids))
    elapsed = time.perf_counter() - started
    for job_id in ids:
        await store.append(job_id, 1, EventKind.DONE)
    latencies.sort()
    return {
        "deltas_per_second": jobs * deltas / elapsed,
        "append_p50_us": statistics.median(latencies) * 1e6,
        "append_p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "commits": getattr(getattr(store, "_writer", None), "commits", 0),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--deltas", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"jobs": args.jobs, "deltas_per_job": args.deltas, "runs": {}}
    print(f"{args.jobs} jobs x {args.deltas} deltas appended concurrently")
    print(f"{'store':18}{'deltas/s':>12}{'append p50':>12}{'p99':>10}{'commits':>9}")
    with tempfile.TemporaryDirectory() as directory:
        configs: list[tuple[str, Any, bool]] = [
            ("memory", lambda: MemoryStore(queue_max=1000, job_ttl=60), False),
            ("batched-FULL", lambda: SQLiteStore(Path(directory, "a.db"), queue_max=1000,
                                                 job_ttl=60, synchronous="FULL"), False),
            ("batched-NORMAL", lambda: SQLiteStore(Path(directory, "b.db"), queue_max=1000,
                                                   job_ttl=60, synchronous="NORMAL"), False),
            ("commit-each-FULL", lambda: SQLiteStore(Path(directory, "c.db"), queue_max=1000,
                                                     job_ttl=60, synchronous="FULL"), True),
        ]  # fmt: skip
        for name, make, commit_each in configs:
            store = make()
            await store.start()
            try:
                result = await measure(store, args.jobs, args.deltas, commit_each)
            finally:
                await store.close()
            results["runs"][name] = result
            print(
                f"{name:18}{result['deltas_per_second']:>12,.0f}"
                f"{result['append_p50_us']:>10.1f}us{result['append_p99_us']:>8.0f}us"
                f"{result['commits']:>9}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
