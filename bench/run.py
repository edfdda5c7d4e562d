"""Benchmarks: what the worker adds to a model's latency and throughput, measured side
by side with the ``openai`` SDK calling the same loopback server directly.

    python bench/run.py            # the full run (several minutes)
    python bench/run.py --smoke    # small sizes, a minute: what CI runs
    python bench/run.py --docs     # the full run, then BENCHMARKS.md and its chart

Three processes: the loopback OpenAI-compatible server, the worker
(``llm-worker serve`` with its default SQLite store) and the load generator
(``bench/loadgen.py``), each scenario in a fresh load generator process.
Prints a table; writes ``results.json`` and ``benchmarks.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from local_batching import summary
from report import (
    openai_api_table,
    peer_table,
    throughput_table,
    ttft_table,
    write_benchmarks_md,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

FULL = {
    "levels": [1, 10, 100, 1000],
    "ttft_rounds": {1: 200, 10: 50, 100: 10, 1000: 3},
    "throughput_tokens": 100,
    "throughput_rounds": {1: 9, 10: 5, 100: 5, 1000: 3},
    "scale": {"idle": 10_000, "jobs": 1000, "tokens": 200, "delay": 0.01},
    "fanout": {"listeners": 100, "tokens": 2000},
    "openai_api_rounds": {1: 40, 10: 10},
}
SMOKE = {
    "levels": [1, 10],
    "ttft_rounds": {1: 5, 10: 2},
    "throughput_tokens": 20,
    "throughput_rounds": {1: 1, 10: 1},
    "scale": {"idle": 200, "jobs": 20, "tokens": 20, "delay": 0.01},
    "fanout": {"listeners": 10, "tokens": 200},
    "openai_api_rounds": {1: 2},
    # Two tokens: a prefill and one batched step, the least that runs every way of generating.
    "local_args": ["--tokens", "2", "--hidden", "64", "--layers", "2"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 30) -> None:
    """Return once ``url`` answers 200; :class:`TimeoutError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:  # refused, reset, an HTTP error status
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s")
        time.sleep(0.05)


async def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """One scenario in a fresh load generator process; its result."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "loadgen.py"), json.dumps(spec),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 1800)
    if process.returncode != 0:
        raise RuntimeError(f"{spec['scenario']} failed:\n{stderr.decode()[-3000:]}")
    return json.loads(stdout.decode().strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        memory_kib = int(meminfo.read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "packages": {
            name: version(name)
            for name in ("llm-worker", "openai", "uvicorn", "websockets", "starlette", "uvloop")
        },
    }


LITELLM_KEY = "sk-bench-7f3a9c1e5b2d4a6f8e0c1b3d5f7a9e2c"


def litellm_peer(
    binary: str, upstream_port: int, workdir: Path, tokens: int
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """LiteLLM's proxy in front of the loopback server, and how the loadgen reaches it."""
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        + "".join(
            f'  - model_name: "{alias}"\n'
            f"    litellm_params:\n"
            f'      model: "openai/fake:tokens={count}"\n'
            f'      api_base: "http://127.0.0.1:{upstream_port}/v1"\n'
            f'      api_key: "bench"\n'
            for alias, count in (("bench-ttft", 5), ("bench-throughput", tokens))
        )
    )
    process = subprocess.Popen(
        [binary, "--config", str(config), "--port", str(port), "--num_workers", "1"],
        env={**os.environ, "LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOG": "ERROR"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(f"http://127.0.0.1:{port}/health/liveliness", timeout=120)
    return process, {
        "peer_base_url": f"http://127.0.0.1:{port}/v1",
        "peer_key": LITELLM_KEY,
        "peer_models": {"ttft": "bench-ttft", "throughput": "bench-throughput"},
    }


async def run(sizes: dict[str, Any], workdir: Path, litellm: str | None = None) -> dict[str, Any]:
    upstream_port = free_port()
    upstream = subprocess.Popen(  # noqa: ASYNC220 - before any measurement
        [sys.executable, "-m", "llm_worker.testing.openai_server", "--port", str(upstream_port)],
        stdout=subprocess.DEVNULL,
    )
    env = clean_env(
        LISTEN_PORT="0",
        OPENAI_API_KEY="bench",
        OPENAI_BASE_URL=f"http://127.0.0.1:{upstream_port}/v1",
        WORKER_CONCURRENCY=str(max(sizes["levels"] + [sizes["scale"]["jobs"]])),
        QUEUE_MAX="100000",
    )
    results: dict[str, Any] = {"ttft": {}, "throughput": {}}
    async with processes() as started:
        try:
            await asyncio.to_thread(wait_for, f"http://127.0.0.1:{upstream_port}/v1/models")
            worker = await WorkerProcess.start(env, workdir)
            started.append(worker)
            base = {
                "ws_url": worker.ws_url,
                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                "upstream_host": "127.0.0.1",
                "upstream_port": upstream_port,
                "worker_pid": worker.process.pid,
            }
            for level in sizes["levels"] if not sizes.get("openai_api_only") else []:
                print(f"  concurrency {level}: time to first token", flush=True)
                results["ttft"][level] = await loadgen(
                    base
                    | {
                        "scenario": "ttft",
                        "concurrency": level,
                        "rounds": sizes["ttft_rounds"][level],
                    }
                )
                print(f"  concurrency {level}: throughput", flush=True)
                results["throughput"][level] = await loadgen(
                    base
                    | {
                        "scenario": "throughput",
                        "concurrency": level,
                        "tokens": sizes["throughput_tokens"],
                        "rounds": sizes["throughput_rounds"][level],
                    }
                )
            if not sizes.get("openai_api_only"):
                print("  idle connections and running jobs", flush=True)
                results["scale"] = await loadgen(base | {"scenario": "scale"} | sizes["scale"])
                print("  fan-out", flush=True)
                results["fanout"] = await loadgen(base | {"scenario": "fanout"} | sizes["fanout"])
            results["openai_api"] = {}
            for level, rounds in sizes["openai_api_rounds"].items():
                print(f"  concurrency {level}: /v1/chat/completions beside the SDK", flush=True)
                results["openai_api"][level] = await loadgen(
                    base | openai_api_reach(worker, sizes["throughput_tokens"])
                    | {"scenario": "peer", "concurrency": level, "rounds": rounds,
                       "tokens": sizes["throughput_tokens"]}
                )  # fmt: skip
            if litellm:
                results["peer"] = await litellm_row(
                    litellm, base, upstream_port, workdir, sizes, results
                )
        finally:
            upstream.terminate()
            upstream.wait(30)
    local = None if sizes.get("openai_api_only") else local_batching(sizes, workdir)
    if local is not None:
        results["local"] = local
    return results


async def litellm_row(
    litellm: str,
    base: dict[str, Any],
    upstream_port: int,
    workdir: Path,
    sizes: dict[str, Any],
    results: dict[str, Any],
) -> dict[str, Any]:
    """LiteLLM's proxy beside the worker and the SDK at 10 jobs at once."""
    print("  peer: LiteLLM's proxy", flush=True)
    proxy, reach = await asyncio.to_thread(
        litellm_peer, litellm, upstream_port, workdir, sizes["throughput_tokens"]
    )
    try:
        measured = await loadgen(
            base
            | reach
            | {
                "scenario": "peer",
                "concurrency": 10,
                "rounds": 20,
                "tokens": sizes["throughput_tokens"],
            }
        )
    finally:
        proxy.terminate()
        proxy.wait(30)
    worker_ttft = results["ttft"][10]
    direct = measured["direct"]
    return {
        "LiteLLM proxy": measured["peer"] | {"added_p50": measured["peer"]["p50"] - direct["p50"]},
        "LLM Worker": {
            "p50": worker_ttft["worker_ms"]["p50"],
            "p99": worker_ttft["worker_ms"]["p99"],
            "added_p50": worker_ttft["worker_ms"]["p50"] - worker_ttft["direct_ms"]["p50"],
            "throughput": results["throughput"][10]["worker"],
        },
        "direct (openai SDK)": direct | {"added_p50": 0.0},
    }


def openai_api_reach(worker: WorkerProcess, tokens: int) -> dict[str, Any]:
    """The worker's OpenAI API as the ``peer`` scenario's proxy: the SDK streaming
    ``/v1/chat/completions`` through the worker, beside the SDK talking to the model
    server itself, the same models by name (a bare name runs on the ``openai`` provider)."""
    return {
        "peer_base_url": f"http://127.0.0.1:{worker.port}/v1",
        "peer_key": "unused",
        "peer_models": {
            "ttft": "fake:tokens=5,delay=0.0,first_delay=0.0",
            "throughput": f"fake:tokens={tokens},delay=0.0,first_delay=0.0",
        },
    }


def local_batching(sizes: dict[str, Any], workdir: Path) -> dict[str, Any] | None:
    """The local provider's benchmark, in a process of its own (it sets torch's threads)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        print("  local models: skipped (install llm-worker[local])", flush=True)
        return None
    print("  local models: batching", flush=True)
    out = workdir / "local.json"
    command = [sys.executable, str(HERE / "local_batching.py"), "--json", str(out)]
    subprocess.run(
        [*command, *sizes.get("local_args", [])],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    return json.loads(out.read_text())


def table(results: dict[str, Any]) -> str:
    s, f = results["scale"], results["fanout"]
    return "\n".join(
        [
            "time to first token, ms: worker = `add` sent -> first token; direct = the SDK's",
            "chat.completions.create(); lean = the SDK used as the worker uses it",
            ttft_table(results).text(),
            "",
            "throughput, tokens/s delivered to clients",
            throughput_table(results).text(),
            "",
            f"scale: RSS per idle connection {s['per_idle_connection_kib']:.1f} KiB, "
            f"per running job {s['per_running_job_kib']:.1f} KiB, errors {s['errors']}",
            f"fan-out: one job, {f.get('listeners', '?')} listeners: "
            f"{f['tokens_per_second']:,.0f} tokens/s delivered",
        ]
    )


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [int(level) for level in results["ttft"]]
    fig, (latency, speed) = plt.subplots(1, 2, figsize=(11, 4.2))
    for side, style in (("worker", "-o"), ("direct", "--s"), ("lean", ":^")):
        for q, alpha in (("p50", 1.0), ("p99", 0.45)):
            values = [r[f"{side}_ms"][q] for r in results["ttft"].values()]
            latency.plot(levels, values, style, alpha=alpha, label=f"{side} {q}")
    latency.set(
        xscale="log",
        yscale="log",
        xlabel="jobs at once",
        ylabel="time to first token (ms)",
        title="Time to first token",
    )
    latency.legend()
    sides = (("worker", "-o"), ("direct", "--s"), ("lean", ":^"), ("upstream", "-.x"))
    for side, style in sides:
        values = [r[side] for r in results["throughput"].values()]
        label = "upstream ceiling" if side == "upstream" else side
        speed.plot(levels, values, style, label=label)
    speed.set(
        xscale="log",
        yscale="log",
        xlabel="jobs at once",
        ylabel="tokens/s delivered",
        title="Throughput",
    )
    speed.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--docs", action="store_true", help="also write BENCHMARKS.md")
    parser.add_argument(
        "--openai-api",
        action="store_true",
        help="only the row of /v1/chat/completions beside the SDK (full sizes), printed",
    )
    parser.add_argument(
        "--litellm",
        nargs="?",
        const=shutil.which("litellm") or "litellm",
        help="add LiteLLM's proxy (the litellm command, or its path) as a peer row",
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: write BENCHMARKS.md from a results.json",
    )
    args = parser.parse_args()
    if args.report_only:
        report = json.loads(args.report_only.read_text())
        chart(report["results"], args.out / "benchmarks.png")
        write_benchmarks_md(report, ROOT / "BENCHMARKS.md", args.out / "benchmarks.png")
        return
    sizes = SMOKE if args.smoke else FULL
    if args.openai_api:
        with tempfile.TemporaryDirectory() as workdir:
            sizes = {**sizes, "openai_api_only": True}
            results = asyncio.run(run(sizes, Path(workdir)))
        print(openai_api_table(results).text())
        return
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"benchmark ({'smoke' if args.smoke else 'full'} sizes)", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        results = asyncio.run(run(sizes, Path(workdir), args.litellm))
    results["fanout"]["listeners"] = sizes["fanout"]["listeners"]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "sizes": sizes,
        "results": results,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    chart(results, args.out / "benchmarks.png")
    print()
    print(table(results))
    if "local" in results:
        print()
        print(summary(results["local"]))
    if (peers := peer_table(results)) is not None:
        print()
        print(peers.text())
    if results.get("openai_api"):
        print()
        print(openai_api_table(results).text())
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'benchmarks.png'}")
    if args.docs:
        write_benchmarks_md(report, ROOT / "BENCHMARKS.md", args.out / "benchmarks.png")


if __name__ == "__main__":
    main()
