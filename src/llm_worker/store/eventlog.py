"""A job's log as one process holds it, and the followers waiting on it.

Every store keeps its jobs' logs (or, for a shared store, mirrors of them) in
an :class:`EventLog`, so replaying, following and skipping superseded attempts
work the same whatever the store.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Sequence
from typing import overload

from llm_worker.jobs.model import Event, EventKind
from llm_worker.store.waiters import Waiters


def _seq(event: Event) -> int:
    return event.seq


class _FrozenEvents(Sequence[Event]):
    """A finished log, as tuples of plain values.

    The garbage collector does not track such tuples, so the logs that
    finished jobs keep for their TTL cost nothing to the full collections that
    would otherwise walk every event of them (tens of milliseconds per 100,000
    events, pausing everything). Events are rebuilt when read.
    """

    __slots__ = ("_rows",)

    def __init__(self, events: Sequence[Event]) -> None:
        self._rows = tuple((e.seq, e.kind.value, e.message, e.attempt) for e in events)

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if isinstance(index, slice):
            return [_event(row) for row in self._rows[index]]
        return _event(self._rows[index])


def _event(row: tuple[int, str, str, int]) -> Event:
    return Event(row[0], _KINDS[row[1]], row[2], row[3])


_KINDS = {kind.value: kind for kind in EventKind}


MAX_BATCH = 2048
"""The most events one batch of :meth:`EventLog.follow` holds."""


class EventLog:
    """Events in ``seq`` order; readers see the shown ones, of the current attempt only.

    A writer adds events, then shows them (:meth:`show`): a durable store shows
    an event once it is stored for good, so that no reader ever sees what a
    crash could take back. Until then, :meth:`truncate` can still drop them.

    When a job is run again after its worker died, the new attempt's ``reset``
    event voids what earlier attempts wrote: replays start at the latest
    shown ``reset``, so a listener never mixes two attempts' text. Seqs grow
    by one, except that a ``reset`` may skip some.
    """

    __slots__ = ("_waiters", "attempt_start", "events", "shown")

    def __init__(self) -> None:
        self.events: list[Event] | _FrozenEvents = []
        self.shown = 0
        """How many events readers see: ``events[:shown]``."""
        self.attempt_start = 0
        """Index of the latest shown ``reset`` event (0 when there is none)."""
        self._waiters: Waiters[None] = Waiters()

    @property
    def last_seq(self) -> int:
        """The seq of the last event added, shown or not: the writer's view."""
        return self.events[-1].seq if self.events else 0

    @property
    def ended(self) -> bool:
        """Whether a terminal event was added, shown or not: the writer's view."""
        return bool(self.events) and self.events[-1].kind.terminal

    @property
    def shown_seq(self) -> int:
        """The seq of the last shown event: what a reader may know of."""
        return self.events[self.shown - 1].seq if self.shown else 0

    @property
    def finished(self) -> bool:
        """Whether readers see the job's end."""
        return self.shown > 0 and self.events[self.shown - 1].kind.terminal

    def add(self, event: Event) -> None:
        """Append ``event`` (the next seq), not shown yet; see :meth:`show`."""
        if event.seq <= self.last_seq:
            raise ValueError(f"event {event.seq} does not follow {self.last_seq}")
        if isinstance(self.events, _FrozenEvents):
            raise ValueError("a frozen log takes no more events")
        self.events.append(event)

    def show(self, through: int | None = None) -> None:
        """Let readers see the events up to seq ``through`` (all of them by default),
        and wake the followers."""
        events = self.events
        end = len(events) if through is None else self._index_after(through, len(events))
        if end > self.shown:
            for index in range(self.shown, end):
                if events[index].kind is EventKind.RESET:
                    self.attempt_start = index
            self.shown = end
        self._waiters.wake(None)

    def truncate(self) -> int:
        """Drop the events not shown yet; returns how many."""
        dropped = len(self.events) - self.shown
        if dropped:
            del self.events[self.shown :]  # type: ignore[union-attr]
        return dropped

    def freeze(self) -> None:
        """Keep the (finished, wholly shown) log in a form the garbage collector need not walk."""
        if not isinstance(self.events, _FrozenEvents) and self.shown == len(self.events):
            self.events = _FrozenEvents(self.events)

    def _index_after(self, after: int, hi: int) -> int:
        """Index of the first event with ``seq > after``, among the first ``hi``."""
        return bisect.bisect_right(self.events, after, hi=hi, key=_seq)

    def since(self, after: int = 0) -> list[Event]:
        """The current attempt's shown events with ``seq > after``."""
        shown = self.shown
        return self.events[max(self._index_after(after, shown), self.attempt_start) : shown]

    async def follow(self, after: int = 0) -> AsyncIterator[list[Event]]:
        """Batches of the current attempt's shown events after ``after``, live, to the end.

        A batch holds everything shown since the previous one, so a follower
        that falls behind catches up in one step. On a finished log with
        nothing after ``after``, yields the terminal event alone: a listener
        always learns how the job ended.
        """
        seen = self._index_after(after, self.shown)
        if self.finished and seen == self.shown:
            yield [self.events[self.shown - 1]]
            return
        while True:
            shown = self.shown
            if shown > seen and self.events[seen].seq <= after:
                # The log was behind the listener (a mirror still loading, say):
                # what it already saw is not sent again.
                seen = self._index_after(after, shown)
            if shown > seen:
                # A replay of a long log comes in pieces: what a follower holds is bounded.
                start = max(seen, self.attempt_start)
                end = min(shown, start + MAX_BATCH)
                batch = self.events[start:end]
                seen = end
                if batch:
                    yield batch
                if end == shown and self.events[shown - 1].kind.terminal:
                    return
            elif self.finished:
                return
            else:
                await self._waiters.wait()
