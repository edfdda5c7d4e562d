"""Tasks waiting for the next time something happens (pure unit)."""

from __future__ import annotations

import asyncio

import pytest

from llm_worker.store.waiters import Waiters


async def test_every_waiter_gets_the_value_once() -> None:
    waiters: Waiters[str] = Waiters()
    tasks = [asyncio.create_task(waiters.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters.wake("moved")
    assert await asyncio.gather(*tasks) == ["moved"] * 3
    later = asyncio.create_task(waiters.wait())
    await asyncio.sleep(0)
    assert not later.done()  # it waits for the next wake
    waiters.wake("again")
    assert await later == "again"


async def test_a_cancelled_waiter_is_dropped() -> None:
    waiters: Waiters[None] = Waiters()
    gone = asyncio.create_task(waiters.wait())
    staying = asyncio.create_task(waiters.wait())
    await asyncio.sleep(0)
    assert len(waiters) == 2
    gone.cancel()
    await asyncio.sleep(0)
    assert len(waiters) == 1
    waiters.wake(None)
    await staying
    assert gone.cancelled()
    assert len(waiters) == 0


async def test_a_timed_out_waiter_is_dropped() -> None:
    waiters: Waiters[None] = Waiters()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(waiters.wait(), 0.01)
    assert len(waiters) == 0
