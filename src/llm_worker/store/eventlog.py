"""A job's log as one process holds it, and the followers waiting on it.

Every store keeps its jobs' logs (or, for a shared store, mirrors of them) in
an :class:`EventLog`, so replaying, following and skipping superseded attempts
work the same whatever the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llm_worker.jobs import Event, EventKind


class EventLog:
    """Events in ``seq`` order, from 1 with no gap; readers see the current attempt only.

    When a job is run again after its worker died, the new attempt's ``reset``
    event voids what earlier attempts wrote: replays start at the latest
    ``reset``, so a listener never mixes two attempts' text.
    """

    __slots__ = ("_waiters", "attempt_start", "events")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.attempt_start = 0
        """Index of the current attempt's ``reset`` event (0 when there is none)."""
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def last_seq(self) -> int:
        return len(self.events)

    @property
    def finished(self) -> bool:
        return bool(self.events) and self.events[-1].kind.terminal

    def add(self, event: Event) -> None:
        """Append ``event`` (the next seq) without waking followers; see :meth:`wake`."""
        if event.seq != len(self.events) + 1:
            raise ValueError(f"event {event.seq} does not follow {len(self.events)}")
        self.events.append(event)
        if event.kind is EventKind.RESET:
            self.attempt_start = len(self.events) - 1

    def wake(self) -> None:
        """Let followers read what was added."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def since(self, after: int = 0) -> list[Event]:
        """The current attempt's events with ``seq > after``."""
        return self.events[max(after, self.attempt_start) :]

    def output(self) -> str:
        """The text the current attempt has produced."""
        return "".join(e.message for e in self.since() if e.kind is EventKind.RUNNING)

    async def follow(self, after: int = 0) -> AsyncIterator[list[Event]]:
        """Batches of the current attempt's events after ``after``, live, up to the end.

        A batch holds everything added since the previous one, so a follower
        that falls behind catches up in one step. On a finished log with
        nothing after ``after``, ends at once.
        """
        seen = max(after, 0)
        while True:
            events = self.events
            if len(events) > seen:
                batch = events[max(seen, self.attempt_start) :]
                seen = len(events)
                if batch:
                    yield batch
                if events[-1].kind.terminal:
                    return
            elif self.finished:
                return
            else:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
