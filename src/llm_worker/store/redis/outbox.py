"""What a worker's jobs append, written to Redis in rounds.

A worker does not wait for Redis at each event: what its jobs append meanwhile
goes in one pipelined round trip (a script call per job, carrying all of that
job's new events), one round after the other, as SQLite's rounds do; a job's
last event waits for its round. Each round also tells followers what the round
before wrote, and lets go of the queue entries of the jobs it ended.

Events are accepted only from the attempt that holds the job: a worker that lost
its job (it was cancelled, or taken over after a long pause) has its next round's
events for it refused, and stops the job. A round is retried until it gets
through; an append carries its number within the attempt, so a retried round
writes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from llm_worker.aio.tasks import cancel_requested
from llm_worker.jobs.model import Event, EventKind
from llm_worker.store.base import NotOwner
from llm_worker.store.redis.claims import Claims, Held
from llm_worker.store.redis.connection import Connection
from llm_worker.store.redis.layout import GROUP, encode_notice
from llm_worker.store.redis.limits import FREE_COMMANDS, TenantGates
from llm_worker.store.redis.scripts import APPEND, FORGET

log = logging.getLogger(__name__)

T = TypeVar("T")
# Events a worker may hold unwritten (Redis slow or away) before appends wait.
_MAX_UNWRITTEN = 10_000


@dataclass(slots=True)
class Batch:
    """One job's events not yet written, and who waits for them to be."""

    attempt: int
    events: list[tuple[str, str]]
    last_op: int = 0
    written: asyncio.Future[int] | None = None
    ended: Held | None = None
    """The job, when the batch ends it: let go of once the batch is written."""


class Outbox:
    """The events this worker's jobs appended and Redis does not have yet."""

    def __init__(
        self,
        conn: Connection,
        claims: Claims,
        gates: TenantGates,
        *,
        ttl_ms: int,
        tombstone_ms: int,
    ) -> None:
        self._conn = conn
        self._keys = conn.keys
        self._claims = claims
        self._gates = gates
        self._ttl_ms = ttl_ms
        self._tombstone_ms = tombstone_ms
        self._batches: dict[str, Batch] = {}
        self._unwritten = 0
        self._ready = asyncio.Event()
        self._all_written = asyncio.Event()
        self._all_written.set()
        self.on_commit: Callable[[float], None] = lambda seconds: None
        """Told how long each round took."""

    async def append(self, job_id: str, attempt: int, kind: EventKind, message: str = "") -> Event:
        """The event, numbered, to be written by the next round; a terminal one is
        returned once written. :class:`NotOwner` if the attempt lost the job."""
        held = self._claims.held.get(job_id)
        if held is None or held.attempt != attempt:
            if (letting_go := self._claims.letting_go.get(job_id)) is not None:
                await asyncio.shield(letting_go)  # NotOwner means the job is let go of
            raise NotOwner(f"job {job_id} is no longer held by attempt {attempt}")
        held.ops += 1
        held.seq += 1  # while the attempt holds the job, only it appends
        batch = self._batches.get(job_id)
        if batch is None:
            batch = self._batches[job_id] = Batch(attempt, [])
        batch.events.append((kind.value, message))
        batch.last_op = held.ops
        self._unwritten += 1
        self._ready.set()
        self._all_written.clear()
        event = Event(held.seq, kind, message, attempt)
        if kind.terminal:
            # The round after the one that writes it lets go of the job's queue entry.
            batch.ended = held
            await _written(batch)
        elif self._unwritten > _MAX_UNWRITTEN:
            await _written(batch)  # Redis is slow or away: wait for room
        return event

    async def written_of(self, job_id: str) -> None:
        """Once what this process appended to the job is written (or refused)."""
        if (batch := self._batches.get(job_id)) is not None:
            with contextlib.suppress(NotOwner):
                await _written(batch)

    async def all_written(self, timeout: float) -> None:
        """Once every event appended is written, or after ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_written.wait(), timeout)

    async def write_forever(self) -> None:
        """Writes what jobs append, round after round: each round takes everything
        appended while the one before was on its way."""
        notice: list[list[Any]] = []
        ended: list[tuple[str, Held]] = []
        while True:
            if not self._batches and (notice or ended):
                await self._persist(lambda n=notice, e=ended: self._write({}, n, e))
                notice, ended = [], []
            if not self._unwritten:
                self._all_written.set()
            await self._ready.wait()
            self._ready.clear()
            batches, self._batches = self._batches, {}
            if not batches:
                continue
            started = time.perf_counter()
            seqs = await self._persist(lambda b=batches, n=notice, e=ended: self._write(b, n, e))
            self.on_commit(time.perf_counter() - started)
            notice, ended = [], []
            for (job_id, batch), seq in zip(batches.items(), seqs, strict=True):
                self._unwritten -= len(batch.events)
                if seq is None:
                    self._refused(job_id, batch)
                    continue
                notice.append([job_id, seq, batch.attempt, batch.events])
                if batch.ended is not None and self._claims.held.get(job_id) is batch.ended:
                    del self._claims.held[job_id]
                    ended.append((job_id, batch.ended))
                if batch.written is not None:
                    batch.written.set_result(seq)

    async def _persist(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until it succeeds: through outages, and through errors Redis
        answers (out of memory, say), which are logged."""
        delay = 0.05
        while True:
            try:
                return await self._conn.reach.retry(call)
            except ResponseError as exc:
                log.error("Redis refused a write of job events: %s; retrying", exc)
                if cancel_requested():  # a stop's cancel that the Redis client swallowed
                    raise asyncio.CancelledError from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _write(
        self,
        batches: dict[str, Batch],
        notice: list[list[Any]],
        ended: list[tuple[str, Held]],
    ) -> list[int | None]:
        """One round trip: the notice of the round before, each job's new events, and
        the queue entries of the jobs the round before ended. Returns each job's last
        seq, or ``None`` where the attempt lost the job."""
        now = repr(time.time())

        def write(pipe: Any) -> None:
            if notice:
                pipe.execute_command(
                    self._conn.publish_command, self._keys.events_channel, encode_notice(notice)
                )
            for job_id, batch in batches.items():
                self._conn.queue(
                    pipe,
                    APPEND,
                    job_key=self._keys.job_key(job_id),
                    events_key=self._keys.events_key(job_id),
                    gone_key=self._keys.gone_key(job_id),
                    attempt=batch.attempt,
                    last_op=batch.last_op,
                    ttl_ms=self._ttl_ms,
                    now=now,
                    tombstone_ms=self._tombstone_ms,
                    events=[part for event in batch.events for part in event],
                )
            for job_id, held in ended:
                self._conn.queue(
                    pipe,
                    FORGET,
                    jobs_key=self._keys.jobs_key,
                    group=GROUP,
                    consumer=self._claims.worker_name,
                    entry=held.entry,
                )
                if held.leased:
                    self._gates.queue_free(pipe, job_id, held.tenant)

        # Letting go may fail (the queue lost with Redis's data, say): an entry left
        # behind is taken over once idle, and let go of then, its job being over.
        letting_go = sum(1 + (FREE_COMMANDS if held.leased else 0) for _, held in ended)
        results = await self._conn.pipelined(write, optional=letting_go)
        first = 1 if notice else 0
        return [APPEND.reply(seq) for seq in results[first : first + len(batches)]]

    def _refused(self, job_id: str, batch: Batch) -> None:
        """The attempt no longer holds the job (cancelled, taken over, queued again)."""
        held = self._claims.held.get(job_id)
        if held is not None and held.attempt == batch.attempt:
            del self._claims.held[job_id]
            self._claims.let_go_soon(job_id, held)
            self._claims.cancelled(job_id)
        if batch.written is not None:
            batch.written.set_exception(
                NotOwner(f"job {job_id} is no longer held by attempt {batch.attempt}")
            )


async def _written(batch: Batch) -> int:
    """Once ``batch`` is written, its last seq; :class:`NotOwner` if it was refused."""
    if batch.written is None:
        batch.written = asyncio.get_running_loop().create_future()
        # Its outcome is taken even when the waiter is gone (its job was cancelled).
        batch.written.add_done_callback(lambda f: f.cancelled() or f.exception())
    return await asyncio.shield(batch.written)
