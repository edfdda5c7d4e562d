"""The Redis store against a real Redis: a gateway that dies between writing a new
job's record and queueing it leaves nothing for ever; a worker waiting for a tenant
at its limit of running jobs is woken when one ends, and asks Redis nothing meanwhile."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from llm_worker.jobs.model import Assistant, EventKind, JobSpec
from llm_worker.store.limits import TenantLimits
from llm_worker.store.redis import RedisStore
from llm_worker.store.redis.scripts import SUBMIT, Script
from llm_worker.testing.redis_server import RedisServer
from tests.support.stores import StoreFactory

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")


class GatewayDied(Exception):
    """Stands for the process ending between the two steps."""


async def test_a_record_whose_submit_never_ran_expires(
    redis_store_factory: StoreFactory,
) -> None:
    store = await redis_store_factory(queue_max=10, job_ttl=3600)
    assert isinstance(store, RedisStore)

    run = store._conn.run

    async def dies(script: Script[Any], **named: Any) -> Any:
        if script is SUBMIT:
            raise GatewayDied
        return await run(script, **named)

    store._conn.run = dies  # type: ignore[method-assign]
    with pytest.raises(GatewayDied):
        await store.submit(SPEC)
    keys = [key async for key in store._conn.client.scan_iter(match=f"{store.prefix}:job:*")]
    assert len(keys) == 1  # the record was written...
    ttl = await store._conn.client.pttl(keys[0])
    # ...to expire: within the unqueued record's TTL, not never (-1).
    assert 0 < ttl <= 60_000


async def test_a_queued_job_keeps_its_record(redis_store_factory: StoreFactory) -> None:
    store = await redis_store_factory(queue_max=10, job_ttl=3600)
    assert isinstance(store, RedisStore)
    record = await store.submit(SPEC)
    assert await store._conn.client.pttl(store.keys.job_key(record.id)) == -1
    assert await store.position(record.id) == 1


def command_calls(info: dict[str, Any], *names: str) -> int:
    return sum(int(info.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names)


async def test_a_tenant_at_its_limit_is_woken_not_polled(
    redis_store_factory: StoreFactory, own_redis: RedisServer
) -> None:
    store = await redis_store_factory(
        url=own_redis.url,
        queue_max=10,
        job_ttl=3600,
        limits=lambda tenant: TenantLimits(max_running_jobs=1),
    )
    assert isinstance(store, RedisStore)
    first = await store.submit(SPEC, "t")
    second = await store.submit(SPEC, "t")
    claim = await store.claim(max_wait=5)
    assert claim is not None and claim.job_id == first.id
    waiting = asyncio.ensure_future(store.claim(max_wait=30))
    await asyncio.sleep(0.3)  # it has met the tenant's limit, and waits
    info = await store._conn.client.info("commandstats")
    await asyncio.sleep(1.0)
    after = await store._conn.client.info("commandstats")
    asked = ("evalsha", "eval", "xreadgroup", "xautoclaim")
    # Idle, the waiting claim asks Redis nothing (before: 20 rounds a second, 60 calls);
    # what is left is the worker's presence, once a second.
    assert command_calls(after, *asked) - command_calls(info, *asked) <= 3
    assert not waiting.done()
    await store.append(claim.job_id, claim.attempt, EventKind.DONE, "{}")
    ended = time.monotonic()
    next_claim = await asyncio.wait_for(waiting, 5)
    assert next_claim is not None and next_claim.job_id == second.id
    assert time.monotonic() - ended < 0.5
