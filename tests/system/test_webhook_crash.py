"""Webhooks outlive their worker: ``kill -9`` between a job's end and its webhook's
delivery, and the worker started again on the same store delivers it, with the same
``webhook-id``; on SQLite and on Redis. Several workers on one Redis deliver each
webhook once."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks import Webhook

from llm_worker.testing.openai_server import OpenAIServer
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.testing.redis_server import RedisServer, unique_prefix
from tests.support.stores import store_settings
from tests.support.webhook_receiver import Receiver, receiving
from tests.support.wsclient import assistant

SECRET = "whsec_" + base64.b64encode(b"crash-test-secret-of-32-bytes!!!").decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["sqlite", "redis"])
def env(request: pytest.FixtureRequest, upstream: OpenAIServer) -> dict[str, str]:
    store = store_settings(request, request.param)
    return clean_env(
        LISTEN_PORT="0",
        OPENAI_API_KEY="k",
        OPENAI_BASE_URL=upstream.base_url,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_ALLOW_PRIVATE_TARGETS="1",
        # After the first attempt fails, the next waits long enough for the kill.
        WEBHOOK_RETRY_SCHEDULE="3,0.3,0.3",
        WORKER_HEARTBEAT_TIMEOUT_SECONDS="1.5",
        **store,
    )


async def webhook_of(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    reply = await http.get(f"/v1/jobs/{job_id}")
    assert reply.status_code == 200, reply.text
    return dict(reply.json().get("webhook") or {})


async def until(http: httpx.AsyncClient, job_id: str, check: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while not check(shown := await webhook_of(http, job_id)):
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.05)
    return shown


async def test_kill_9_between_a_job_s_end_and_its_delivery(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()  # nobody listens there yet: the first attempt fails
    url = f"http://127.0.0.1:{port}/hook"
    async with processes() as started:
        first = await WorkerProcess.start(env, tmp_path)
        started.append(first)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.port}") as http:
            body = {"query": "remember me", "assistant": assistant(), "webhook": url}
            job_id = (await http.post("/v1/jobs", json=body)).json()["job_id"]
            before = await until(http, job_id, lambda shown: shown.get("attempts") == 1)
        assert before["state"] == "due" and before["last_status"] is None
        assert before["next_attempt_at"] > time.time()
        first.kill()
        await first.process.wait()

        async with receiving(Receiver(), port=port) as receiver:
            second = await WorkerProcess.start(env, tmp_path)
            started.append(second)
            (delivery,) = await receiver.wait_for(1, timeout=20)
            payload = Webhook(SECRET).verify(delivery.body, delivery.headers)
            assert delivery.headers["webhook-id"] == before["webhook_id"]
            assert payload["data"]["job_id"] == job_id
            assert payload["data"]["output"] == "Echo: remember me"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{second.port}") as http:
                after = await until(http, job_id, lambda shown: shown["state"] == "delivered")
            assert (after["attempts"], after["last_status"]) == (2, 200)
            await asyncio.sleep(0.5)
            assert len(receiver.received) == 1


async def test_several_workers_on_redis_deliver_each_webhook_once(
    redis_server: RedisServer, upstream: OpenAIServer, tmp_path: Path
) -> None:
    env = clean_env(
        LISTEN_PORT="0",
        STORE_URL=redis_server.url,
        REDIS_PREFIX=unique_prefix(),
        OPENAI_API_KEY="k",
        OPENAI_BASE_URL=upstream.base_url,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_ALLOW_PRIVATE_TARGETS="1",
        WEBHOOK_RETRY_SCHEDULE="0.2",
    )
    async with processes() as started, receiving(Receiver(fail_each_once=True)) as receiver:
        for _ in range(3):
            started.append(await WorkerProcess.start(env, tmp_path))
        bodies = [{"query": f"job {n}", "assistant": assistant()} for n in range(10)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{started[0].port}") as http:
            for body in bodies:
                reply = await http.post("/v1/jobs", json={**body, "webhook": receiver.url})
                assert reply.status_code == 201
        # Ten failed first attempts (500), then ten delivered second attempts.
        try:
            received = await receiver.wait_for(20, timeout=20)
        except TimeoutError:
            raise AssertionError(
                f"{len(receiver.received)} arrived\n" + "\n".join(p.output for p in started)
            ) from None
        await asyncio.sleep(1.0)
        assert len(receiver.received) == 20
        by_id: dict[str, int] = {}
        for delivery in received:
            by_id[delivery.headers["webhook-id"]] = by_id.get(delivery.headers["webhook-id"], 0) + 1
        assert sorted(by_id.values()) == [2] * 10
        jobs = {orjson.loads(d.body)["data"]["job_id"] for d in received}
        assert len(jobs) == 10
