"""Waiting for what a test expects, instead of sleeping for as long as it should take.

A sleep long enough on a quiet machine is too short on a loaded one (and too long
everywhere else); :func:`eventually` asks again until the condition holds, for as
long as ``timeout`` allows, and fails saying what it waited for.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    condition: Callable[[], Any | Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "the condition",
) -> Any:
    """The first truthy value of ``condition()`` (a function, or a coroutine function),
    asked every ``interval`` seconds; :class:`AssertionError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout}s"
        await asyncio.sleep(interval)
