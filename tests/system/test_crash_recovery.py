"""Crashes and outages, with processes started as a user starts them: ``kill -9`` of a
worker on SQLite and on Redis, two gateways and two workers sharing Redis, and Redis
itself restarting under running jobs."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from llm_worker.testing.openai_server import OpenAIServer, RecordedRequest
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.testing.redis_cluster import RedisCluster
from llm_worker.testing.redis_server import RedisServer, unique_prefix
from llm_worker.wire.dialects import INTERRUPTED, SEED_TYPES
from tests.support.histories import Echo
from tests.support.wsclient import WSClient, text_of

ECHO = Echo(tokens=20)


def text_after_last_reset(messages: list[dict[str, Any]]) -> str:
    """What a client shows: a reset voids what came before it."""
    text = ""
    for message in messages:
        if message["type"] == "reset":
            text = ""
        elif message["type"] == "running":
            text += message["message"]
    return text


async def until_closed(client: WSClient) -> list[dict[str, Any]]:
    """Every message until the connection drops."""
    messages = list(client.backlog)
    client.backlog.clear()
    try:
        while True:
            messages.append(await client.recv(timeout=5))
    except websockets.ConnectionClosed:
        return messages


def assert_in_order(messages: list[dict[str, Any]]) -> None:
    seqs = [m["seq"] for m in messages if "seq" in m]
    assert seqs == sorted(set(seqs)), seqs


async def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def streaming(upstream: OpenAIServer, count: int, tokens: int = 3) -> bool:
    """Whether ``count`` replies are under way with a few tokens out."""
    live = [r for r in upstream.chat_requests if r.tokens_sent >= tokens and r.ended_at is None]
    return len(live) >= count


def requests_by_query(upstream: OpenAIServer) -> dict[str, list[RecordedRequest]]:
    by_query: dict[str, list[RecordedRequest]] = {}
    for request in upstream.chat_requests:
        by_query.setdefault(request.body["messages"][-1]["content"], []).append(request)
    return by_query


def assert_never_twice_at_once(upstream: OpenAIServer) -> None:
    """No job had two replies streaming at the same time."""
    for query, requests in requests_by_query(upstream).items():
        ordered = sorted(requests, key=lambda r: r.received_at)
        for earlier, later in itertools.pairwise(ordered):
            assert earlier.ended_at is not None, query
            assert earlier.ended_at <= later.received_at, f"{query} ran twice at once"


async def test_sqlite_kill_9_mid_stream_then_restart_finishes_every_job(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    upstream.handler = ECHO.replies(0.05)
    env = clean_env(
        LISTEN_PORT="0",
        STORE_URL="sqlite:///jobs.db",
        OPENAI_API_KEY="k",
        OPENAI_BASE_URL=upstream.base_url,
        # Deltas wait long for their commit: the kill loses some that listeners saw.
        SQLITE_FLUSH_MS="1000",
    )
    queries = [f"job{i}" for i in range(12)]
    async with processes() as started:
        first = await WorkerProcess.start(env, tmp_path)
        started.append(first)
        seen: dict[str, list[dict[str, Any]]] = {}
        async with WSClient(first.ws_url) as client:
            ids = {q: await client.add(q, query=q) for q in queries}
            await wait_until(lambda: streaming(upstream, 12, tokens=4), 10, "12 streams")
            await asyncio.sleep(0.1)
            first.kill()
            await first.process.wait()
            # What the client got before the crash, as it would have kept it.
            for message in await until_closed(client):
                seen.setdefault(message.get("job_id", ""), []).append(message)

        second = await WorkerProcess.start(env, tmp_path)
        started.append(second)
        async with WSClient(second.ws_url) as client:
            for query, job_id in ids.items():
                before = [m for m in seen.get(job_id, []) if "seq" in m]
                after = before[-1]["seq"] if before else 0
                await client.send({"type": "listen", "job_id": job_id, "after": after})
                rest = await client.job_messages(job_id, timeout=30)
                # Resuming right after the last event seen: the reset comes first,
                # however much of what the client saw was lost in the crash.
                assert rest[0]["type"] == "reset", (query, after, rest[:2])
                assert rest[0]["attempt"] == 2
                assert rest[-1]["type"] == "done"
                assert_in_order(before + rest)
                assert text_after_last_reset(before + rest) == ECHO.text(query)
                # A fresh replay shows the last attempt only.
                await client.send({"type": "listen", "job_id": job_id})
                replay = await client.job_messages(job_id)
                assert [m["type"] for m in replay[:2]] == ["reset", "running"]
                assert text_after_last_reset(replay) == ECHO.text(query)
        # A client of the seed's protocol, coming back, hears the job once, whole.
        async with WSClient(second.ws_url, seed=True) as seed:
            for query, job_id in ids.items():
                await seed.send({"type": "listen", "job_id": job_id})
                replay = await seed.job_messages(job_id)
                assert {m["type"] for m in replay} <= SEED_TYPES, replay
                assert replay[0]["message"] == "" and replay[-1]["type"] == "done"
                assert text_of(replay) == ECHO.text(query)
    assert "12 queued (12 of them were running)" in second.output
    assert all(len(r) == 2 for r in requests_by_query(upstream).values())
    assert_never_twice_at_once(upstream)


@pytest.fixture
def redis_env(redis_server: RedisServer, upstream: OpenAIServer) -> dict[str, str]:
    return clean_env(
        LISTEN_PORT="0",
        STORE_URL=redis_server.url,
        REDIS_PREFIX=unique_prefix(),
        OPENAI_API_KEY="k",
        OPENAI_BASE_URL=upstream.base_url,
        WORKER_HEARTBEAT_TIMEOUT_SECONDS="1.5",
    )


@pytest.fixture(params=["redis", "redis-cluster"])
def shared_env(request: pytest.FixtureRequest, redis_env: dict[str, str]) -> dict[str, str]:
    """Settings for processes sharing a Redis, or a Redis Cluster of three masters."""
    if request.param == "redis":
        return redis_env
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return {**redis_env, "STORE_URL": f"redis+cluster://127.0.0.1:{cluster.ports[0]}"}


async def test_redis_two_gateways_two_workers_survive_a_worker_kill_9(
    upstream: OpenAIServer, shared_env: dict[str, str], tmp_path: Path
) -> None:
    redis_env = shared_env
    # Replies of 2 s: long enough that 32 of them stream at once even on a busy
    # machine (at 0.6 s, the first ones could end before the last ones started).
    upstream.handler = ECHO.replies(0.1)
    queries = [f"job{i}" for i in range(40)]
    async with processes() as started:
        gateway_1 = await WorkerProcess.start(redis_env, tmp_path, role="gateway")
        gateway_2 = await WorkerProcess.start(redis_env, tmp_path, role="gateway")
        worker_1 = await WorkerProcess.start(redis_env, tmp_path, role="worker")
        worker_2 = await WorkerProcess.start(redis_env, tmp_path, role="worker")
        started += [gateway_1, gateway_2, worker_1, worker_2]

        async with (
            WSClient(gateway_1.ws_url) as adder,
            WSClient(gateway_2.ws_url) as listener,
            WSClient(gateway_2.ws_url, seed=True) as seed,
        ):
            ids = {q: await adder.add(q, query=q) for q in queries}
            for job_id in ids.values():
                await listener.send({"type": "listen", "job_id": job_id})
                await seed.send({"type": "listen", "job_id": job_id})
            # Both workers busy (16 jobs each), then one dies.
            await wait_until(lambda: streaming(upstream, 32), 15, "32 streams")
            worker_1.kill()
            for query, job_id in ids.items():
                messages = await listener.job_messages(job_id, timeout=60)
                assert messages[-1]["type"] == "done", (query, messages[-3:])
                assert_in_order(messages)
                assert text_after_last_reset(messages) == ECHO.text(query)
            interrupted = await seed_listeners_never_mix_attempts(seed, ids)
    # Some jobs ran twice (taken over from the dead worker), never at the same time.
    by_query = requests_by_query(upstream)
    # The seed listener was told of each re-run after text, and only of those.
    assert interrupted
    assert all(len(by_query[query]) == 2 for query in interrupted)
    assert any(len(r) == 2 for r in by_query.values())
    assert all(1 <= len(r) <= 2 for r in by_query.values())
    assert_never_twice_at_once(upstream)
    assert "taking over job" in worker_2.output


async def seed_listeners_never_mix_attempts(seed: WSClient, ids: dict[str, str]) -> list[str]:
    """Check what a seed-dialect listener of every job heard; the queries whose
    listening a re-run interrupted (after which it listened again)."""
    interrupted = []
    for query, job_id in ids.items():
        messages = await seed.job_messages(job_id, timeout=60)
        assert {m["type"] for m in messages} <= SEED_TYPES, messages
        if messages[-1]["type"] == "failed":
            assert messages[-1]["message"] == INTERRUPTED
            # What it was shown is the first attempt's, never two attempts' run together.
            assert ECHO.text(query).startswith(text_of(messages))
            interrupted.append(query)
            await seed.send({"type": "listen", "job_id": job_id})
            messages = await seed.job_messages(job_id, timeout=60)
        assert messages[-1]["type"] == "done", messages[-3:]
        assert text_of(messages) == ECHO.text(query)
    return interrupted


async def test_redis_cancel_and_status_work_across_gateways(
    upstream: OpenAIServer, redis_env: dict[str, str], tmp_path: Path
) -> None:
    upstream.handler = ECHO.replies(0.2)
    async with processes() as started:
        gateway_1 = await WorkerProcess.start(redis_env, tmp_path, role="gateway")
        gateway_2 = await WorkerProcess.start(redis_env, tmp_path, role="gateway")
        worker = await WorkerProcess.start(redis_env, tmp_path, role="worker")
        started += [gateway_1, gateway_2, worker]
        async with WSClient(gateway_1.ws_url) as one, WSClient(gateway_2.ws_url) as two:
            job_id = await one.add(query="long")
            for _ in range(3):
                await one.wait_for("running", job_id)
            await two.send({"type": "status", "job_id": job_id})
            status = await two.wait_for("status")
            assert status["state"] == "running"
            assert status["output"].startswith(" long.0")

            await two.send({"type": "listen", "job_id": job_id, "after": 2})
            await two.send({"type": "cancel", "job_id": job_id})
            for client in (one, two):
                assert (await client.job_messages(job_id))[-1]["type"] == "cancelled"
            (request,) = upstream.chat_requests
            await asyncio.wait_for(request.client_gone.wait(), 5)
            assert request.tokens_sent < ECHO.tokens

            await one.send({"type": "status", "job_id": job_id})
            assert (await one.wait_for("status"))["state"] == "cancelled"


async def test_redis_restarted_under_running_jobs(
    upstream: OpenAIServer, redis_env: dict[str, str], tmp_path: Path, own_redis: RedisServer
) -> None:
    server = own_redis
    env = {**redis_env, "STORE_URL": server.url, "REDIS_OUTAGE_GRACE_SECONDS": "5"}
    upstream.handler = ECHO.replies(0.1)
    queries = [f"job{i}" for i in range(6)]
    async with processes() as started:
        gateway = await WorkerProcess.start(env, tmp_path, role="gateway")
        worker = await WorkerProcess.start(env, tmp_path, role="worker")
        started += [gateway, worker]
        async with WSClient(gateway.ws_url) as client:
            ids = {q: await client.add(q, query=q) for q in queries}
            await wait_until(lambda: streaming(upstream, 6), 10, "6 streams")
            server.stop(kill=True)
            await asyncio.sleep(1.5)
            server.start()
            for query, job_id in ids.items():
                messages = await client.job_messages(job_id, timeout=60)
                assert messages[-1]["type"] == "done", (query, messages[-3:])
                assert_in_order(messages)
                assert text_after_last_reset(messages) == ECHO.text(query)
                # Back within the grace period: listeners were not told.
                assert all(m["type"] != "error" for m in messages)
        assert "Redis is reachable again" in worker.output


async def test_listeners_hear_of_a_redis_outage_longer_than_the_grace_period(
    upstream: OpenAIServer, redis_env: dict[str, str], tmp_path: Path, own_redis: RedisServer
) -> None:
    server = own_redis
    env = {**redis_env, "STORE_URL": server.url, "REDIS_OUTAGE_GRACE_SECONDS": "1"}
    upstream.handler = ECHO.replies(0.1)
    async with processes() as started:
        gateway = await WorkerProcess.start(env, tmp_path, role="gateway")
        worker = await WorkerProcess.start(env, tmp_path, role="worker")
        started += [gateway, worker]
        async with WSClient(gateway.ws_url) as client, WSClient(gateway.ws_url, seed=True) as seed:
            job_id = await client.add(query="patient")
            await seed.send({"type": "listen", "job_id": job_id})
            await client.wait_for("running", job_id)
            server.stop(kill=True)
            error = await client.wait_for("error", timeout=10)
            assert error["ref"] == job_id
            assert "the job store (Redis) has been unreachable" in error["message"]
            async with httpx.AsyncClient() as http:
                health = await http.get(f"http://127.0.0.1:{gateway.port}/healthz", timeout=10)
            assert health.status_code == 503
            assert health.json()["status"] == "store unavailable"
            server.start()
            messages = await client.job_messages(job_id, timeout=60)
            assert messages[-1]["type"] == "done"
            assert text_after_last_reset(messages) == ECHO.text("patient")
            # The seed's clients know no outage notice: theirs just resumes.
            seed_messages = await seed.job_messages(job_id, timeout=60)
            assert {m["type"] for m in seed_messages} <= SEED_TYPES
            assert text_of(seed_messages) == ECHO.text("patient")
