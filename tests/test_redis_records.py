"""The Redis store's job records against a real Redis: a gateway that dies between
writing a new job's record and queueing it leaves nothing for ever."""

from __future__ import annotations

from typing import Any

import pytest

from llm_worker.jobs import Assistant, JobSpec
from llm_worker.store.redis import RedisStore
from tests.stores import StoreFactory

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")


class GatewayDied(Exception):
    """Stands for the process ending between the two steps."""


async def test_a_record_whose_submit_never_ran_expires(
    redis_store_factory: StoreFactory,
) -> None:
    store = await redis_store_factory(queue_max=10, job_ttl=3600)
    assert isinstance(store, RedisStore)

    def dies(**kwargs: Any) -> None:
        raise GatewayDied

    store._scripts["submit"] = dies
    with pytest.raises(GatewayDied):
        await store.submit(SPEC)
    keys = [key async for key in store._client.scan_iter(match=f"{store.prefix}:job:*")]
    assert len(keys) == 1  # the record was written...
    ttl = await store._client.pttl(keys[0])
    # ...to expire: within the unqueued record's TTL, not never (-1).
    assert 0 < ttl <= 60_000


async def test_a_queued_job_keeps_its_record(redis_store_factory: StoreFactory) -> None:
    store = await redis_store_factory(queue_max=10, job_ttl=3600)
    assert isinstance(store, RedisStore)
    record = await store.submit(SPEC)
    assert await store._client.pttl(store._job_key(record.id)) == -1
    assert await store.position(record.id) == 1
