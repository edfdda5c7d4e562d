"""Riding out Redis outages, without a Redis (pure unit)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from llm_worker.store import StoreUnavailable
from llm_worker.store.redis.reachability import Reachability


def reachability(grace: float = 0.05, max_in_flight: int = 64) -> Reachability:
    return Reachability(grace, "redis://localhost:6379", max_in_flight=max_in_flight)


class Flaky:
    """A call that fails for want of Redis ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise RedisConnectionError("Connection refused")
        return "answer"


async def test_a_call_is_retried_until_redis_answers() -> None:
    reach = reachability()
    call = Flaky(failures=3)
    assert await reach.retry(call) == "answer"
    assert call.calls == 4
    assert not reach.down


async def test_a_call_with_a_deadline_gives_up_after_it() -> None:
    reach = reachability()
    call = Flaky(failures=1_000)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable") as raised:
        await reach.retry(call, deadline=0.1)
    assert 0.1 <= time.monotonic() - started < 1.0
    assert isinstance(raised.value.__cause__, RedisConnectionError)
    assert call.calls > 1
    assert reach.down


async def test_for_client_gives_up_after_the_grace_period() -> None:
    reach = reachability(grace=0.1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await reach.for_client(Flaky(failures=1_000))
    assert 0.1 <= time.monotonic() - started < 1.0


@pytest.mark.parametrize("error", [ValueError("a bug"), ResponseError("OOM command not allowed")])
async def test_other_errors_propagate_untouched(error: Exception) -> None:
    reach = reachability()
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)) as raised:
        await reach.retry(call)
    assert raised.value is error
    assert calls == 1
    assert not reach.down


async def test_an_outage_longer_than_the_grace_period_is_announced_and_so_is_its_end() -> None:
    reach = reachability(grace=0.05)
    outage = asyncio.create_task(reach.outage())
    redis_away = True

    async def call() -> str:
        if redis_away:
            raise RedisConnectionError("Connection refused")
        return "answer"

    retrying = asyncio.create_task(reach.retry(call))
    message = await asyncio.wait_for(outage, 1.0)
    assert re.search(r"unreachable for \d+s", message), message
    recovered = asyncio.create_task(reach.recovered())
    await asyncio.sleep(0.1)
    assert not recovered.done()  # Redis is away still
    redis_away = False
    assert await asyncio.wait_for(retrying, 2.0) == "answer"
    await asyncio.wait_for(recovered, 1.0)
    assert not reach.down
    await reach.recovered()  # no outage now: returns at once


async def test_an_outage_shorter_than_the_grace_period_is_not_announced() -> None:
    reach = reachability(grace=0.1)
    outage = asyncio.create_task(reach.outage())
    assert await reach.retry(Flaky(failures=1)) == "answer"
    await asyncio.sleep(0.2)
    assert not outage.done()
    await asyncio.wait_for(reach.recovered(), 0.1)
    outage.cancel()


async def test_each_outage_is_announced_once_to_each_waiter() -> None:
    reach = reachability(grace=0.05)
    first = asyncio.create_task(reach.outage())
    reach.went_down(RedisConnectionError("Connection refused"))
    await asyncio.wait_for(first, 1.0)
    second = asyncio.create_task(reach.outage())
    await asyncio.sleep(0.1)
    assert not second.done()  # the same outage goes on: announced already
    reach.came_back()
    reach.went_down(RedisConnectionError("Connection refused"))
    assert "unreachable" in await asyncio.wait_for(second, 1.0)


async def test_calls_in_flight_are_bounded() -> None:
    reach = reachability(max_in_flight=2)
    running = 0
    most = 0
    release = asyncio.Event()

    async def call() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    calls = [asyncio.create_task(reach.retry(call)) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert running == 2
    release.set()
    await asyncio.wait_for(asyncio.gather(*calls), 1.0)
    assert most == 2
