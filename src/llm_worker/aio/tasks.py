"""Tasks started in the background, owned by whoever starts them.

asyncio keeps only a weak reference to a task: one nobody holds can be
collected mid-run, and its exception, if any, surfaces as "Task exception was
never retrieved". A :class:`TaskSet` holds its tasks until they end, logs what
they raise, and stops (or waits for) those still running when its owner closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskSet:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self, coroutine: Coroutine[Any, Any, Any], name: str | None = None
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s: background task %s failed", self.owner, task.get_name(), exc_info=exc)

    async def close(self, wait: float = 0.0) -> None:
        """Let the tasks finish for up to ``wait`` seconds, then cancel the rest."""
        if self._tasks and wait > 0:
            await asyncio.wait(set(self._tasks), timeout=wait)
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def cancel_requested() -> bool:
    """Whether the running task has been asked to stop. A loop around a client library's
    calls must ask this before going round again: a cancel that lands inside the
    library's own timeouts or connection handling can be swallowed (the call returns,
    or raises the library's own error), and the loop would then run on, cancelled, for
    ever, holding up whoever awaits it (redis-py, under Python 3.11: a worker's stop)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
