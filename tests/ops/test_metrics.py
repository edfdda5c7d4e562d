"""/metrics scraped after real jobs: the figures match what the jobs did."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_worker.jobs.model import has_text
from llm_worker.ops.metrics import MAX_LABEL_CHARS, MAX_MODELS, OTHER, KnownLabel, Metrics, Readings
from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.testing.redis_server import RedisServer, free_port, unique_prefix
from tests.conftest import RunningWorker, StartWorker
from tests.support.wsclient import TERMINAL, WSClient, assistant, text_of

TOKENS = [f" t{i}" for i in range(10)]
ROOT = Path(__file__).resolve().parents[2]
ADDED_LATENCY = "llm_worker_added_latency_seconds"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def promtool_lint(text: str) -> str:
    """What ``promtool check metrics`` says of a scrape: nothing when it is clean (its
    exit status is folded in, so that a lint warning counts as much as an error)."""
    found = shutil.which("promtool") or shutil.which("promtool", path=Path(sys.prefix) / "bin")
    if found is None:
        pytest.fail("promtool is missing: ./run_tests.sh takes it from Debian's package")
    result = subprocess.run(
        [found, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    said = (result.stdout + result.stderr).decode().strip()
    return said if result.returncode == 0 else f"exit status {result.returncode}: {said}"


def replies(body: dict[str, Any]) -> Reply:
    query = body["messages"][-1]["content"]
    if query == "fail":
        return Reply(status=400, error="no such model")
    if query == "slow":
        return Reply(tokens=TOKENS * 100, delay=0.05)
    return Reply(tokens=TOKENS, delay=0.001)


async def test_metrics_count_what_the_jobs_did(
    start_worker: StartWorker, upstream: OpenAIServer, tmp_path: Path
) -> None:
    upstream.handler = replies
    # The deployment knows the model its clients use: it gets a label of its own.
    worker = await start_worker(
        store_url=f"sqlite:///{tmp_path}/jobs.db", metrics_models="gpt-test"
    )
    async with (
        WSClient(worker.ws_url) as client,
        httpx.AsyncClient(base_url=worker.http_url) as http,
    ):
        done = [await client.add(query="hello") for _ in range(3)]
        failed = await client.add(query="fail")
        slow = await client.add(query="slow")
        for job_id in done:
            messages = await client.job_messages(job_id)
            assert text_of(messages) == "".join(TOKENS)
        assert (await client.job_messages(failed))[-1]["type"] == "failed"
        while not (await client.wait_for("running", slow))["message"]:
            pass  # until it has said something
        await client.send({"type": "cancel", "job_id": slow})
        assert (await client.job_messages(slow))[-1]["type"] == "cancelled"
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        scraped = samples(response.text)
    # Prometheus' own linter finds nothing to say of it (names, help, units, types).
    assert promtool_lint(response.text) == ""

    assert value(scraped, "llm_worker_jobs_added_total", tenant="anonymous") == 5
    finished = "llm_worker_jobs_finished_total"
    common = {"provider": "openai", "model": "gpt-test", "tenant": "anonymous"}
    assert value(scraped, finished, outcome="done", **common) == 3
    assert value(scraped, finished, outcome="failed", **common) == 1
    assert value(scraped, finished, outcome="cancelled", **common) == 1
    # Every job started: five waits in the queue, five durations by outcome.
    assert value(scraped, "llm_worker_queue_wait_seconds_count") == 5
    for outcome, count in (("done", 3), ("failed", 1), ("cancelled", 1)):
        assert value(scraped, "llm_worker_job_duration_seconds_count", outcome=outcome) == count
    # Five model calls, four of which said something; the failure is an HTTP 400.
    model = {"provider": "openai", "model": "gpt-test"}
    assert value(scraped, "llm_worker_provider_calls_total", provider="openai") == 5
    assert value(scraped, "llm_worker_time_to_first_token_seconds_count", **model) == 4
    assert value(scraped, "llm_worker_time_per_output_token_seconds_count", **model) == 3
    assert (
        value(scraped, "llm_worker_provider_errors_total", provider="openai", kind="http_4xx") == 1
    )
    assert value(scraped, "llm_worker_provider_retries_total", provider="openai") == 0
    # The first frame of each job that had text reached its listener after its delta.
    assert value(scraped, "llm_worker_added_latency_seconds_count") == 4
    assert value(scraped, "llm_worker_jobs_queued") == 0
    assert value(scraped, "llm_worker_jobs_running") == 0
    assert value(scraped, "llm_worker_connections") == 1
    # The SQLite store commits in rounds; each took some time.
    assert value(scraped, "llm_worker_store_commit_seconds_count") >= 1


def test_model_labels_are_the_deployments_own_and_bounded() -> None:
    known = [f"model-{i:03}" for i in range(MAX_MODELS + 10)] + ["x" * (MAX_LABEL_CHARS + 1)]
    label = KnownLabel(known)
    assert len(label.known) == MAX_MODELS
    assert all(label(name) == name for name in label.known)
    assert label("x" * (MAX_LABEL_CHARS + 1)) == OTHER  # too long to be a label
    assert label("made-up-by-a-client") == OTHER  # and it takes no slot
    assert label("model-000") == "model-000"


async def test_a_worker_process_serves_metrics_on_metrics_port(
    upstream: OpenAIServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    upstream.handler = replies
    metrics_port = free_port()
    env = clean_env(
        LISTEN_PORT="0", STORE_URL=redis_server.url, REDIS_PREFIX=unique_prefix(),
        OPENAI_API_KEY="k", OPENAI_BASE_URL=upstream.base_url, METRICS_MODELS="gpt-test",
    )  # fmt: skip
    async with processes() as started:
        gateway = await WorkerProcess.start(env, tmp_path, role="gateway")
        started.append(gateway)
        worker = await WorkerProcess.start(
            env | {"METRICS_PORT": str(metrics_port)}, tmp_path, role="worker"
        )
        started.append(worker)
        async with WSClient(gateway.ws_url) as client:
            job_id = await client.add(query="hello")
            assert (await client.job_messages(job_id))[-1]["type"] == "done"
        async with httpx.AsyncClient() as http:
            scraped: dict[Any, float] = {}
            for _ in range(100):  # the worker's last event and its count land together
                response = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
                scraped = samples(response.text)
                if value(scraped, "llm_worker_job_duration_seconds_count", outcome="done"):
                    break
                await asyncio.sleep(0.05)
            gateway_metrics = await http.get(f"http://127.0.0.1:{gateway.port}/metrics")
            from_gateway = samples(gateway_metrics.text)
    assert promtool_lint(response.text) == ""
    assert promtool_lint(gateway_metrics.text) == ""
    assert value(scraped, "llm_worker_job_duration_seconds_count", outcome="done") == 1
    assert (
        value(
            scraped,
            "llm_worker_time_to_first_token_seconds_count",
            provider="openai",
            model="gpt-test",
        )
        == 1
    )
    assert value(from_gateway, "llm_worker_jobs_added_total", tenant="anonymous") == 1
    assert value(from_gateway, "llm_worker_connections") == 0


# -- the latency the worker adds: only listeners there before the text count ----


def added_latency(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> tuple[float, ...]:
    return value(scraped, f"{ADDED_LATENCY}_count"), value(scraped, f"{ADDED_LATENCY}_sum")


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    return samples(response.text)


async def stored(worker: RunningWorker, job_id: str, until: str) -> None:
    """Waits until the job's first text (``until="text"``) or its end is in the store,
    read from the store itself: no listener of the gateway sees it."""
    async with contextlib.aclosing(worker.app.state.store.follow(job_id)) as batches:
        async for batch in batches:
            if until == "text" and has_text(batch):
                return
            if batch[-1].kind.terminal:
                assert until == "end", f"the job ended before its first text: {batch}"
                return


async def sse_until_text(http: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    """An event stream's events, read until the first that carries text."""
    seen: list[dict[str, Any]] = []
    async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line.removeprefix("data: ")))
                if seen[-1]["type"] in TERMINAL or seen[-1].get("message"):
                    return seen
    raise AssertionError(f"the stream ended without text: {seen}")


def http_job(query: str) -> dict[str, Any]:
    return {"query": query, "assistant": assistant()}


async def test_added_latency_is_measured_for_listeners_there_before_the_text(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    # Each reply waits for its gate, so that the listener is surely there before any text.
    gates = {"ws": asyncio.Event(), "sse": asyncio.Event()}

    async def gated(body: dict[str, Any]) -> Reply:
        await gates[body["messages"][-1]["content"]].wait()
        return Reply(tokens=TOKENS, delay=0.001)

    upstream.handler = gated
    worker = await start_worker()
    async with (
        WSClient(worker.ws_url) as client,
        httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http,
    ):
        job_id = await client.add(query="ws")
        assert not (await client.wait_for("running", job_id))["message"]
        gates["ws"].set()
        assert text_of(await client.job_messages(job_id)) == "".join(TOKENS)
        count, total = added_latency(await scrape(http))
        assert count == 1
        assert 0 <= total < 1  # a loopback hop, not a wait

        job_id = (await http.post("/v1/jobs", json=http_job("sse"))).json()["job_id"]
        async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):
                    first = json.loads(line.removeprefix("data: "))
                    if first["type"] == "running":
                        break
            assert not first["message"]  # following it, and no text yet
            gates["sse"].set()
            text = [json.loads(line[6:]) async for line in lines if line.startswith("data: ")]
        assert text[-1]["type"] == "done"
        count, total = added_latency(await scrape(http))
        assert count == 2
        assert 0 <= total < 2


async def test_a_listener_that_came_after_the_text_leaves_added_latency_unchanged(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = lambda body: Reply(
        tokens=TOKENS * 40 if body["messages"][-1]["content"] == "slow" else TOKENS,
        delay=0.01 if body["messages"][-1]["content"] == "slow" else 0.0,
    )
    worker = await start_worker()
    async with (
        WSClient(worker.ws_url) as client,
        httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http,
    ):
        # Nobody listens while it runs: the first to listen comes after its done.
        finished = (await http.post("/v1/jobs", json=http_job("hello"))).json()["job_id"]
        await stored(worker, finished, until="end")
        await client.send({"type": "listen", "job_id": finished})
        messages = await client.job_messages(finished)
        assert text_of(messages) == "".join(TOKENS)
        assert messages[-1]["type"] == "done"
        assert (await sse_until_text(http, finished))[-1]["message"]
        assert added_latency(await scrape(http)) == (0, 0)

        # Mid-job: the listeners come once its first text is stored, while more comes.
        running = (await http.post("/v1/jobs", json=http_job("slow"))).json()["job_id"]
        await stored(worker, running, until="text")
        await client.send({"type": "listen", "job_id": running})
        caught_up = await client.first_of({"running", *TERMINAL}, running)
        while caught_up["type"] == "running" and not caught_up["message"]:  # its start
            caught_up = await client.first_of({"running", *TERMINAL}, running)
        assert caught_up["type"] == "running"  # text, and the job goes on
        from_sse = await sse_until_text(http, running)
        assert from_sse[-1]["type"] == "running"
        assert from_sse[-1]["message"]
        await client.send({"type": "cancel", "job_id": running})
        assert (await client.job_messages(running))[-1]["type"] == "cancelled"
        assert added_latency(await scrape(http)) == (0, 0)


def test_a_late_listener_leaves_the_first_text_to_those_who_were_there() -> None:
    metrics = Metrics()
    metrics.first_delta("job", at=10.0)
    metrics.first_frame_sent("job", since=10.5, at=11.0)  # came after the text: not counted
    metrics.first_frame_sent("job", since=9.0, at=10.25)  # was there: counted, once
    metrics.first_frame_sent("job", since=9.5, at=10.5)
    scraped = samples(metrics.render(Readings(0, 0, 0, 0, 0, 0)).decode())
    assert added_latency(scraped) == (1, 0.25)


# -- what the README says /metrics holds -----------------------------------------


def test_the_metrics_table_lists_every_family_the_server_exposes() -> None:
    rendered = Metrics().render(Readings(0, 0, 0, 0, 0, 0)).decode()
    # prometheus_client adds a _created gauge beside each counter and histogram.
    exposed = {
        name
        for name in re.findall(r"^# TYPE (\S+) ", rendered, re.MULTILINE)
        if not name.endswith("_created")
    }
    documented: set[str] = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        for row in re.findall(r"^\| (`llm_worker_[^|]+)\|", page.read_text(), re.MULTILINE):
            documented.update(re.findall(r"`(llm_worker_\w+)`", row))
    assert documented == exposed
