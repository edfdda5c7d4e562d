"""Concurrent jobs, FIFO order, and many listeners on one job."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import ConnectClient, StartWorker
from tests.support.stores import STORE_KINDS
from tests.support.wsclient import assert_exactly_once, text_of


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs on each store."""
    return request.param


class Gauge:
    """Counts requests the upstream is serving at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def around(self, reply: Reply, hold: float) -> Any:
        async def handler(body: dict[str, Any]) -> Reply:
            self.now += 1
            self.peak = max(self.peak, self.now)
            try:
                await asyncio.sleep(hold)
            finally:
                self.now -= 1
            return reply

        return handler


async def test_twenty_slow_jobs_run_concurrently_not_serially(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    gauge = Gauge()
    upstream.handler = gauge.around(Reply(tokens=[" done"]), hold=1.0)
    clients = [await connect() for _ in range(20)]
    started = time.perf_counter()
    job_ids = [await client.add(f"r{i}") for i, client in enumerate(clients)]
    results = await asyncio.gather(
        *(client.job_messages(job_id) for client, job_id in zip(clients, job_ids, strict=True))
    )
    elapsed = time.perf_counter() - started
    assert all(messages[-1]["type"] == "done" for messages in results)
    # WORKER_CONCURRENCY=16: two waves of ~1 s each, not 20 s in a row.
    assert elapsed < 4.0, elapsed
    assert gauge.peak == 16


async def test_worker_concurrency_bounds_the_jobs_running_at_once(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(worker_concurrency=3)
    gauge = Gauge()
    upstream.handler = gauge.around(Reply(tokens=[" ok"]), hold=0.2)
    client = await connect(worker.ws_url)
    job_ids = [await client.add(f"r{i}") for i in range(9)]
    for job_id in job_ids:
        assert (await client.job_messages(job_id))[-1]["type"] == "done"
    assert gauge.peak == 3


async def test_queued_jobs_start_in_fifo_order(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(worker_concurrency=1)
    upstream.handler = lambda body: Reply(tokens=[" x"], delay=0.02)
    client = await connect(worker.ws_url)
    queries = [f"job {i}" for i in range(8)]
    for query in queries:
        await client.add(query, query=query)
    served = []
    while len(served) < len(queries):
        await asyncio.sleep(0.05)
        served = [r.body["messages"][-1]["content"] for r in upstream.chat_requests]
    assert served == queries


async def test_every_listener_gets_every_event_exactly_once_in_order(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    tokens = [f" t{i}" for i in range(60)]
    upstream.handler = lambda body: Reply(tokens=tokens, delay=0.01)
    adder = await connect()
    job_id = await adder.add()

    async def listen_after(delay: float, after: int | None) -> list[dict[str, Any]]:
        await asyncio.sleep(delay)
        listener = await connect()
        request: dict[str, Any] = {"type": "listen", "job_id": job_id}
        if after is not None:
            request["after"] = after
        await listener.send(request)
        return await listener.job_messages(job_id)

    # Early, mid-stream, late and after-the-end listeners; two of them resume.
    plans = [(0.0, None), (0.1, None), (0.25, None), (0.3, 10), (0.45, 30), (1.2, None)]
    results = await asyncio.gather(*(listen_after(d, a) for d, a in plans))
    last_seq = len(tokens) + 2
    for (_, after), messages in zip(plans, results, strict=True):
        # seq 1 is the start, seq 2 + i the delta tokens[i].
        rest = "".join(tokens[(after or 1) - 1 :]) if after else "".join(tokens)
        assert_exactly_once(messages, rest, last_seq=last_seq, after=after or 0)
    own = await adder.job_messages(job_id)
    assert_exactly_once(own, "".join(tokens), last_seq=last_seq)


async def test_one_connection_follows_many_jobs(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(
        tokens=[f" {body['messages'][-1]['content']}-{i}" for i in range(10)], delay=0.005
    )
    client = await connect()
    job_ids = [await client.add(f"r{i}", query=f"q{i}") for i in range(6)]
    for index, job_id in enumerate(job_ids):
        messages = await client.job_messages(job_id)
        assert text_of(messages) == "".join(f" q{index}-{i}" for i in range(10))
