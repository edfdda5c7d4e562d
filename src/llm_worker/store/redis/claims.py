"""A worker's claims on jobs: taking one from the queue or from a worker that died,
keeping it by heartbeats, and letting go of it.

A worker claims a job by reading its entry through the consumer group; the entry
stays in the worker's pending list until the job ends. The worker re-claims its
own entries every ``heartbeat_timeout / 3`` seconds, which keeps them fresh;
entries idle for ``heartbeat_timeout`` belong to a worker that died, and another
worker takes them over with ``XAUTOCLAIM``. Each start of a job increments its
``attempt``, and events are accepted only from the current attempt (see
:mod:`.outbox`): a worker that lost its job stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llm_worker.aio.tasks import TaskSet, cancel_requested
from llm_worker.jobs.model import Claim, EventKind, JobSpec, JobState
from llm_worker.ops.logs import about
from llm_worker.store.redis.connection import Connection
from llm_worker.store.redis.layout import GROUP, decoded
from llm_worker.store.redis.limits import TenantGates
from llm_worker.store.redis.queue import dequeue_args
from llm_worker.store.redis.reachability import UNREACHABLE
from llm_worker.store.redis.scripts import (
    DEFER,
    DEQUEUE,
    FORGET,
    HEARTBEAT,
    RELEASE,
    REQUEUE,
    START,
    Started,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Held:
    """A job this worker claimed: its queue entry, its appends so far and the seq
    the last will have, and whether it holds a place among its tenant's running jobs."""

    entry: str
    attempt: int
    tenant: str = ""
    leased: bool = False
    ops: int = 0
    seq: int = 0


Entry = tuple[str, str, str]
"""A queue entry as read: its id, its job's id, its job's tenant."""


class Claims:
    """The jobs this worker holds, and how it comes to hold them and lets them go."""

    def __init__(
        self,
        conn: Connection,
        gates: TenantGates,
        background: TaskSet,
        *,
        worker_name: str,
        heartbeat_timeout: float,
        outage_grace: float,
    ) -> None:
        self._conn = conn
        self._keys = conn.keys
        self._gates = gates
        self._background = background
        self.worker_name = worker_name
        self.heartbeat_timeout = heartbeat_timeout
        self._outage_grace = outage_grace
        self.held: dict[str, Held] = {}
        self.letting_go: dict[str, asyncio.Task[None]] = {}
        self._cancel_callbacks: dict[str, list[Callable[[], None]]] = {}
        self.next_takeover_check = 0.0
        self.wakes = 0
        """Wake notices heard so far (a job queued, a tenant's running place freed)."""
        self._woken = asyncio.Event()

    def woke(self) -> None:
        """A wake notice: a job was queued, or a tenant's running place freed."""
        self.wakes += 1
        self._woken.set()

    # -- claiming ---------------------------------------------------------------

    async def claim(self, max_wait: float) -> Claim | None:
        """The next job this worker may run (its tenant below its limit), taken from a
        dead worker first; ``None`` after ``max_wait`` seconds without one."""
        deadline = time.monotonic() + max_wait
        # Jobs put back since the last wake notice, their tenants running all they may:
        # one met again means every waiting job is such, and the worker waits for a
        # wake (a place freed, a job queued) instead of going round again.
        deferred: set[str] = set()
        wakes = self.wakes
        while True:
            taken_over = False
            entry = None
            if time.monotonic() >= self.next_takeover_check:
                entry = await self._take_over_one()
                taken_over = entry is not None
                # Where there was one, there may be more: look again at the next claim.
                self.next_takeover_check = (
                    0.0 if taken_over else time.monotonic() + self.heartbeat_timeout / 3
                )
            if entry is None:
                entry = await self._read_one(deadline - time.monotonic())
                if entry is None:
                    return None
            _, job_id, tenant = entry
            leased = await self._gates.lease(job_id, tenant)
            if leased is not None:
                claim = await self._start(entry, takeover=taken_over, leased=leased)
                if claim is not None:
                    return claim
                continue
            await self._defer(entry)
            if wakes != self.wakes:  # something changed meanwhile: round again
                deferred.clear()
                wakes = self.wakes
            elif job_id in deferred:
                # Leases of a worker that died run out: look again after a while.
                await self._wait_for_wake(
                    min(deadline - time.monotonic(), self.heartbeat_timeout / 3)
                )
                deferred.clear()
                wakes = self.wakes
            else:
                deferred.add(job_id)
            if time.monotonic() >= deadline:
                return None

    async def _wait_for_wake(self, wait: float) -> None:
        self._woken.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), max(wait, 0))

    async def _defer(self, entry: Entry) -> None:
        """The tenant runs all it may: its job goes to the back of the stream, keeping
        its place in the queue."""
        entry_id, job_id, tenant = entry
        await self._conn.reach.retry(
            lambda: self._conn.grouped(
                lambda: self._conn.run(
                    DEFER,
                    jobs_key=self._keys.jobs_key,
                    group=GROUP,
                    consumer=self.worker_name,
                    entry=entry_id,
                    job_id=job_id,
                    tenant=tenant,
                )
            ),
            deadline=self._outage_grace,
        )

    async def _read_one(self, wait: float) -> Entry | None:
        # Wake at least every heartbeat interval to look for jobs to take over.
        block_ms = int(min(wait, self.heartbeat_timeout / 3) * 1000)
        response = await self._conn.reach.retry(
            lambda: self._conn.grouped(
                lambda: self._conn.blocking.xreadgroup(
                    GROUP,
                    self.worker_name,
                    {self._keys.jobs_key: ">"},
                    count=1,
                    block=block_ms if block_ms > 0 else None,
                )
            ),
            deadline=self._outage_grace,
        )
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                return _entry(entry_id, fields)
        return None

    async def _take_over_one(self) -> Entry | None:
        """An entry of a worker silent for ``heartbeat_timeout``: its job runs here now."""
        result = await self._conn.reach.retry(
            lambda: self._conn.grouped(
                lambda: self._conn.client.xautoclaim(
                    self._keys.jobs_key,
                    GROUP,
                    self.worker_name,
                    min_idle_time=int(self.heartbeat_timeout * 1000),
                    count=1,
                )
            ),
            deadline=self._outage_grace,
        )
        for entry_id, fields in result[1]:
            if fields:
                entry = _entry(entry_id, fields)
                held = self.held.get(entry[1])
                if held is not None and held.entry == entry[0]:
                    # Our own job, idle only because our heartbeats could not get
                    # through (Redis was away): it runs here still, once.
                    continue
                log.warning(
                    "taking over job %s from a worker that stopped answering",
                    entry[1],
                    extra=about(entry[1]),
                )
                return entry
            # Deleted from the stream while pending: nothing to run.
            await self._conn.grouped(
                lambda entry_id=entry_id: self._conn.client.xack(
                    self._keys.jobs_key, GROUP, entry_id
                )
            )
        return None

    async def _start(self, entry: Entry, *, takeover: bool, leased: bool) -> Claim | None:
        entry_id, job_id, tenant = entry

        def dequeue_and_start(pipe: Any) -> None:
            # One round trip: both are safe to repeat.
            self._conn.queue(pipe, DEQUEUE, **dequeue_args(self._conn, job_id))
            self._conn.queue(
                pipe,
                START,
                job_key=self._keys.job_key(job_id),
                events_key=self._keys.events_key(job_id),
                owner=f"{self.worker_name}/{entry_id}",
                takeover=int(takeover),
            )

        _, reply = await self._conn.reach.retry(lambda: self._conn.pipelined(dequeue_and_start))
        started: Started = START.reply(reply)
        if started.refused is not None:
            log.debug(
                "queue entry of job %s skipped: the job is %s",
                job_id,
                started.refused,
                extra=about(job_id),
            )
            # The lease, if any, was taken under the entry's tenant.
            await self.let_go(job_id, Held(entry_id, 0, tenant, leased=leased))
            return None
        held = Held(entry_id, started.attempt, started.tenant, leased=leased, seq=started.seq)
        if held.attempt > 1:  # the start wrote a reset
            notice = [[job_id, held.seq, held.attempt, [[EventKind.RESET.value, ""]]]]
            await self._conn.reach.retry(lambda: self._conn.announce(notice))
        self.held[job_id] = held
        assert started.spec is not None
        return Claim(
            job_id=job_id,
            attempt=started.attempt,
            spec=JobSpec.model_validate_json(started.spec),
            tenant=held.tenant,
            created_at=started.created_at,
        )

    # -- letting go ---------------------------------------------------------------

    def let_go_soon(self, job_id: str, held: Held) -> None:
        """:meth:`let_go` in the background; an append meanwhile waits for it."""
        task = self._background.spawn(self.let_go(job_id, held), name="let-go")
        self.letting_go[job_id] = task
        task.add_done_callback(lambda _: self.letting_go.pop(job_id, None))

    async def let_go(self, job_id: str, held: Held) -> None:
        """Done with a job: its queue entry, and its place among its tenant's running ones."""
        await self._conn.reach.retry(lambda: self._conn.grouped(lambda: self.forget(held.entry)))
        if held.leased:
            await self._gates.free(job_id, held.tenant)

    async def forget(self, entry_id: str) -> bool:
        """Done with a queue entry, unless another worker took it over meanwhile."""
        return await self._conn.run(
            FORGET,
            jobs_key=self._keys.jobs_key,
            group=GROUP,
            consumer=self.worker_name,
            entry=entry_id,
        )

    def cancelled(self, job_id: str) -> None:
        """The job ended elsewhere: this worker's attempt at it, if any, stops."""
        held = self.held.pop(job_id, None)
        if held is not None:
            self.let_go_soon(job_id, held)
        for callback in self._cancel_callbacks.pop(job_id, []):
            try:
                callback()
            except Exception:
                log.exception("cancel callback of job %s failed", job_id, extra=about(job_id))

    def on_cancel(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        callbacks = self._cancel_callbacks.setdefault(job_id, [])
        callbacks.append(callback)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)
            if not callbacks and self._cancel_callbacks.get(job_id) is callbacks:
                del self._cancel_callbacks[job_id]
            held = self.held.pop(job_id, None)
            if held is not None:
                # The job ended without a last event from this worker (it was
                # cancelled, or taken over): its queue entry is done with.
                self.let_go_soon(job_id, held)

        return stop

    async def release(self, job_id: str, attempt: int, reason: str) -> None:
        """The attempt gives the job back: it waits again, in its old place."""
        held = self.held.pop(job_id, None)
        ticket = await self._conn.reach.retry(
            lambda: self._conn.run(RELEASE, job_key=self._keys.job_key(job_id), attempt=attempt),
            deadline=self._outage_grace,
        )
        if held is not None:
            await self.let_go(job_id, held)
        if ticket is None:
            return
        log.info("job %s queued again: %s", job_id, reason, extra=about(job_id))
        tenant, size = await self._conn.reach.retry(
            lambda: self._conn.client.hmget(self._keys.job_key(job_id), ["tenant", "size"]),
            deadline=self._outage_grace,
        )
        await self._conn.reach.retry(
            lambda: self._conn.run(
                REQUEUE,
                jobs_key=self._keys.jobs_key,
                pending_key=self._keys.pending_key,
                counts_key=self._keys.counts_key,
                job_id=job_id,
                ticket=ticket,
                tenant=decoded(tenant or b""),
                size=int(size or 0),
            ),
            deadline=self._outage_grace,
        )

    # -- keeping ------------------------------------------------------------------

    async def heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_timeout / 3)
            try:
                await self.beat()
            except UNREACHABLE as exc:
                self._conn.reach.went_down(exc)
            except Exception:
                log.exception("heartbeat failed")
            if cancel_requested():  # a stop's cancel that the Redis client swallowed
                raise asyncio.CancelledError

    async def beat(self) -> None:
        """Keep this worker's claims fresh; jobs another worker took over are cancelled here."""
        if not self.held:
            return
        held = dict(self.held)
        kept = await self._conn.grouped(
            lambda: self._conn.run(
                HEARTBEAT,
                jobs_key=self._keys.jobs_key,
                group=GROUP,
                consumer=self.worker_name,
                entries=[h.entry for h in held.values()],
            )
        )
        for job_id, h in held.items():
            if h.entry not in kept and self.held.get(job_id) is h:
                log.warning("job %s was taken over by another worker", job_id, extra=about(job_id))
                self.held.pop(job_id, None)
                self.cancelled(job_id)
        leased = [(job_id, h.tenant) for job_id, h in held.items() if h.leased and h.entry in kept]
        if leased:
            await self._gates.renew(leased)

    async def check_held(self) -> None:
        """After a reconnect: cancels may have been missed while we were away."""
        for job_id in list(self.held):
            with contextlib.suppress(*UNREACHABLE):
                state = await self._conn.client.hget(self._keys.job_key(job_id), "state")
                if state is None or decoded(state) != JobState.RUNNING.value:
                    self.cancelled(job_id)

    async def stop_lost_jobs(self) -> None:
        """Redis lost the queue: jobs running here whose records it lost too stop."""
        for job_id, held in list(self.held.items()):
            if not await self._conn.client.exists(self._keys.job_key(job_id)):
                log.error(
                    "job %s, running here, was lost by Redis: stopping it",
                    job_id,
                    extra=about(job_id),
                )
                if self.held.get(job_id) is held:
                    del self.held[job_id]
                self.cancelled(job_id)


def _entry(entry_id: Any, fields: dict[bytes, Any]) -> Entry:
    return decoded(entry_id), decoded(fields[b"job"]), decoded(fields.get(b"tenant", b""))
