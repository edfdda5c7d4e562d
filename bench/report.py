"""Writes BENCHMARKS.md from a benchmark run (``bench/run.py --docs``)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from local_batching import local_table
from tables import Column, Table

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BASELINE = DOCS / "benchmarks-baseline.json"

TARGETS = """\
| target (2-core machine) | measured | |
|---|---|---|
| added time to first token, p50, 10 jobs at once: <= 1 ms | {ttft10_p50:+.2f} ms | {ok1} |
| added time to first token, p99, 10 jobs at once: <= 5 ms | {ttft10_p99:+.2f} ms | {ok2} |
| throughput at 100 jobs at once: >= 0.8 of direct | {ratio100:.2f} | {ok3} |
| RSS per idle connection: <= 64 KiB | {idle:.1f} KiB | {ok4} |
"""


def _ok(passed: bool) -> str:
    return "met" if passed else "**missed**"


def ttft_table(results: dict[str, Any]) -> Table:
    """Time to first token, ms, by how many jobs run at once."""
    table = Table(
        [
            "jobs at once", "worker p50", "direct p50", "lean p50",
            Column("added p50", key=True), "vs lean p50",
            "worker p99", "direct p99", "lean p99",
            Column("added p99", key=True), "vs lean p99",
        ]
    )  # fmt: skip
    for level, r in results["ttft"].items():
        w, d, n = r["worker_ms"], r["direct_ms"], r["lean_ms"]
        table.add(
            level,
            f"{w['p50']:.2f}", f"{d['p50']:.2f}", f"{n['p50']:.2f}",
            f"{w['p50'] - d['p50']:+.2f}", f"{w['p50'] - n['p50']:+.2f}",
            f"{w['p99']:.2f}", f"{d['p99']:.2f}", f"{n['p99']:.2f}",
            f"{w['p99'] - d['p99']:+.2f}", f"{w['p99'] - n['p99']:+.2f}",
        )  # fmt: skip
    return table


def throughput_table(results: dict[str, Any]) -> Table:
    """Tokens/s delivered to clients, by how many jobs run at once."""
    table = Table(
        [
            "jobs at once", "worker", "direct", Column("worker / direct", key=True),
            "lean", "worker / lean", "upstream ceiling",
        ]
    )  # fmt: skip
    for level, r in results["throughput"].items():
        table.add(
            level, f"{r['worker']:,.0f}", f"{r['direct']:,.0f}",
            f"{r['worker'] / r['direct']:.2f}", f"{r['lean']:,.0f}",
            f"{r['worker'] / r['lean']:.2f}", f"{r['upstream']:,.0f}",
        )  # fmt: skip
    return table


def openai_api_table(results: dict[str, Any]) -> Table:
    """The SDK streaming ``/v1/chat/completions`` through the worker beside the SDK
    talking to the model server itself, interleaved rounds."""
    table = Table(
        [
            "jobs at once", "direct TTFT p50", "through the worker p50",
            Column("added p50", key=True), "added p99", "direct tokens/s",
            "through the worker tokens/s", Column("worker / direct", key=True),
        ]
    )  # fmt: skip
    for level, r in results["openai_api"].items():
        direct, door = r["direct"], r["peer"]
        table.add(
            level, f"{direct['p50']:.2f} ms", f"{door['p50']:.2f} ms",
            f"{door['p50'] - direct['p50']:+.2f} ms", f"{door['p99'] - direct['p99']:+.2f} ms",
            f"{direct['throughput']:,.0f}", f"{door['throughput']:,.0f}",
            f"{door['throughput'] / direct['throughput']:.2f}",
        )  # fmt: skip
    return table


def peer_table(results: dict[str, Any]) -> Table | None:
    """The worker beside its peers at 10 jobs at once, when peers were measured."""
    peer = results.get("peer")
    if not peer:
        return None
    table = Table(
        ["10 jobs at once", "time to first token p50", "p99", "added p50 vs direct", "tokens/s"]
    )
    for name, r in peer.items():
        table.add(
            name, f"{r['p50']:.2f} ms", f"{r['p99']:.2f} ms", f"{r['added_p50']:+.2f} ms",
            f"{r['throughput']:,.0f}",
        )  # fmt: skip
    return table


def _peer(results: dict[str, Any]) -> str:
    table = peer_table(results)
    if table is None:
        return (
            "Not measured in this run: `./run_bench.sh --litellm` adds LiteLLM's proxy against "
            "the same upstream, where `pip install 'litellm[proxy]'` works."
        )
    return table.markdown()


def _local(results: dict[str, Any], report_date: str = "") -> str:
    local = results.get("local")
    if not local:
        return "Not measured in this run (install `llm-worker[local]`)."
    lag = local["event_loop_lag_during_16"]
    return "\n".join(
        [
            f"{local['prompts']} prompts of different lengths, {local['tokens_per_prompt']} "
            f"greedy tokens each, a random-weight Llama of "
            f"{local['model']['parameters'] / 1e6:.1f} M parameters (float32, CPU; torch "
            f"threads: {local['torch_threads']['provider']}):",
            "",
            local_table(local).markdown(),
            "",
            *(
                [
                    f"Measured on {local['date']}, apart from the tables above (the machine "
                    "then ran `generate()` several times slower): compare the rows with each "
                    "other, not with those tables.",
                    "",
                ]
                if "date" in local and local["date"] != report_date
                else []
            ),
            f"Greedy outputs identical to sequential `generate()`: "
            f"{'yes' if local['greedy_outputs_equal_sequential'] else '**no**'}. While 16 jobs "
            f"generate, the event loop's timers fire late by {lag['p50_ms']:.2f} ms (p50), "
            f"{lag['p99_ms']:.2f} ms (p99), {lag['max_ms']:.2f} ms at most.",
        ]
    )


def _baseline(results: dict[str, Any]) -> str:
    if not BASELINE.exists():
        return ""
    before = json.loads(BASELINE.read_text())["results"]
    rows = [
        "| | before | after |",
        "|---|---|---|",
    ]
    for level in ("1", "10"):
        if level in before["ttft"] and level in results["ttft"]:
            b, a = before["ttft"][level], results["ttft"][level]
            rows.append(
                f"| added time to first token p50 / p99, {level} job(s) at once "
                f"| {b['worker_ms']['p50'] - b['direct_ms']['p50']:+.2f} / "
                f"{b['worker_ms']['p99'] - b['direct_ms']['p99']:+.2f} ms "
                f"| {a['worker_ms']['p50'] - a['direct_ms']['p50']:+.2f} / "
                f"{a['worker_ms']['p99'] - a['direct_ms']['p99']:+.2f} ms |"
            )
    for level in ("10", "100"):
        if level in before["throughput"] and level in results["throughput"]:
            b, a = before["throughput"][level], results["throughput"][level]
            rows.append(
                f"| tokens/s, {level} jobs at once (worker / direct) "
                f"| {b['worker']:,.0f} ({b['worker'] / b['direct']:.2f}) "
                f"| {a['worker']:,.0f} ({a['worker'] / a['direct']:.2f}) |"
            )
    fanout_before = before["fanout"]["tokens_per_second"]
    rows.append(
        f"| fan-out, one job to 100 listeners, tokens/s | {fanout_before:,.0f} "
        f"| {results['fanout']['tokens_per_second']:,.0f} |"
    )
    return "\n".join(rows)


def write_benchmarks_md(report: dict[str, Any], path: Path, chart: Path) -> None:
    # As results.json holds it: a fresh run's levels are ints until they pass through JSON.
    report = json.loads(json.dumps(report))
    DOCS.mkdir(exist_ok=True)
    shutil.copy(chart, DOCS / "benchmarks.png")
    (DOCS / "benchmarks.json").write_text(json.dumps(report, indent=2))
    machine = report["machine"]
    results = report["results"]
    ttft1 = results["ttft"]["1"]
    ttft10 = results["ttft"]["10"]
    through100 = results["throughput"]["100"]
    scale = results["scale"]
    targets = TARGETS.format(
        ttft10_p50=ttft10["worker_ms"]["p50"] - ttft10["direct_ms"]["p50"],
        ttft10_p99=ttft10["worker_ms"]["p99"] - ttft10["direct_ms"]["p99"],
        ratio100=through100["worker"] / through100["direct"],
        idle=scale["per_idle_connection_kib"],
        ok1=_ok(ttft10["worker_ms"]["p50"] - ttft10["direct_ms"]["p50"] <= 1),
        ok2=_ok(ttft10["worker_ms"]["p99"] - ttft10["direct_ms"]["p99"] <= 5),
        ok3=_ok(through100["worker"] / through100["direct"] >= 0.8),
        ok4=_ok(scale["per_idle_connection_kib"] <= 64),
    )
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    template = (Path(__file__).parent / "BENCHMARKS.template.md").read_text()
    text = template.format(
        date=report.get("date", time.strftime("%Y-%m-%d")),
        cpu=machine["cpu"],
        cores=machine["cores"],
        memory=machine["memory_gib"],
        system=machine["system"],
        python=machine["python"],
        packages=packages,
        targets=targets,
        ttft=ttft_table(results).markdown(),
        throughput=throughput_table(results).markdown(),
        openai_api=openai_api_table(results).markdown()
        if results.get("openai_api")
        else "(not measured in this run)",
        idle=scale["per_idle_connection_kib"],
        per_job=scale["per_running_job_kib"],
        idle_count=report["sizes"]["scale"]["idle"],
        job_count=report["sizes"]["scale"]["jobs"],
        errors=scale["errors"],
        fanout=results["fanout"]["tokens_per_second"],
        listeners=report["sizes"]["fanout"]["listeners"],
        fanout_tokens=report["sizes"]["fanout"]["tokens"],
        peer=_peer(results),
        local=_local(results, report.get("date", "")),
        lean1_p50=ttft1["worker_ms"]["p50"] - ttft1["lean_ms"]["p50"],
        lean1_p99=ttft1["worker_ms"]["p99"] - ttft1["lean_ms"]["p99"],
        lean10_p50=ttft10["worker_ms"]["p50"] - ttft10["lean_ms"]["p50"],
        lean10_p99=ttft10["worker_ms"]["p99"] - ttft10["lean_ms"]["p99"],
        baseline=_baseline(results),
    )
    path.write_text(text)
    print(f"wrote {path}, {DOCS / 'benchmarks.png'} and {DOCS / 'benchmarks.json'}")
