"""One listening path: what a listener is sent of one job, read from its log.

A :class:`Follower` turns a job's log into the frames one listener gets, in its
dialect (:class:`~llm_worker.wire.dialects.Relay`): replayed from after the seq
it asks for, consecutive deltas merged, what the dialect does not show left out,
ending after the job's terminal event, or sooner when the dialect says the
listening ends (a seed listener shown text of an attempt that was reset). Each
frame comes encoded once, its ``type`` and ``seq`` beside it, so a transport
sends it as it is: the WebSocket its text, an event stream its ``id:``,
``event:`` and ``data:`` lines. The transports (:mod:`.websocket`,
:mod:`.http_api`) are shells around it that write what it yields.

The follower also measures the latency the worker adds (the first text a listener
is sent, once it is sent) for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from llm_worker.jobs.model import Event, has_text
from llm_worker.ops.metrics import Metrics
from llm_worker.store import JobStore
from llm_worker.wire import protocol
from llm_worker.wire.dialects import Dialect, Relay
from llm_worker.wire.events import Frame


class Follower:
    """What one listener is sent of the job ``job_id``, from the event after ``after``."""

    __slots__ = ("_awaiting_text", "_metrics", "_relay", "_since", "_store", "after", "job_id")

    def __init__(
        self, store: JobStore, metrics: Metrics, job_id: str, dialect: Dialect, after: int
    ) -> None:
        self._store = store
        self._metrics = metrics
        self.job_id = job_id
        self.after = after
        self._relay = Relay(job_id, dialect, after)
        # For the latency the worker adds: measured at the first text, if it came after this.
        self._awaiting_text = True
        self._since = 0.0

    async def frames(self) -> AsyncIterator[list[Frame]]:
        """The frames of each batch of the job's log, as the listener is to get them
        (a batch may give none), until the listening ends; :class:`UnknownJob` for a
        job the store does not know."""
        self._since = time.perf_counter()
        async for batch in self._store.follow(self.job_id, self.after):
            yield self._relay.frames(batch)
            self._sent(batch)
            if self._relay.finished:
                return

    async def watch(self, idle_seconds: float) -> AsyncIterator[list[Frame] | None]:
        """:meth:`frames`, and before them a ``pending`` frame each time the waiting job's
        place in the queue changes; ``None`` after each ``idle_seconds`` with nothing to
        send (a transport's cue to show it is still there)."""
        self._since = time.perf_counter()
        position = await self._store.position(self.job_id)
        if position is not None:
            yield [self._pending(position)]
        batches = self._store.follow(self.job_id, self.after).__aiter__()
        queue_moved: asyncio.Future[None] | None = None
        next_batch: asyncio.Future[list[Event]] | None = None
        try:
            while True:
                if next_batch is None:
                    next_batch = asyncio.ensure_future(batches.__anext__())
                waits: set[asyncio.Future[Any]] = {next_batch}
                if position is not None:
                    if queue_moved is None:
                        queue_moved = asyncio.ensure_future(self._store.queue_moved())
                    waits.add(queue_moved)
                done, _ = await asyncio.wait(waits, timeout=idle_seconds)
                if not done:
                    yield None
                    continue
                if queue_moved is not None and queue_moved in done:
                    queue_moved = None
                    moved_to = await self._store.position(self.job_id)
                    if moved_to is not None and moved_to != position:
                        yield [self._pending(moved_to)]
                    position = moved_to
                if next_batch not in done:
                    continue
                try:
                    batch = next_batch.result()
                except StopAsyncIteration:
                    return
                next_batch = None
                position = None  # started, or ended: its place is of no more interest
                yield self._relay.frames(batch)
                self._sent(batch)
                if self._relay.finished:
                    return
        finally:
            for future in (queue_moved, next_batch):
                if future is not None:
                    future.cancel()
            with contextlib.suppress(Exception):
                await batches.aclose()  # type: ignore[attr-defined]

    def _pending(self, position: int) -> Frame:
        return Frame(protocol.pending(self.job_id, position), "pending")

    def _sent(self, batch: list[Event]) -> None:
        """The frames of ``batch`` have been sent."""
        if self._awaiting_text and has_text(batch):
            self._awaiting_text = False
            self._metrics.first_frame_sent(self.job_id, self._since, time.perf_counter())
