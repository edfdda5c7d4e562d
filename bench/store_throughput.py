"""Jobs per second through each store, with processes started as a user starts them.

Starts a loopback OpenAI-compatible server (its own process, replies of
``--tokens`` tokens with no delay), then for each configuration the worker
processes, and submits ``--jobs`` jobs over ``--connections`` WebSocket
connections to the (first) gateway, timing from the first ``add`` to the last
``done``. Configurations:

* ``memory``, ``sqlite``: one process, gateway and worker together;
* ``redis-1w``, ``redis-2w``: one gateway process and one or two worker
  processes around a private redis-server.

    python bench/store_throughput.py [--jobs 1000] [--tokens 20] [--json out.json]

Everything shares this machine's cores: on 2 cores, a second worker process
competes with the gateway, Redis and the load generator for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

from llm_worker.testing.processes import WorkerProcess, clean_env
from llm_worker.testing.redis_server import RedisServer, free_port, unique_prefix

ASSISTANT = {
    "streams": [
        {
            "provider": "openai",
            "settings": {"model": "bench"},
            "messages": [{"role": "user", "content": "{query}"}],
        }
    ]
}


async def load(url: str, jobs: int, connections: int) -> float:
    """Seconds to get ``jobs`` jobs done, spread over ``connections`` clients."""

    async def client(count: int) -> None:
        async with websockets.connect(url, max_size=None, compression=None) as ws:
            for index in range(count):
                await ws.send(
                    json.dumps({"type": "add", "id": index, "query": "q", "assistant": ASSISTANT})
                )
            done = 0
            while done < count:
                message = json.loads(await ws.recv())
                if message["type"] in ("failed", "error", "cancelled"):
                    raise RuntimeError(f"job did not finish: {message}")
                if message["type"] == "done":
                    done += 1

    shares = [jobs // connections + (i < jobs % connections) for i in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in shares if n))
    return time.perf_counter() - started


async def run(
    config: str, base_env: dict[str, str], jobs: int, connections: int
) -> tuple[float, dict[str, float]]:
    """Seconds for the jobs, and each process's peak RSS (MiB) by role."""
    with tempfile.TemporaryDirectory() as workdir:
        procs: list[WorkerProcess] = []
        redis: RedisServer | None = None
        try:
            env = dict(base_env)
            if config in ("memory", "sqlite"):
                env["STORE_URL"] = "memory://" if config == "memory" else "sqlite:///jobs.db"
                procs.append(await WorkerProcess.start(env, Path(workdir)))
            else:
                redis = RedisServer(Path(workdir) / "redis")
                redis.start()
                env["STORE_URL"] = redis.url
                env["REDIS_PREFIX"] = unique_prefix()
                procs.append(await WorkerProcess.start(env, Path(workdir), role="gateway"))
                for _ in range(int(config.removeprefix("redis-").removesuffix("w"))):
                    procs.append(await WorkerProcess.start(env, Path(workdir), role="worker"))
            url = procs[0].ws_url
            await load(url, min(50, jobs), connections)  # warm-up
            seconds = await load(url, jobs, connections)
            roles = ["all"] if len(procs) == 1 else ["gateway"] + ["worker"] * (len(procs) - 1)
            rss = {
                f"{role}{i}": p.peak_rss_mib()
                for i, (role, p) in enumerate(zip(roles, procs, strict=True))
            }
            return seconds, rss
        finally:
            for proc in procs:
                await proc.stop()
            if redis is not None:
                redis.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--configs", default="memory,sqlite,redis-1w,redis-2w", help="comma-separated"
    )
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    port = free_port()
    upstream = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llm_worker.testing.openai_server",
        "--port",
        str(port),
        "--tokens",
        str(args.tokens),
        stdout=asyncio.subprocess.PIPE,
    )
    assert upstream.stdout is not None
    await upstream.stdout.readline()
    base_env = clean_env(
        LISTEN_PORT="0",
        OPENAI_API_KEY="bench",
        OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
        WORKER_CONCURRENCY="16",
        QUEUE_MAX=str(args.jobs * 2),
    )
    results: dict[str, Any] = {
        "jobs": args.jobs,
        "tokens_per_job": args.tokens,
        "connections": args.connections,
        "cpus": os.cpu_count(),
        "configs": {},
    }
    print(
        f"{args.jobs} jobs of {args.tokens} tokens, {args.connections} connections, "
        f"{os.cpu_count()} CPUs; median of {args.rounds} rounds"
    )
    print(f"{'store':12}{'jobs/s':>10}{'tokens/s':>12}{'seconds':>10}   peak RSS (MiB)")
    try:
        for config in args.configs.split(","):
            rounds = [
                await run(config, base_env, args.jobs, args.connections) for _ in range(args.rounds)
            ]
            seconds = [r[0] for r in rounds]
            rss = rounds[-1][1]
            median = statistics.median(seconds)
            results["configs"][config] = {
                "seconds": seconds,
                "jobs_per_second": args.jobs / median,
                "peak_rss_mib": rss,
            }
            memory = ", ".join(f"{name} {mib:.0f}" for name, mib in rss.items())
            print(
                f"{config:12}{args.jobs / median:>10.0f}{args.jobs * args.tokens / median:>12.0f}"
                f"{median:>10.2f}   {memory}"
            )
    finally:
        upstream.send_signal(signal.SIGTERM)
        await upstream.wait()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
