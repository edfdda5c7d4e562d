"""Tasks waiting for the next time something happens."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Waiters(Generic[T]):
    """Tasks waiting for the next :meth:`wake`; each is woken once, with its value.

    A waiter that is cancelled meanwhile is dropped.
    """

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        # A dict for its order, and for dropping a cancelled waiter at once.
        self._futures: dict[asyncio.Future[T], None] = {}

    def __len__(self) -> int:
        return len(self._futures)

    async def wait(self) -> T:
        """The value of the next :meth:`wake`."""
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._futures[waiter] = None
        try:
            return await waiter
        finally:
            self._futures.pop(waiter, None)

    def wake(self, value: T) -> None:
        """Wake every task waiting now with ``value``; those that wait later wait on."""
        if not self._futures:
            return
        futures, self._futures = self._futures, {}
        for future in futures:
            if not future.done():
                future.set_result(value)
