"""Black holes between the processes and Redis (a proxy that stops forwarding without
closing, as dropped packets look), with processes started as a user starts them:
``/healthz`` answers at once from what is known, a request while Redis is known to
be away fails fast, and listeners hear of a job whose worker went quiet."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.testing.redis_server import RedisServer, unique_prefix
from llm_worker.wire import errors
from llm_worker.wire.dialects import SEED_TYPES
from tests.support.tcp_proxy import CuttingProxy
from tests.support.wsclient import WSClient, assistant

# Seconds an answer may take that is given at once, on a loaded machine.
AT_ONCE = 1.0


def job(query: str = "hello") -> dict[str, Any]:
    return {"query": query, "assistant": assistant()}


async def until_healthy(
    http: httpx.AsyncClient, workers: int | None = None, timeout: float = 10
) -> httpx.Response:
    """``/healthz`` once it is 200 (counting ``workers``, if given): a gateway hears of
    a new worker within a second."""
    deadline = time.monotonic() + timeout
    while True:
        health = await http.get("/healthz")
        if health.status_code == 200 and workers in (None, health.json()["workers"]):
            return health
        assert time.monotonic() < deadline, health.text
        await asyncio.sleep(0.1)


async def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call
    return response, time.monotonic() - started


async def test_a_black_holed_gateway_answers_healthz_and_adds_at_once(
    upstream: OpenAIServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with CuttingProxy(redis_server.port) as proxy, processes() as started:
        env = clean_env(
            LISTEN_PORT="0",
            STORE_URL=f"redis://127.0.0.1:{proxy.port}",
            REDIS_PREFIX=unique_prefix(),
            OPENAI_API_KEY="k",
            OPENAI_BASE_URL=upstream.base_url,
            REDIS_OUTAGE_GRACE_SECONDS="4",
        )
        gateway = await WorkerProcess.start(env, tmp_path, role="gateway")
        # Its worker reaches Redis directly: only the gateway's link is black-holed.
        worker_env = {**env, "STORE_URL": redis_server.url}
        worker = await WorkerProcess.start(worker_env, tmp_path, role="worker")
        started += [gateway, worker]
        base = f"http://127.0.0.1:{gateway.port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            await until_healthy(http)
            proxy.hold()
            # Every check answers at once, and soon says the store is away.
            deadline = time.monotonic() + 10
            while True:
                health, seconds = await timed(http.get("/healthz"))
                assert seconds < AT_ONCE, (seconds, health.text)
                if health.status_code == 503:
                    break
                assert health.status_code == 200
                assert time.monotonic() < deadline, "the black hole never showed in /healthz"
            assert health.json()["code"] == errors.STORE_UNAVAILABLE
            # Once the outage is known (listeners are told), adding fails fast too.
            await gateway.said("has been unreachable for", timeout=20)
            for _ in range(3):
                added, seconds = await timed(http.post("/v1/jobs", json=job()))
                assert seconds < AT_ONCE, (seconds, added.text)
                assert added.status_code == 503
                assert added.json()["code"] == errors.STORE_UNAVAILABLE
                health, seconds = await timed(http.get("/healthz"))
                assert seconds < AT_ONCE
                assert health.status_code == 503
            # Healed: both work again, and the job runs.
            proxy.release()
            proxy.cut()  # connections that timed out meanwhile are closed by the client
            await gateway.said("Redis is reachable again", timeout=20)
            await until_healthy(http)
            deadline = time.monotonic() + 10
            added = await http.post("/v1/jobs", json=job("after"))
            assert added.status_code == 201, added.text
            job_id = added.json()["job_id"]
            while (await http.get(f"/v1/jobs/{job_id}")).json()["state"] != "done":
                assert time.monotonic() < deadline + 20, "the job added after never ran"


async def test_listeners_hear_when_the_only_worker_goes_quiet_and_healthz_says_so(
    upstream: OpenAIServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    upstream.handler = lambda body: Reply(tokens=[f" t{i}" for i in range(40)], delay=0.25)
    async with CuttingProxy(redis_server.port) as proxy, processes() as started:
        env = clean_env(
            LISTEN_PORT="0",
            STORE_URL=redis_server.url,
            REDIS_PREFIX=unique_prefix(),
            OPENAI_API_KEY="k",
            OPENAI_BASE_URL=upstream.base_url,
            WORKER_HEARTBEAT_TIMEOUT_SECONDS="1.5",
        )
        gateway = await WorkerProcess.start(env, tmp_path, role="gateway")
        # The worker's link to Redis is the one black-holed.
        worker_env = {**env, "STORE_URL": f"redis://127.0.0.1:{proxy.port}"}
        worker = await WorkerProcess.start(worker_env, tmp_path, role="worker")
        started += [gateway, worker]
        base = f"http://127.0.0.1:{gateway.port}"
        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as http,
            WSClient(gateway.ws_url) as full,
            WSClient(gateway.ws_url, seed=True) as seed,
        ):
            ids = [await full.add(query=f"job{i}") for i in range(5)]
            for job_id in ids:
                await seed.send({"type": "listen", "job_id": job_id})
                await full.wait_for("running", job_id)
            # And one followed as Server-Sent Events: a full-protocol listener too.
            over_sse = asyncio.create_task(event_stream(http, ids[0]))
            await until_healthy(http, workers=1)
            proxy.hold()
            held_at = time.monotonic()
            # Each followed job's full-dialect listeners are told, within seconds.
            told = set()
            while told != set(ids):
                notice = await full.wait_for("error", timeout=15)
                assert "has not been heard from" in notice["message"], notice
                assert notice["code"] == "worker_quiet"
                told.add(notice["ref"])
            assert time.monotonic() - held_at < 10
            # /healthz, answering at once, says so too (after 5 s without a live one).
            while True:
                health, seconds = await timed(http.get("/healthz"))
                assert seconds < AT_ONCE
                if health.status_code == 503:
                    break
                assert time.monotonic() - held_at < 20, health.text
                await asyncio.sleep(0.2)
            assert health.json()["code"] == errors.NO_WORKERS
            assert health.json()["workers"] == 0
            # Healed: the jobs go on to their ends, every listener's.
            proxy.release()
            proxy.cut()
            for job_id in ids:
                messages = await full.job_messages(job_id, timeout=60)
                assert messages[-1]["type"] == "done", messages[-3:]
                seed_messages = await seed.job_messages(job_id, timeout=60)
                assert {m["type"] for m in seed_messages} <= SEED_TYPES
                assert seed_messages[-1]["type"] == "done"
            events = await asyncio.wait_for(over_sse, 60)
            notices = [e for e in events if e["type"] == "error"]
            assert [(e["code"], e["ref"]) for e in notices] == [("worker_quiet", ids[0])]
            assert events[-1]["type"] == "done"
            await until_healthy(http, workers=1)


async def event_stream(http: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    """The frames of a job's event stream, as they came, to its end."""
    async with http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=90) as response:
        assert response.status_code == 200
        return [
            json.loads(line.removeprefix("data: "))
            async for line in response.aiter_lines()
            if line.startswith("data: ")
        ]
