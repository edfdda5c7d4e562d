"""A stop's cancel reaches the Redis store's loops even when the Redis client swallows
it: redis-py, cancelled inside its connection handling, may return or raise its own
error instead of ``CancelledError``, and a loop that goes round on that error ran on
for ever, cancelled, holding up the store's close (and a worker's stop). Pure: the
client is a coroutine that does what redis-py does with a cancel."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from llm_worker.store.redis.reachability import Reachability


async def swallowing_call() -> None:
    """Waits as a call to a Redis that went away; a cancel becomes a ConnectionError."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise RedisConnectionError("Connection closed by server.") from None


async def test_a_retry_through_an_outage_stops_when_cancelled_inside_the_call() -> None:
    reach = Reachability(grace=60, where="redis://test", max_in_flight=4)
    retrying = asyncio.create_task(reach.retry(swallowing_call))
    await asyncio.sleep(0.05)  # inside the call
    retrying.cancel()
    await asyncio.wait({retrying}, timeout=5)
    assert retrying.done(), "the retry went on after its cancel"
    with pytest.raises(asyncio.CancelledError):
        await retrying
