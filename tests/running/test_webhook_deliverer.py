"""The deliverer on its own, over a real store and a real receiving server: a target is
checked again before each attempt (an entry a gateway took while private targets were
allowed is refused once they are not), an attempt is bounded as a whole, and a job that
has not ended is waited for."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from llm_worker.jobs.model import EventKind, JobSpec
from llm_worker.jobs.templates import Assistant
from llm_worker.running.webhook_targets import WebhookTargets
from llm_worker.running.webhooks import Deliverer, DeliveryPolicy, new_delivery
from llm_worker.store.deliveries import MemoryDeliveries
from llm_worker.store.memory import MemoryStore
from llm_worker.store.redis.deliveries import RedisDeliveries
from llm_worker.testing.redis_server import RedisServer, unique_prefix
from tests.support.webhook_receiver import Receiver, receiving
from tests.support.wsclient import assistant

KEY = b"deliverer-test-key-of-32-bytes!!"


@pytest.fixture
async def jobs() -> AsyncIterator[MemoryStore]:
    store = MemoryStore(queue_max=10, job_ttl=60)
    await store.start()
    yield store
    await store.close()


async def ended_job(jobs: MemoryStore, text: str = "hi") -> str:
    spec = JobSpec(assistant=Assistant.model_validate(assistant()), query="q")
    record = await jobs.submit(spec)
    claim = await jobs.claim(1.0)
    assert claim is not None and claim.job_id == record.id
    await jobs.append(record.id, claim.attempt, EventKind.RUNNING, text)
    await jobs.append(record.id, claim.attempt, EventKind.DONE, "{}")
    return record.id


async def rounds(deliverer: Deliverer, count: int, pause: float = 0.05) -> None:
    for _ in range(count):
        await deliverer.round()
        await asyncio.sleep(pause)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as running:
        yield running


async def test_a_target_is_checked_again_before_the_attempt(
    jobs: MemoryStore, receiver: Receiver
) -> None:
    deliveries = MemoryDeliveries()
    job_id = await ended_job(jobs)
    # Taken while private targets were allowed; no longer.
    await deliveries.add(new_delivery(job_id, receiver.url, "", 0.0))
    targets = WebhookTargets(secret=KEY, allow_private=False)
    deliverer = Deliverer(jobs, deliveries, targets, DeliveryPolicy(schedule=(0.01,), poll=0.01))
    try:
        await rounds(deliverer, 5)
    finally:
        await deliverer.stop()
    entry = await deliveries.get(job_id)
    assert entry is not None and entry.state == "given_up" and entry.attempts == 2
    assert entry.last_error is not None and "127.0.0.1 is a loopback address" in entry.last_error
    assert receiver.received == []


async def test_an_attempt_is_bounded_as_a_whole(jobs: MemoryStore) -> None:
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        for _ in range(100):  # a byte every 0.1 s: each read is quick, the whole is not
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.1)

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    deliveries = MemoryDeliveries()
    job_id = await ended_job(jobs)
    await deliveries.add(new_delivery(job_id, f"http://127.0.0.1:{port}/", "", 0.0))
    targets = WebhookTargets(secret=KEY, allow_private=True)
    policy = DeliveryPolicy(schedule=(60.0,), timeout=0.5, poll=0.01)
    deliverer = Deliverer(jobs, deliveries, targets, policy)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await deliverer.round()
    finally:
        await deliverer.stop()
        server.close()
    assert loop.time() - started < 2.0
    entry = await deliveries.get(job_id)
    assert entry is not None and entry.state == "due" and entry.attempts == 1
    assert entry.last_error == "no reply within 0.5s"


async def test_a_job_still_running_is_waited_for(jobs: MemoryStore, receiver: Receiver) -> None:
    spec = JobSpec(assistant=Assistant.model_validate(assistant()), query="q")
    record = await jobs.submit(spec)
    deliveries = MemoryDeliveries()
    await deliveries.add(new_delivery(record.id, receiver.url, "", 0.0))
    targets = WebhookTargets(secret=KEY, allow_private=True)
    deliverer = Deliverer(jobs, deliveries, targets, DeliveryPolicy(poll=0.01))
    try:
        await rounds(deliverer, 3)
        entry = await deliveries.get(record.id)
        assert entry is not None and entry.state == "waiting" and entry.attempts == 0
        claim = await jobs.claim(1.0)
        assert claim is not None
        await jobs.append(record.id, claim.attempt, EventKind.FAILED, "it broke")
        # Rechecked within max(poll, age / 10) of the job's end.
        for _ in range(100):
            await rounds(deliverer, 1)
            if receiver.received:
                break
        (delivery,) = receiver.received
        assert b'"type":"job.failed"' in delivery.body and b"it broke" in delivery.body
    finally:
        await deliverer.stop()


async def test_redis_away_is_ridden_out_and_said_once(
    jobs: MemoryStore, receiver: Receiver, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    deliveries = RedisDeliveries(own_redis.url, prefix=unique_prefix())
    await deliveries.start()
    job_id = await ended_job(jobs)
    await deliveries.add(new_delivery(job_id, receiver.url, "", 0.0))
    own_redis.stop()  # its append-only file keeps the entry
    targets = WebhookTargets(secret=KEY, allow_private=True)
    deliverer = Deliverer(jobs, deliveries, targets, DeliveryPolicy(poll=0.05))
    caplog.set_level(logging.INFO, logger="llm_worker.running.webhooks")
    deliverer.start()
    try:
        await asyncio.sleep(1.0)  # some twenty rounds fail meanwhile
        own_redis.start()
        (delivery,) = await receiver.wait_for(1)
        assert b'"type":"job.done"' in delivery.body
        for _ in range(100):
            entry = await deliveries.get(job_id)
            if entry is not None and entry.state == "delivered":
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # the round that delivered it has returned
    finally:
        await deliverer.stop()
        await deliveries.close()
    assert entry is not None and (entry.state, entry.attempts) == ("delivered", 1)
    said = [r.getMessage() for r in caplog.records]
    away = [m for m in said if m.endswith("deliveries wait for the store")]
    assert len(away) == 1 and "Redis is unreachable" in away[0], said
    assert "webhooks: deliveries go on" in said
    # A fault the store names, said without a traceback (the fault tests refuse one).
    assert not any(r.exc_info for r in caplog.records), said
