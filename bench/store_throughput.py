"""Tokens per second through each store, processes started as a user starts them.

Starts a loopback OpenAI-compatible server (its own process, replies of
``--tokens`` tokens with no delay), then, round after round, each
configuration's processes, and submits ``--jobs`` jobs over ``--connections``
WebSocket connections to the gateway, timing from the first ``add`` to the
last ``done``. Configurations:

* ``memory``, ``sqlite``: one process, gateway and worker together;
* ``redis``, ``redis-2w``: one gateway process and one or two worker processes
  around a private redis-server (append-only file, ``appendfsync always``, as
  durable as SQLite's ``FULL``);
* ``redis-cluster``: one gateway and one worker around a Redis Cluster of three
  masters (each as durable); its nodes are named by what they hold: the
  queue's slot, the events channel's, neither.

Rounds alternate the configurations, so that each meets the same machine; the
table gives medians. For each process it also gives the CPU time it spent
per token delivered (its children included: SQLite's writer process), which
says how far a machine goes. Then time to first token (``add`` to the first
text) at 1 and at 10 jobs at once, for each configuration.

    python bench/store_throughput.py [--jobs 400] [--tokens 50] [--markdown]

Everything shares this machine's cores: on 2 cores, the gateway, the worker,
Redis, the model server and the load generator compete for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import websockets
from redis.crc import key_slot

from llm_worker.testing.processes import WorkerProcess, clean_env
from llm_worker.testing.redis_cluster import SLOTS, RedisCluster
from llm_worker.testing.redis_server import RedisServer, free_port, unique_prefix
from percentiles import percentile
from tables import Column, Table

ASSISTANT = {
    "streams": [
        {
            "provider": "openai",
            "settings": {"model": "bench"},
            "messages": [{"role": "user", "content": "{query}"}],
        }
    ]
}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and every process below it, so far."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The command may hold spaces and parentheses: fields count from the last ')'.
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            parents[int(entry.name)] = int(fields[1])
            times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    tree, grew = {pid}, True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        grew = bool(below)
        tree |= below
    return sum(times.get(member, 0.0) for member in tree)


@dataclass
class Deployment:
    """One configuration's processes: a gateway first, and Redis when there is one."""

    processes: list[WorkerProcess] = field(default_factory=list)
    redis: RedisServer | None = None
    cluster: RedisCluster | None = None

    @property
    def url(self) -> str:
        return self.processes[0].ws_url

    def pids(self) -> dict[str, int]:
        if len(self.processes) == 1:
            named = {"process": self.processes[0].process.pid}
        else:
            named = {"gateway": self.processes[0].process.pid}
            for index, worker in enumerate(self.processes[1:]):
                named[f"worker{index or ''}"] = worker.process.pid
        if self.redis is not None and self.redis.process is not None:
            named["redis"] = self.redis.process.pid
        if self.cluster is not None:
            nodes = len(self.cluster.nodes)
            tags = (("queue", b"{queue}"), ("events", b"{events}"))
            holds = {key_slot(tag) * nodes // SLOTS: what for what, tag in tags}
            for index, node in enumerate(self.cluster.nodes):
                assert node.process is not None
                named[f"redis {holds.get(index, 'other')}"] = node.process.pid
        return named


@contextlib.asynccontextmanager
async def deployed(config: str, base_env: dict[str, str]) -> AsyncIterator[Deployment]:
    with tempfile.TemporaryDirectory() as workdir:
        deployment = Deployment()
        env = dict(base_env)
        try:
            if config in ("memory", "sqlite"):
                env["STORE_URL"] = "memory://" if config == "memory" else "sqlite:///jobs.db"
                deployment.processes.append(await WorkerProcess.start(env, Path(workdir)))
            else:
                if config == "redis-cluster":
                    deployment.cluster = RedisCluster(Path(workdir) / "cluster")
                    deployment.cluster.start()
                    env["STORE_URL"] = f"redis+cluster://127.0.0.1:{deployment.cluster.ports[0]}"
                else:
                    deployment.redis = RedisServer(Path(workdir) / "redis")
                    deployment.redis.start()
                    env["STORE_URL"] = deployment.redis.url
                env["REDIS_PREFIX"] = unique_prefix()
                deployment.processes.append(
                    await WorkerProcess.start(env, Path(workdir), role="gateway")
                )
                for _ in range(2 if config == "redis-2w" else 1):
                    deployment.processes.append(
                        await WorkerProcess.start(env, Path(workdir), role="worker")
                    )
            yield deployment
        finally:
            for process in deployment.processes:
                await process.stop()
            if deployment.redis is not None:
                deployment.redis.stop()
            if deployment.cluster is not None:
                deployment.cluster.stop()


async def load(url: str, jobs: int, connections: int) -> tuple[float, list[float]]:
    """Seconds to get ``jobs`` jobs done over ``connections`` clients, and each job's
    time to first token (s)."""
    first_tokens: list[float] = []

    async def client(count: int) -> None:
        async with websockets.connect(url, max_size=None, compression=None) as ws:
            sent: dict[int, float] = {}
            ids: dict[str, int] = {}
            for index in range(count):
                sent[index] = time.perf_counter()
                await ws.send(
                    json.dumps({"type": "add", "id": index, "query": "q", "assistant": ASSISTANT})
                )
            done = 0
            while done < count:
                message = json.loads(await ws.recv())
                kind = message["type"]
                if kind == "resp_add":
                    ids[message["job_id"]] = message["id"]
                elif kind == "running" and message["message"]:
                    index = ids.pop(message["job_id"], None)
                    if index is not None:
                        first_tokens.append(time.perf_counter() - sent[index])
                elif kind == "done":
                    done += 1
                elif kind in ("failed", "error", "cancelled"):
                    raise RuntimeError(f"job did not finish: {message}")

    shares = [jobs // connections + (i < jobs % connections) for i in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in shares if n))
    return time.perf_counter() - started, first_tokens


@dataclass
class Measured:
    seconds: list[float] = field(default_factory=list)
    cpu_per_token: dict[str, list[float]] = field(default_factory=dict)
    ttft: dict[int, list[float]] = field(default_factory=dict)


async def throughput_round(
    deployment: Deployment, measured: Measured, jobs: int, tokens: int, connections: int
) -> None:
    pids = deployment.pids()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    seconds, _ = await load(deployment.url, jobs, connections)
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    measured.seconds.append(seconds)
    for name in pids:
        per_token = (after[name] - before[name]) / (jobs * tokens)
        measured.cpu_per_token.setdefault(name, []).append(per_token)


async def ttft_round(deployment: Deployment, measured: Measured, at_once: int) -> None:
    _, first = await load(deployment.url, at_once, at_once)
    measured.ttft.setdefault(at_once, []).extend(first)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ttft-rounds", type=int, default=100, help="at 1 job; 10 at 10")
    parser.add_argument("--configs", default="sqlite,redis", help="comma-separated")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    configs = args.configs.split(",")

    port = free_port()
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_worker.testing.openai_server",
        "--port", str(port), "--tokens", str(args.tokens),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert upstream.stdout is not None
    await upstream.stdout.readline()
    base_env = clean_env(
        LISTEN_PORT="0",
        OPENAI_API_KEY="bench",
        OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
        WORKER_CONCURRENCY="16",
        QUEUE_MAX=str(args.jobs * 2),
    )
    measured = {config: Measured() for config in configs}
    try:
        async with contextlib.AsyncExitStack() as stack:
            deployments = {
                config: await stack.enter_async_context(deployed(config, base_env))
                for config in configs
            }
            for deployment in deployments.values():  # warm-up
                await load(deployment.url, min(50, args.jobs), args.connections)
            for _ in range(args.rounds):
                for config in configs:
                    await throughput_round(
                        deployments[config], measured[config],
                        args.jobs, args.tokens, args.connections,
                    )  # fmt: skip
            for at_once, rounds in ((1, args.ttft_rounds), (10, max(1, args.ttft_rounds // 10))):
                for _ in range(rounds):
                    for config in configs:
                        await ttft_round(deployments[config], measured[config], at_once)
    finally:
        upstream.send_signal(signal.SIGTERM)
        await upstream.wait()
    report(args, configs, measured)


def report(args: argparse.Namespace, configs: list[str], measured: dict[str, Measured]) -> None:
    tokens = args.jobs * args.tokens
    first = configs[0]
    base = tokens / statistics.median(measured[first].seconds)
    print(
        f"{args.jobs} jobs of {args.tokens} tokens over {args.connections} connections, "
        f"{os.cpu_count()} CPUs; medians of {args.rounds} rounds, alternating\n"
    )
    throughput = Table(
        ["store", "tokens/s", Column(f"against {first}", key=True), "CPU µs per token, by process"]
    )
    for config in configs:
        rate = tokens / statistics.median(measured[config].seconds)
        cpu = ", ".join(
            f"{name} {statistics.median(values) * 1e6:.1f}"
            for name, values in measured[config].cpu_per_token.items()
        )
        total = sum(statistics.median(v) for v in measured[config].cpu_per_token.values())
        throughput.add(
            config, f"{rate:,.0f}", f"{rate / base:.2f}", f"{cpu}; all {total * 1e6:.1f}"
        )
    ttft = Table(["store", "jobs at once", "TTFT p50 (ms)", "TTFT p99 (ms)", "samples"])
    for at_once in (1, 10):
        for config in configs:
            values = [v * 1000 for v in measured[config].ttft.get(at_once, [])]
            if values:
                ttft.add(
                    config,
                    at_once,
                    f"{percentile(values, 50):.2f}",
                    f"{percentile(values, 99):.2f}",
                    len(values),
                )
    for table in (throughput, ttft):
        print(table.markdown() if args.markdown else table.text(), end="\n\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "jobs": args.jobs,
                    "tokens_per_job": args.tokens,
                    "connections": args.connections,
                    "cpus": os.cpu_count(),
                    "configs": {c: measured[c].__dict__ for c in configs},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    asyncio.run(main())
