"""Stopping, with processes started as a user starts them: SIGTERM drains within
``SHUTDOWN_GRACE_SECONDS`` whatever the store's state (Redis dead under running
jobs included), and a second SIGTERM or SIGINT during the drain stops at once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.testing.redis_server import RedisServer, unique_prefix
from tests.support.wsclient import WSClient

GRACE = 3.0
# What a stop may take past the grace: giving up unfinished jobs (2 s at most) and
# closing connections and the store, on a loaded machine.
STOP_MARGIN = 4.0


def slow_replies(body: object) -> Reply:
    """A reply that outlasts any test: 100 tokens, half a second apart."""
    return Reply(tokens=[f" t{i}" for i in range(100)], delay=0.5)


def env_for(redis: RedisServer, upstream: OpenAIServer, **extra: str) -> dict[str, str]:
    return clean_env(
        LISTEN_PORT="0",
        STORE_URL=redis.url,
        REDIS_PREFIX=unique_prefix(),
        OPENAI_API_KEY="k",
        OPENAI_BASE_URL=upstream.base_url,
        SHUTDOWN_GRACE_SECONDS=str(GRACE),
        **extra,
    )


async def streaming(upstream: OpenAIServer, count: int, timeout: float = 20) -> None:
    """Until ``count`` replies are under way."""
    async with asyncio.timeout(timeout):
        while True:
            live = sum(r.tokens_sent >= 1 and r.ended_at is None for r in upstream.chat_requests)
            if live >= count:
                return
            await asyncio.sleep(0.05)


async def seconds_to_exit(process: WorkerProcess, limit: float) -> float:
    started = time.monotonic()
    try:
        await asyncio.wait_for(process.process.wait(), limit)
    except TimeoutError:
        raise AssertionError(
            f"{process.role} still running {limit:.0f}s after SIGTERM:\n{process.output}"
        ) from None
    return time.monotonic() - started


async def test_sigterm_drains_within_the_grace_when_redis_died_under_running_jobs(
    upstream: OpenAIServer, own_redis: RedisServer, tmp_path: Path
) -> None:
    upstream.handler = slow_replies
    env = env_for(own_redis, upstream)
    async with processes() as started:
        gateway = await WorkerProcess.start(env, tmp_path, role="gateway")
        worker = await WorkerProcess.start(env, tmp_path, role="worker")
        started += [gateway, worker]
        async with WSClient(gateway.ws_url) as client:
            for i in range(10):
                await client.add(query=f"job{i}")
            await streaming(upstream, 10)
            own_redis.stop(kill=True)
            await worker.said("lost contact with Redis")
            worker.process.send_signal(signal.SIGTERM)
            gateway.process.send_signal(signal.SIGTERM)
            waited = await asyncio.gather(seconds_to_exit(worker, 60), seconds_to_exit(gateway, 60))
        assert "waiting up to 3s for 10 running jobs" in worker.output
        assert waited[0] < GRACE + STOP_MARGIN, (waited, worker.output)
        assert waited[1] < GRACE + STOP_MARGIN, (waited, gateway.output)
        assert "could not be queued again" in worker.output


@pytest.mark.parametrize(
    ("role", "second"),
    [("worker", signal.SIGTERM), ("worker", signal.SIGINT), ("gateway", signal.SIGTERM)],
)
async def test_a_second_signal_during_the_drain_stops_at_once(
    upstream: OpenAIServer,
    redis_server: RedisServer,
    tmp_path: Path,
    role: str,
    second: signal.Signals,
) -> None:
    upstream.handler = slow_replies
    # A drain that would take a minute: the running job takes longer still.
    env = {**env_for(redis_server, upstream), "SHUTDOWN_GRACE_SECONDS": "60"}
    async with processes() as started:
        gateway = await WorkerProcess.start(env, tmp_path, role="gateway")
        worker = await WorkerProcess.start(env, tmp_path, role="worker")
        started += [gateway, worker]
        stopping = worker if role == "worker" else gateway
        async with WSClient(gateway.ws_url) as client:
            await client.add(query="long")  # followed: the gateway's drain waits for it
            await streaming(upstream, 1)
            stopping.process.send_signal(signal.SIGTERM)
            await stopping.said("waiting up to 60s")
            stopping.process.send_signal(second)
            waited = await seconds_to_exit(stopping, 30)
        other = gateway if stopping is worker else worker
        other.kill()  # its own drain would wait for the job a minute
        await other.process.wait()
        assert waited < 2.0, stopping.output
        assert stopping.process.returncode == -second
        assert f"stopping at once: {second.name} during the stop" in stopping.output
