"""The Redis job store: the gateway side and the worker side, over one connection.

This is the front: the :class:`~llm_worker.store.base.JobStore` interface, each call
handed to the part that holds it. Where keys live is :mod:`.layout`'s; the scripts
that change them, :mod:`.scripts`'; the clients, :mod:`.connection`'s. A worker's
claims on jobs are :mod:`.claims`', the events it writes :mod:`.outbox`'s, tenants'
limits :mod:`.limits`', who is alive :mod:`.presence`'s; the listing of recent jobs
is :mod:`.listing`'s, riding out outages :mod:`.reachability`'s, and the mirrors of
followed logs :mod:`.mirrors`'.

Every call that fails for want of Redis is retried with back-off: requests of
clients for up to ``outage_grace`` seconds, a worker's events until they get
through. Retried writes are idempotent (an append carries its number within
the attempt; a start, the name of the worker and the entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis

from llm_worker.aio.tasks import TaskSet
from llm_worker.jobs.model import (
    Claim,
    Event,
    EventKind,
    JobRecord,
    JobSpec,
    JobState,
    spec_json,
    stored_kind,
)
from llm_worker.ops.redaction import redact_url
from llm_worker.store.base import (
    JobStore,
    ListingKey,
    StoreStats,
    UnknownJob,
    Unstorable,
    WorkerCensus,
)
from llm_worker.store.limits import UNLIMITED, TenantLimits
from llm_worker.store.redis.claims import Claims
from llm_worker.store.redis.connection import MAX_IN_FLIGHT, Connection
from llm_worker.store.redis.layout import Keys, decoded
from llm_worker.store.redis.limits import TenantGates
from llm_worker.store.redis.listing import RecentJobs, job_record
from llm_worker.store.redis.mirrors import Feed, Mirrors
from llm_worker.store.redis.outbox import Outbox
from llm_worker.store.redis.presence import Presence
from llm_worker.store.redis.queue import JobQueue
from llm_worker.store.redis.reachability import Reachability
from llm_worker.store.waiters import Waiters

log = logging.getLogger(__name__)


class RedisStore(JobStore):
    shared = True

    def __init__(
        self,
        url: str,
        *,
        queue_max: int,
        job_ttl: float,
        queue_max_bytes: int = 1 << 62,
        limits: Callable[[str], TenantLimits] | None = None,
        prefix: str = "llmw",
        heartbeat_timeout: float = 15.0,
        outage_grace: float = 10.0,
        cluster: bool = False,
        follows: bool = True,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.follows = follows
        """Whether this process follows logs and queue positions (a gateway): only then
        is it sent every notice of the events and queue channels, which a worker alone
        would parse for nothing."""
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.job_ttl = job_ttl
        self.prefix = prefix
        self.heartbeat_timeout = heartbeat_timeout
        self.outage_grace = outage_grace
        self.command_timeout = max(1.0, min(5.0, outage_grace / 2))
        """How long a command may go unanswered before Redis counts as unreachable."""
        self.worker_name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.keys = Keys(prefix)
        self._reach = Reachability(outage_grace, redact_url(url), max_in_flight=MAX_IN_FLIGHT)
        self._conn = Connection(
            url,
            keys=self.keys,
            cluster=cluster,
            reach=self._reach,
            command_timeout=self.command_timeout,
            blocking_timeout=heartbeat_timeout / 3 + self.command_timeout,
        )
        self._conn.on_queue_lost = self._queue_lost
        self._background = TaskSet("redis store")
        self._tasks: list[asyncio.Task[None]] = []
        self._queue_waiters: Waiters[None] = Waiters()
        self._queue = JobQueue(
            self._conn,
            queue_max=queue_max,
            queue_max_bytes=queue_max_bytes,
            unqueued_ttl=max(60.0, 4 * outage_grace),  # past every retry of the submit
            finished_ttl_ms=self._ttl,
        )
        self._gates, self._claims, self._outbox, self._presence = self._worker_side(limits)
        self._recent = RecentJobs(self._conn, job_ttl)
        self._mirrors = Mirrors(
            read_events=self._events,
            job_exists=self._job_exists,
            jobs_exist=self._recent.jobs_exist,
            reachability=self._reach,
            background=self._background,
            channel=self.keys.events_channel,
        )

    def _worker_side(
        self, limits: Callable[[str], TenantLimits] | None
    ) -> tuple[TenantGates, Claims, Outbox, Presence]:
        """The parts a worker uses: tenants' limits, its claims, its outbox, its presence."""
        gates = TenantGates(
            self._conn,
            limits or (lambda tenant: UNLIMITED),
            lease_seconds=self.heartbeat_timeout,
            outage_grace=self.outage_grace,
        )
        claims = Claims(
            self._conn,
            gates,
            self._background,
            worker_name=self.worker_name,
            heartbeat_timeout=self.heartbeat_timeout,
            outage_grace=self.outage_grace,
        )
        outbox = Outbox(self._conn, claims, gates, ttl_ms=self._ttl)
        presence = Presence(
            self._conn, self.worker_name, quiet_after=max(5.0, self.heartbeat_timeout / 3)
        )
        return gates, claims, outbox, presence

    @property
    def limits(self) -> Callable[[str], TenantLimits]:
        return self._gates.limits

    @property
    def quiet_after(self) -> float:
        """How long a worker may go unheard before it counts as gone quiet."""
        return self._presence.quiet_after

    def report_commits(self, observe: Callable[[float], None]) -> None:
        self._outbox.on_commit = observe

    @property
    def jobs_key(self) -> str:
        return self.keys.jobs_key

    @property
    def _client(self) -> aioredis.Redis:
        return self._conn.client

    @property
    def _feeds(self) -> dict[str, Feed]:
        return self._mirrors.feeds

    @property
    def _ttl(self) -> int:
        """The TTL of a finished job, in milliseconds."""
        return max(1, round(self.job_ttl * 1000))

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        await self._conn.open(deadline=self.outage_grace)
        self._tasks = [asyncio.create_task(self._outbox.write_forever(), name="redis-writes")]
        # A worker needs to hear of cancels and wakes only; queue moves and logs are
        # for those who show them.
        queue_channels = [self.keys.cancel_channel, self.keys.wake_channel]
        events_channels = []
        if self.follows:
            queue_channels.append(self.keys.moved_channel)
            events_channels.append(self.keys.events_channel)
        # On a cluster, a subscription per shard: one reader waiting on one shard's
        # connection would hold up the messages of another.
        groups = (
            [queue_channels, events_channels]
            if self.cluster
            else [queue_channels + events_channels]
        )
        for channels in filter(None, groups):
            self._tasks.append(
                await self._conn.subscribe(channels, self._notified, self._reconnected)
            )
        self._tasks += [
            asyncio.create_task(self._claims.heartbeat_forever(), name="redis-heartbeat"),
            asyncio.create_task(self._mirrors.poll_forever(), name="redis-feed-poll"),
        ]
        if self.follows:  # gateways add to the index of recent jobs: they trim it too
            self._tasks.append(
                asyncio.create_task(self._recent.sweep_forever(), name="redis-recent-sweep")
            )
        log.info(
            "job store: Redis at %s, keys %s:*, worker %s",
            redact_url(self.url),
            self.prefix,
            self.worker_name,
        )

    async def close(self) -> None:
        # Events on their way, and queue entries being let go of: worth a moment, so
        # that listeners get them and no other worker re-runs the jobs; none while
        # Redis is away (they would not get through, and the stop must not wait).
        away = self._reach.down
        await self._outbox.all_written(0 if away else 2.0)
        await self._background.close(wait=0 if away else 2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._presence.leave()
        await self._conn.close()

    async def outage(self) -> str:
        return await self._reach.outage()

    async def recovered(self) -> None:
        await self._reach.recovered()

    @property
    def away(self) -> str | None:
        return self._reach.away

    async def _queue_lost(self) -> None:
        await self._claims.stop_lost_jobs()
        self._mirrors.check_soon()

    # -- gateway side -------------------------------------------------------

    async def submit(self, spec: JobSpec, tenant: str = "") -> JobRecord:
        try:
            text = spec_json(spec)
        except ValueError as exc:
            raise Unstorable(str(exc)) from None
        await self._gates.take_add(tenant)
        return await self._queue.add(text, tenant, self.limits(tenant))

    async def _fields(self, job_id: str) -> dict[str, str] | None:
        raw = await self._reach.for_client(lambda: self._client.hgetall(self.keys.job_key(job_id)))
        if not raw:
            return None
        return {decoded(k): decoded(v) for k, v in raw.items()}

    async def get(self, job_id: str) -> JobRecord | None:
        fields = await self._fields(job_id)
        return job_record(job_id, fields) if fields is not None else None

    async def read(self, job_id: str, after: int = 0) -> list[Event]:
        fields = await self._fields(job_id)
        if fields is None:
            raise UnknownJob(job_id)
        start = max(after, int(fields.get("start", 0)))
        return await self._reach.for_client(lambda: self._events(job_id, start))

    async def _events(self, job_id: str, after: int, count: int | None = None) -> list[Event]:
        entries = await self._client.xrange(
            self.keys.events_key(job_id), min=f"0-{after + 1}", count=count
        )
        events = []
        for entry_id, fields in entries:
            kind = stored_kind(decoded(fields[b"k"]))
            if kind is None:
                continue  # written by a newer version: left out
            seq = int(decoded(entry_id).partition("-")[2])
            events.append(Event(seq, kind, decoded(fields[b"m"]), int(fields[b"a"])))
        return events

    async def _job_exists(self, job_id: str) -> bool:
        return bool(await self._client.exists(self.keys.job_key(job_id)))

    def follow(self, job_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        return self._mirrors.follow(job_id, after)

    async def cancel(self, job_id: str) -> JobRecord:
        await self._outbox.written_of(job_id)  # what this process appended goes first
        await self._queue.cancel(job_id)
        record = await self.get(job_id)
        if record is None:
            raise UnknownJob(job_id)
        return record

    async def position(self, job_id: str) -> int | None:
        return await self._queue.position(job_id)

    async def queue_moved(self) -> None:
        await self._queue_waiters.wait()

    async def stats(self) -> StoreStats:
        return await self._queue.stats()

    async def recent(
        self,
        state: JobState | None,
        limit: int,
        tenant: str | None,
        below: ListingKey | None = None,
    ) -> list[JobRecord]:
        return await self._recent.list(state, limit, tenant, below)

    async def sweep_recent(self) -> int:
        """Drop from the index of recent jobs the ids of jobs that are gone, among those
        created over JOB_TTL ago; returns how many."""
        return await self._recent.sweep()

    async def workers(self) -> WorkerCensus:
        return await self._presence.census()

    async def owners(self, job_ids: list[str]) -> dict[str, str]:
        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hmget(self.keys.job_key(job_id), ["state", "owner"])
                return list(await pipe.execute())

        rows = await self._reach.for_client(read) if job_ids else []
        return {
            job_id: decoded(owner).rpartition("/")[0]
            for job_id, (state, owner) in zip(job_ids, rows, strict=True)
            if owner is not None and state is not None and decoded(state) == JobState.RUNNING.value
        }

    # -- notifications ------------------------------------------------------

    def _notified(self, channel: str, data: bytes | str) -> None:
        if channel == self.keys.moved_channel:
            self._queue_waiters.wake(None)
        elif channel == self.keys.cancel_channel:
            self._claims.cancelled(decoded(data))
        elif channel == self.keys.wake_channel:
            self._claims.woke()
        elif channel == self.keys.events_channel:
            self._mirrors.apply_notice(data)

    def _reconnected(self) -> None:
        """Notifications may have been lost while the connection was down, and Redis
        may have come back without its data."""
        self._reach.came_back()
        self._mirrors.check_soon()
        self._queue_waiters.wake(None)
        if self._claims.held:
            self._background.spawn(self._claims.check_held(), name="check-held-jobs")

    # -- worker side --------------------------------------------------------

    async def claim(self, max_wait: float) -> Claim | None:
        if not self._presence.present:  # a worker from now on: it says so every second
            self._presence.present = True
            self._tasks.append(
                asyncio.create_task(self._presence.say_forever(), name="redis-presence")
            )
        return await self._claims.claim(max_wait)

    async def append(self, job_id: str, attempt: int, kind: EventKind, message: str = "") -> Event:
        return await self._outbox.append(job_id, attempt, kind, message)

    async def release(self, job_id: str, attempt: int, reason: str) -> None:
        await self._outbox.written_of(job_id)
        await self._claims.release(job_id, attempt, reason)

    def on_cancel(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        return self._claims.on_cancel(job_id, callback)

    async def beat(self) -> None:
        """Keep this worker's claims fresh; jobs another worker took over are cancelled here."""
        await self._claims.beat()
