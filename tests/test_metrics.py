"""/metrics scraped after real jobs: the figures match what the jobs did."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llm_worker.metrics import MAX_MODELS, OTHER, BoundedLabel
from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.testing.redis_server import RedisServer, free_port, unique_prefix
from tests.conftest import StartWorker
from tests.wsclient import WSClient, text_of

TOKENS = [f" t{i}" for i in range(10)]


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
    worker = await start_worker(store_url=f"sqlite:///{tmp_path}/jobs.db")
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


def test_model_labels_are_bounded() -> None:
    label = BoundedLabel(MAX_MODELS)
    names = [label(f"model-{i}") for i in range(MAX_MODELS + 10)]
    assert names[:MAX_MODELS] == [f"model-{i}" for i in range(MAX_MODELS)]
    assert set(names[MAX_MODELS:]) == {OTHER}
    assert label("model-0") == "model-0"  # those seen keep their name


async def test_a_worker_process_serves_metrics_on_metrics_port(
    upstream: OpenAIServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    upstream.handler = replies
    metrics_port = free_port()
    env = clean_env(
        LISTEN_PORT="0", STORE_URL=redis_server.url, REDIS_PREFIX=unique_prefix(),
        OPENAI_API_KEY="k", OPENAI_BASE_URL=upstream.base_url,
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
