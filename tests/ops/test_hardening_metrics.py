"""Issue 21, rows 3 and 11: what a client sends cannot grow /metrics, and /metrics is
not for anyone who reaches the port."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from llm_worker.ops.metrics import MAX_LABEL_CHARS
from llm_worker.server.access import key_hash
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.testing.redis_server import RedisServer, free_port, unique_prefix
from tests.support.servers import make_settings, serve
from tests.support.wsclient import WSClient, assistant

LABEL = re.compile(r'model="([^"]*)"')


def echo_with(model: str) -> dict[str, object]:
    return assistant({"role": "user", "content": "{query}"}, provider="echo", model=model)


async def test_sixty_huge_model_names_cost_a_scrape_nothing_and_take_no_slot() -> None:
    """Row 3: 60 model names of 100,000 characters, then a scrape; before, a 234 MB
    answer, and the 64 label slots were taken for the life of the process."""
    settings = make_settings(echo_provider="on", echo_delay_seconds=0, metrics_models="real-model")
    async with serve(settings) as worker, WSClient(worker.ws_url) as client:
        for number in range(60):
            _, messages = await client.run(
                query="hi", assistant=echo_with(f"{number:02}" + "m" * 100_000)
            )
            assert messages[-1]["type"] == "done"
        _, messages = await client.run(query="hi", assistant=echo_with("real-model"))
        assert messages[-1]["type"] == "done"
        async with httpx.AsyncClient(base_url=worker.http_url) as http:
            scraped = await http.get("/metrics")
    assert scraped.status_code == 200
    assert len(scraped.content) < 100_000
    labels = set(LABEL.findall(scraped.text))
    assert labels == {"real-model", "other"}
    assert max(len(label) for label in labels) <= MAX_LABEL_CHARS
    jobs = re.search(
        r'llm_worker_jobs_finished_total\{[^}]*model="other"[^}]*\} (\d+)', scraped.text
    )
    assert jobs is not None and float(jobs.group(1)) == 60


async def test_a_metrics_key_is_asked_for_when_set() -> None:
    """Row 11: METRICS_KEY keeps /metrics (tenants' names, their models) to its holder."""
    settings = make_settings(metrics_key="scrape-me")
    async with serve(settings) as worker, httpx.AsyncClient(base_url=worker.http_url) as http:
        bare = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"authorization": "Bearer nope"})
        right = await http.get("/metrics", headers={"authorization": "Bearer scrape-me"})
    for refused in (bare, wrong):
        assert refused.status_code == 401
        assert refused.json()["code"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "llm_worker" not in refused.text
    assert right.status_code == 200
    assert "llm_worker_jobs_added_total" in right.text


async def test_with_api_keys_only_an_admin_key_reads_metrics() -> None:
    """Row 11: with keys on and no METRICS_KEY, /metrics is an admin's, not anyone's."""
    settings = make_settings(api_keys="tenant-key,admin-key", admin_keys=key_hash("admin-key"))
    async with serve(settings) as worker, httpx.AsyncClient(base_url=worker.http_url) as http:
        bare = await http.get("/metrics")
        tenant = await http.get("/metrics", headers={"authorization": "Bearer tenant-key"})
        admin = await http.get("/metrics", headers={"authorization": "Bearer admin-key"})
    assert (bare.status_code, bare.json()["code"]) == (401, "unauthorized")
    assert (tenant.status_code, tenant.json()["code"]) == (403, "admin_only")
    assert admin.status_code == 200
    assert "key-" not in bare.text + tenant.text  # no label derived from a key's hash


@pytest.mark.timeout(120)
async def test_a_worker_process_asks_for_the_metrics_key_too(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = clean_env(
        STORE_URL=redis_server.url,
        REDIS_PREFIX=unique_prefix(),
        METRICS_PORT=str(metrics_port),
        METRICS_KEY="scrape-me",
    )
    async with processes() as started:
        started.append(await WorkerProcess.start(env, tmp_path, role="worker"))
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        async with httpx.AsyncClient() as http:
            bare = await http.get(url)
            right = await http.get(url, headers={"authorization": "Bearer scrape-me"})
    assert (bare.status_code, bare.json()["code"]) == (401, "unauthorized")
    assert right.status_code == 200
    assert "llm_worker_jobs_running" in right.text
