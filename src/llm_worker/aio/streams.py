"""Async iterators, paced: what a stream sends while what it relays is quiet."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def with_idle_ticks(items: AsyncIterator[T], seconds: float) -> AsyncIterator[T | None]:
    """``items``, and ``None`` after each ``seconds`` without one (a stream's cue to send
    a keep-alive). Waiting for the next item is never cancelled by the tick, only when
    the iteration stops early; ``items`` is closed then."""
    waiting: asyncio.Future[T] | None = None
    try:
        while True:
            if waiting is None:
                waiting = asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({waiting}, timeout=seconds)
            if not done:
                yield None
                continue
            ready, waiting = waiting, None
            try:
                item = ready.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if waiting is not None:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waiting
        if isinstance(items, AsyncGenerator):
            with contextlib.suppress(Exception):
                await items.aclose()
