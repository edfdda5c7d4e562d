"""The Redis job store: the gateway side and the worker side, over one client.

Where it keeps what, and the scripts that change it, are :mod:`.layout`'s; riding out
outages is :mod:`.reachability`'s, and the mirrors of followed logs :mod:`.mirrors`'.

A worker does not wait for Redis at each event: what its jobs append meanwhile
goes in one pipelined round trip (a script call per job, carrying all of that
job's new events), one round after the other, as SQLite's rounds do; a job's
last event waits for its round.

A worker claims a job by reading its entry through the consumer group; the
entry stays in the worker's pending list until the job ends. The worker
re-claims its own entries every ``heartbeat_timeout / 3`` seconds, which keeps
them fresh; entries idle for ``heartbeat_timeout`` belong to a worker that
died, and another worker takes them over with ``XAUTOCLAIM``. Each start of a
job increments its ``attempt``, and events are accepted only from the current
attempt: a worker that lost its job (it was cancelled, or taken over after a
long pause) has its next round's events for it refused, and stops the job.

Every call that fails for want of Redis is retried with back-off: requests of
clients for up to ``outage_grace`` seconds, a worker's events until they get
through. Retried writes are idempotent (an append carries its number within
the attempt; a start, the name of the worker and the entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

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
from llm_worker.ops.logs import about
from llm_worker.ops.redaction import redact_url
from llm_worker.store.base import (
    JobStore,
    ListingKey,
    NotOwner,
    QueueFull,
    RateLimited,
    StoreStats,
    StoreUnavailable,
    UnknownJob,
    Unstorable,
    WorkerCensus,
)
from llm_worker.store.limits import UNLIMITED, TenantLimits
from llm_worker.store.redis.layout import GROUP, SCRIPTS, Keys, decoded, encode_notice
from llm_worker.store.redis.mirrors import Feed, Mirrors
from llm_worker.store.redis.reachability import UNREACHABLE, Reachability
from llm_worker.store.waiters import Waiters

log = logging.getLogger(__name__)

T = TypeVar("T")
# Ids of the index of recent jobs read at once, by a listing or a sweep of it.
_RECENT_PAGE = 500
# How often a worker says it is alive, and how long one silent is remembered (as quiet).
_PRESENCE_SECONDS = 1.0
_FORGET_SILENT_SECONDS = 600.0
# While Redis is known to be away, how long a request that needs it gets to find it back.
_FAST_TRY_SECONDS = 0.5
_RECORD_FIELDS = ("state", "created_at", "attempt", "error", "finished_at", "tenant")


@dataclass(slots=True)
class _Held:
    """A job this worker claimed: its queue entry, its appends so far and the seq
    the last will have, and whether it holds a place among its tenant's running jobs."""

    entry: str
    attempt: int
    tenant: str = ""
    leased: bool = False
    ops: int = 0
    seq: int = 0


@dataclass(slots=True)
class _Batch:
    """One job's events not yet written, and who waits for them to be."""

    attempt: int
    events: list[tuple[str, str]]
    last_op: int = 0
    written: asyncio.Future[int] | None = None
    ended: _Held | None = None
    """The job, when the batch ends it: let go of once the batch is written."""


# Events a worker may hold unwritten (Redis slow or away) before appends wait.
_MAX_UNWRITTEN = 10_000
# Commands on their way at once, each on a connection of its own: a gateway whose
# clients follow thousands of jobs must not open thousands of connections (nor
# exceed a cluster client's connections per node, which fails the command and then
# closes every connection of the client, the other commands' included).
_MAX_IN_FLIGHT = 64
_MAX_CONNECTIONS = 2 * _MAX_IN_FLIGHT


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
        """A Redis Cluster: notices go by sharded pub/sub, each channel in one slot."""
        self.follows = follows
        """Whether this process follows logs and queue positions (a gateway): only then
        is it sent every notice of the events and queue channels, which a worker alone
        would parse for nothing."""
        self._publish = "SPUBLISH" if cluster else "PUBLISH"
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.limits = limits or (lambda tenant: UNLIMITED)
        self.job_ttl = job_ttl
        self.prefix = prefix
        self.heartbeat_timeout = heartbeat_timeout
        self.outage_grace = outage_grace
        self.command_timeout = max(1.0, min(5.0, outage_grace / 2))
        """How long a command may go unanswered before Redis counts as unreachable."""
        self.worker_name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.keys = Keys(prefix)
        self._redis: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None
        self._notifier: Any = None
        self._pubsubs: list[Any] = []
        self._scripts: dict[str, Any] = {}
        self._held: dict[str, _Held] = {}
        self._letting_go: dict[str, asyncio.Task[None]] = {}
        self._cancel_callbacks: dict[str, list[Callable[[], None]]] = {}
        self._queue_waiters: Waiters[None] = Waiters()
        self._tasks: list[asyncio.Task[None]] = []
        self._background = TaskSet("redis store")
        self._reach = Reachability(outage_grace, self._safe_url(), max_in_flight=_MAX_IN_FLIGHT)
        self._mirrors = Mirrors(
            read_events=self._events,
            job_exists=self._job_exists,
            jobs_exist=self._jobs_exist,
            reachability=self._reach,
            background=self._background,
            channel=self.keys.events_channel,
        )
        self._next_takeover_check = 0.0
        self._outbox: dict[str, _Batch] = {}
        self._unwritten = 0
        self._outbox_ready = asyncio.Event()
        self._all_written = asyncio.Event()
        self._all_written.set()
        self._on_commit: Callable[[float], None] = lambda seconds: None
        self._present = False
        self._wakes = 0
        """Wake notices heard so far (a job queued, a tenant's running place freed)."""
        self._woken = asyncio.Event()
        """Whether this process claims jobs, and so says it is alive."""
        self.quiet_after = max(5.0, heartbeat_timeout / 3)
        """How long a worker may go unheard before it counts as gone quiet."""

    def report_commits(self, observe: Callable[[float], None]) -> None:
        self._on_commit = observe

    # -- keys, as tests reach them ------------------------------------------

    @property
    def jobs_key(self) -> str:
        return self.keys.jobs_key

    def _job_key(self, job_id: str) -> str:
        return self.keys.job_key(job_id)

    def _events_key(self, job_id: str) -> str:
        return self.keys.events_key(job_id)

    @property
    def _feeds(self) -> dict[str, Feed]:
        return self._mirrors.feeds

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        # A Redis that stops answering (paused, a network partition) shows as
        # timeouts, so that the outage is noticed and ridden out like any other.
        timeout = self.command_timeout
        client_class = aioredis.RedisCluster if self.cluster else aioredis.Redis
        self._redis = client_class.from_url(
            self.url,
            decode_responses=False,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=_MAX_CONNECTIONS,
        )
        # Blocking reads of the queue get their own connection pool, and time to block.
        self._blocking = client_class.from_url(
            self.url,
            decode_responses=False,
            socket_timeout=self.heartbeat_timeout / 3 + timeout,
            socket_connect_timeout=timeout,
        )
        # Notifications too: a subscribed connection is never lent to commands.
        self._notifier = client_class.from_url(
            self.url, decode_responses=False, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        redis = self._redis
        for client in (redis, self._notifier):
            if isinstance(client, aioredis.RedisCluster):
                await self._reach.retry(client.initialize, deadline=self.outage_grace)
        for name, source in SCRIPTS.items():
            self._scripts[name] = redis.register_script(source)
        await self._reach.retry(self._load_scripts, deadline=self.outage_grace)
        await self._reach.retry(self._create_group, deadline=self.outage_grace)
        self._tasks = [asyncio.create_task(self._write_forever(), name="redis-writes")]
        # A worker needs to hear of cancels only; queue moves and logs are for those
        # who show them.
        queue_channels = [self.keys.cancel_channel, self.keys.wake_channel]
        events_channels = []
        if self.follows:
            queue_channels.append(self.keys.moved_channel)
            events_channels.append(self.keys.events_channel)
        # On a cluster, a subscription per shard: one reader waiting on one shard's
        # connection would hold up the messages of another.
        if self.cluster:
            groups = [queue_channels, events_channels]
        else:
            groups = [queue_channels + events_channels]
        for group in filter(None, groups):
            pubsub = self._notifier.pubsub()
            if self.cluster:
                await pubsub.ssubscribe(*group)
            else:
                await pubsub.subscribe(*group)
            self._pubsubs.append(pubsub)
            self._tasks.append(
                asyncio.create_task(
                    self._read_notifications(pubsub), name=f"redis-notifications-{group[0]}"
                )
            )
        self._tasks += [
            asyncio.create_task(self._heartbeat_forever(), name="redis-heartbeat"),
            asyncio.create_task(self._mirrors.poll_forever(), name="redis-feed-poll"),
        ]
        if self.follows:  # gateways add to the index of recent jobs: they trim it too
            self._tasks.append(
                asyncio.create_task(self._sweep_recent_forever(), name="redis-recent-sweep")
            )
        log.info(
            "job store: Redis at %s, keys %s:*, worker %s",
            self._safe_url(),
            self.prefix,
            self.worker_name,
        )

    async def close(self) -> None:
        # Events on their way, and queue entries being let go of: worth a moment, so
        # that listeners get them and no other worker re-runs the jobs; none while
        # Redis is away (they would not get through, and the stop must not wait).
        away = self._reach.down
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_written.wait(), 0 if away else 2.0)
        await self._background.close(wait=0 if away else 2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._present and not self._reach.down:  # gone, not quiet
            with contextlib.suppress(*UNREACHABLE, TimeoutError):
                await asyncio.wait_for(
                    self._client.zrem(self.keys.workers_key, self.worker_name), 1.0
                )
        for pubsub in self._pubsubs:
            with contextlib.suppress(*UNREACHABLE):
                await pubsub.aclose()
        for client in (self._redis, self._blocking, self._notifier):
            if client is not None:
                with contextlib.suppress(*UNREACHABLE):
                    await client.aclose()

    def _safe_url(self) -> str:
        return redact_url(self.url)

    async def _create_group(self) -> None:
        try:
            await self._client.xgroup_create(self.keys.jobs_key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _grouped(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, making the queue again first when Redis has lost it.

        Redis loses the queue and its consumer group when it restarts without its
        data, or fails over to a replica that did not have them: every call on
        the group then fails with NOGROUP until it exists again.
        """
        try:
            return await call()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        await self._queue_lost()
        return await call()

    async def _queue_lost(self) -> None:
        log.error(
            "Redis has lost the job queue (restarted without its data, or a replica without "
            "it took over): making it again; the jobs it held are lost"
        )
        await self._create_group()
        for job_id, held in list(self._held.items()):
            if not await self._client.exists(self.keys.job_key(job_id)):
                log.error(
                    "job %s, running here, was lost by Redis: stopping it",
                    job_id,
                    extra=about(job_id),
                )
                if self._held.get(job_id) is held:
                    del self._held[job_id]
                self._cancelled(job_id)
        self._mirrors.check_soon()

    @property
    def _client(self) -> aioredis.Redis:
        assert self._redis is not None, "the store was not started"
        return self._redis

    async def outage(self) -> str:
        return await self._reach.outage()

    async def recovered(self) -> None:
        await self._reach.recovered()

    @property
    def away(self) -> str | None:
        return self._reach.away

    # -- gateway side -------------------------------------------------------

    async def submit(self, spec: JobSpec, tenant: str = "") -> JobRecord:
        try:
            text = spec_json(spec)
        except ValueError as exc:
            raise Unstorable(str(exc)) from None
        limits = self.limits(tenant)
        if limits.adds_per_minute:
            wait_ms = await self._reach.unless_away(
                lambda: self._scripts["rate"](
                    keys=[self.keys.rate_key(tenant)],
                    args=[60_000 / limits.adds_per_minute, 60_000],
                ),
                _FAST_TRY_SECONDS,
            )
            if wait_ms:
                raise RateLimited(tenant, limits.adds_per_minute, float(wait_ms) / 1000)
        job_id = str(uuid.uuid4())
        now = time.time()
        job_key = self.keys.job_key(job_id)
        fields = {
            "state": JobState.PENDING.value,
            "attempt": 0,
            "seq": 0,
            "start": 0,
            "op": 0,
            "spec": text,
            "tenant": tenant,
            "size": len(text),
            "created_at": repr(now),
        }
        # The record expires unless the submit below goes through. Fast when Redis is
        # known to be away: the client is told at once.
        record = [int(self._unqueued_ttl * 1000)]
        for name, value in fields.items():
            record += (name, value)
        await self._reach.unless_away(
            lambda: self._scripts["record"](keys=[job_key], args=record), _FAST_TRY_SECONDS
        )
        max_queued = limits.max_queued_jobs
        ticket = await self._reach.for_client(
            lambda: self._scripts["submit"](
                keys=[
                    self.keys.jobs_key,
                    self.keys.pending_key,
                    self.keys.tickets_key,
                    self.keys.counts_key,
                    self.keys.recent_key,
                ],
                args=[
                    job_id,
                    self.queue_max,
                    tenant,
                    -1 if max_queued is None else max_queued,
                    len(text),
                    self.queue_max_bytes,
                    repr(now),
                    self.keys.wake_channel,
                    self._publish,
                ],
            )
        )
        if ticket < 0:
            await self._reach.for_client(lambda: self._client.delete(job_key))
            if ticket == -3:
                raise QueueFull.of_tenant(tenant, max_queued or 0)
            if ticket == -4:
                raise QueueFull.of_bytes(self.queue_max_bytes)
            raise QueueFull.of_jobs(self.queue_max)
        kept = await self._reach.for_client(
            lambda: self._scripts["keep"](keys=[job_key], args=[ticket])
        )
        if not kept:  # Redis was away for longer than the record's TTL
            raise StoreUnavailable("the job store (Redis) lost the job while adding it")
        return JobRecord(id=job_id, state=JobState.PENDING, created_at=now, tenant=tenant)

    async def _fields(self, job_id: str) -> dict[str, str] | None:
        raw = await self._reach.for_client(lambda: self._client.hgetall(self.keys.job_key(job_id)))
        if not raw:
            return None
        return {decoded(k): decoded(v) for k, v in raw.items()}

    @staticmethod
    def _record(job_id: str, fields: dict[str, str]) -> JobRecord:
        finished_at = fields.get("finished_at")
        return JobRecord(
            id=job_id,
            state=JobState(fields["state"]),
            created_at=float(fields.get("created_at", 0)),
            attempt=int(fields.get("attempt", 0)),
            error=fields.get("error"),
            finished_at=float(finished_at) if finished_at else None,
            tenant=fields.get("tenant", ""),
        )

    async def get(self, job_id: str) -> JobRecord | None:
        fields = await self._fields(job_id)
        return self._record(job_id, fields) if fields is not None else None

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

    async def _jobs_exist(self, job_ids: list[str]) -> list[bool]:
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(self.keys.job_key(job_id))
            return [bool(exists) for exists in await pipe.execute()]

    def follow(self, job_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        return self._mirrors.follow(job_id, after)

    async def cancel(self, job_id: str) -> JobRecord:
        await self._unwritten_of(job_id)  # what this process appended goes first
        before = decoded(
            await self._reach.for_client(
                lambda: self._scripts["cancel"](
                    keys=[self.keys.job_key(job_id), self.keys.events_key(job_id)],
                    args=[self._ttl, repr(time.time())],
                )
            )
        )
        if before == "missing":
            raise UnknownJob(job_id)
        if before in ("pending", "running"):
            await self._reach.for_client(lambda: self._announce([[job_id, 0]]))
        if before in ("pending", "cancelled"):
            await self._reach.for_client(lambda: self._dequeue(job_id))
        elif before == "running":
            await self._reach.for_client(
                lambda: self._client.execute_command(
                    self._publish, self.keys.cancel_channel, job_id
                )
            )
        record = await self.get(job_id)
        if record is None:
            raise UnknownJob(job_id)
        return record

    async def position(self, job_id: str) -> int | None:
        rank = await self._reach.for_client(
            lambda: self._client.zrank(self.keys.pending_key, job_id)
        )
        return None if rank is None else rank + 1

    async def queue_moved(self) -> None:
        await self._queue_waiters.wait()

    async def stats(self) -> StoreStats:
        pending = await self._reach.for_client(lambda: self._client.zcard(self.keys.pending_key))
        summary = await self._reach.for_client(
            lambda: self._grouped(lambda: self._client.xpending(self.keys.jobs_key, GROUP))
        )
        return StoreStats(pending=int(pending), running=int(summary["pending"]))

    # Recent jobs come from an index kept for them, a sorted set of job ids by
    # created_at that the submit script adds to with the queue (one ZADD in the slot it
    # writes anyway). The other way, SCAN over the jobs' keys, reads the whole keyspace
    # (every node's, on a cluster) and fetches and sorts every job at each listing; with
    # the index a listing reads the newest ids and their records, a page at a time, and
    # goes further only while a filter skips some. Redis expires a finished job's hash
    # without telling the index, so ids whose job is gone are dropped where a listing
    # meets them, and each gateway sweeps those created over JOB_TTL ago (no younger
    # job can have expired): the index stays about the size of the jobs kept.

    async def recent(
        self,
        state: JobState | None,
        limit: int,
        tenant: str | None,
        below: ListingKey | None = None,
    ) -> list[JobRecord]:
        # Members of one score come in reverse order of their ids: a ListingKey's order.
        found: list[JobRecord] = []
        high = math.inf if below is None else below.created_at  # the page starts at this score...
        ties = 0  # ...past the ids at that very score seen (and kept) already
        while len(found) < limit:
            top = "+inf" if high == math.inf else repr(high)
            page = await self._reach.for_client(
                lambda top=top, ties=ties: self._client.zrevrangebyscore(
                    self.keys.recent_key,
                    top,
                    "-inf",
                    start=ties,
                    num=_RECENT_PAGE,
                    withscores=True,
                )
            )
            if not page:
                break
            ids = [decoded(member) for member, _ in page]
            records = await self._reach.for_client(lambda ids=ids: self._records(ids))
            gone = [job_id for job_id, record in zip(ids, records, strict=True) if record is None]
            if gone:
                await self._reach.for_client(
                    lambda gone=gone: self._client.zrem(self.keys.recent_key, *gone)
                )
            last = float(page[-1][1])
            kept_at_last = sum(
                1
                for (_, score), record in zip(page, records, strict=True)
                if record is not None and float(score) == last
            )
            ties = ties + kept_at_last if last == high else kept_at_last
            high = last
            found += [
                record
                for record in records
                if record is not None
                and (state is None or record.state is state)
                and (tenant is None or record.tenant == tenant)
                and (below is None or ListingKey.of(record) < below)
            ]
        return found[:limit]

    async def _records(self, job_ids: list[str]) -> list[JobRecord | None]:
        """The jobs' records, ``None`` for each job that is gone: one round trip."""
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.keys.job_key(job_id), list(_RECORD_FIELDS))
            rows = await pipe.execute()
        records: list[JobRecord | None] = []
        for job_id, values in zip(job_ids, rows, strict=True):
            fields = {
                name: decoded(value)
                for name, value in zip(_RECORD_FIELDS, values, strict=True)
                if value is not None
            }
            records.append(self._record(job_id, fields) if "state" in fields else None)
        return records

    async def sweep_recent(self) -> int:
        """Drop from the index of recent jobs the ids of jobs that are gone, among those
        created over JOB_TTL ago; returns how many."""
        horizon = repr(time.time() - self.job_ttl)
        removed = 0
        offset = 0
        while True:
            page = await self._client.zrangebyscore(
                self.keys.recent_key, "-inf", horizon, start=offset, num=_RECENT_PAGE
            )
            if not page:
                return removed
            ids = [decoded(member) for member in page]
            exists = await self._jobs_exist(ids)
            gone = [job_id for job_id, alive in zip(ids, exists, strict=True) if not alive]
            if gone:
                removed += int(await self._client.zrem(self.keys.recent_key, *gone))
            offset += len(ids) - len(gone)

    async def _sweep_recent_forever(self) -> None:
        interval = min(max(self.job_ttl / 4, 1.0), 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self.sweep_recent()
            except UNREACHABLE as exc:
                self._reach.went_down(exc)
                continue
            except Exception:
                log.exception("sweeping the index of recent jobs failed")
                continue
            if removed:
                log.debug("dropped %d expired jobs from the index of recent jobs", removed)

    @property
    def _unqueued_ttl(self) -> float:
        """How long a new job's record lasts until its submit goes through: past
        every retry of the submit."""
        return max(60.0, 4 * self.outage_grace)

    @property
    def _ttl(self) -> int:
        """The TTL of a finished job, in milliseconds."""
        return max(1, round(self.job_ttl * 1000))

    # -- notifications ------------------------------------------------------

    async def _read_notifications(self, pubsub: Any) -> None:
        delay = 0.05
        while True:
            try:
                if self.cluster:
                    message = await pubsub.get_sharded_message(timeout=1.0)
                else:
                    message = await pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                self._reach.went_down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except Exception:
                log.exception("reading Redis notifications failed")
                await asyncio.sleep(delay)
                continue
            if delay > 0.05:
                delay = 0.05
                self._reconnected()
            if message is None:
                continue
            if decoded(message["type"]) in ("message", "smessage"):
                self._notified(decoded(message["channel"]), message["data"])

    def _notified(self, channel: str, data: bytes) -> None:
        if channel == self.keys.moved_channel:
            self._queue_waiters.wake(None)
        elif channel == self.keys.cancel_channel:
            self._cancelled(decoded(data))
        elif channel == self.keys.wake_channel:
            self._wakes += 1
            self._woken.set()
        elif channel == self.keys.events_channel:
            self._mirrors.apply_notice(data)

    def _reconnected(self) -> None:
        """Notifications may have been lost while the connection was down, and Redis
        may have come back without its data."""
        self._reach.came_back()
        self._mirrors.check_soon()
        self._notified(self.keys.moved_channel, "")
        if self._held:
            self._background.spawn(self._check_held_jobs(), name="check-held-jobs")

    def _cancelled(self, job_id: str) -> None:
        """The job ended elsewhere: this worker's attempt at it, if any, stops."""
        held = self._held.pop(job_id, None)
        if held is not None:
            self._let_go_soon(job_id, held)
        for callback in self._cancel_callbacks.pop(job_id, []):
            try:
                callback()
            except Exception:
                log.exception("cancel callback of job %s failed", job_id, extra=about(job_id))

    # -- worker side --------------------------------------------------------

    async def claim(self, max_wait: float) -> Claim | None:
        if not self._present:  # a worker from now on: it says so every second
            self._present = True
            self._tasks.append(asyncio.create_task(self._presence_forever(), name="redis-presence"))
        deadline = time.monotonic() + max_wait
        # Jobs put back since the last wake notice, their tenants running all they may:
        # one met again means every waiting job is such, and the worker waits for a
        # wake (a place freed, a job queued) instead of going round again.
        deferred: set[str] = set()
        wakes = self._wakes
        while True:
            taken_over = False
            entry = None
            if time.monotonic() >= self._next_takeover_check:
                entry = await self._take_over_one()
                taken_over = entry is not None
                # Where there was one, there may be more: look again at the next claim.
                self._next_takeover_check = (
                    0.0 if taken_over else time.monotonic() + self.heartbeat_timeout / 3
                )
            if entry is None:
                entry = await self._read_one(deadline - time.monotonic())
                if entry is None:
                    return None
            entry_id, job_id, tenant = entry
            leased = await self._lease(job_id, tenant)
            if leased is None:
                await self._defer(entry_id, job_id, tenant)
                if wakes != self._wakes:  # something changed meanwhile: round again
                    deferred.clear()
                    wakes = self._wakes
                elif job_id in deferred:
                    # Leases of a worker that died run out: look again after a while.
                    wait = min(deadline - time.monotonic(), self.heartbeat_timeout / 3)
                    self._woken.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._woken.wait(), max(wait, 0))
                    deferred.clear()
                    wakes = self._wakes
                else:
                    deferred.add(job_id)
                if time.monotonic() >= deadline:
                    return None
                continue
            claim = await self._start(entry_id, job_id, takeover=taken_over, leased=leased)
            if claim is not None:
                return claim

    async def _lease(self, job_id: str, tenant: str) -> bool | None:
        """One of the tenant's running places for the job: ``True`` if it took one,
        ``False`` if the tenant has no limit, ``None`` if all its places are taken."""
        limit = self.limits(tenant).max_running_jobs
        if limit is None:
            return False
        reserved = await self._reach.retry(
            lambda: self._scripts["reserve"](
                keys=[self.keys.running_key(tenant)],
                args=[job_id, int(time.time() * 1000), int(self.heartbeat_timeout * 1000), limit],
            ),
            deadline=self.outage_grace,
        )
        return True if reserved else None

    async def _defer(self, entry_id: str, job_id: str, tenant: str) -> None:
        """The tenant runs all it may: its job goes to the back of the stream, keeping
        its place in the queue."""
        await self._reach.retry(
            lambda: self._grouped(
                lambda: self._scripts["defer"](
                    keys=[self.keys.jobs_key],
                    args=[GROUP, self.worker_name, entry_id, job_id, tenant],
                )
            ),
            deadline=self.outage_grace,
        )

    async def _read_one(self, wait: float) -> tuple[str, str, str] | None:
        assert self._blocking is not None
        # Wake at least every heartbeat interval to look for jobs to take over.
        block_ms = int(min(wait, self.heartbeat_timeout / 3) * 1000)
        response = await self._reach.retry(
            lambda: self._grouped(
                lambda: self._blocking.xreadgroup(
                    GROUP,
                    self.worker_name,
                    {self.keys.jobs_key: ">"},
                    count=1,
                    block=block_ms if block_ms > 0 else None,
                )
            ),
            deadline=self.outage_grace,
        )
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                return (
                    decoded(entry_id),
                    decoded(fields[b"job"]),
                    decoded(fields.get(b"tenant", b"")),
                )
        return None

    async def _take_over_one(self) -> tuple[str, str, str] | None:
        """An entry of a worker silent for ``heartbeat_timeout``: its job runs here now."""
        result = await self._reach.retry(
            lambda: self._grouped(
                lambda: self._client.xautoclaim(
                    self.keys.jobs_key,
                    GROUP,
                    self.worker_name,
                    min_idle_time=int(self.heartbeat_timeout * 1000),
                    count=1,
                )
            ),
            deadline=self.outage_grace,
        )
        for entry_id, fields in result[1]:
            if fields:
                job_id = decoded(fields[b"job"])
                held = self._held.get(job_id)
                if held is not None and held.entry == decoded(entry_id):
                    # Our own job, idle only because our heartbeats could not get
                    # through (Redis was away): it runs here still, once.
                    continue
                log.warning(
                    "taking over job %s from a worker that stopped answering",
                    job_id,
                    extra=about(job_id),
                )
                return decoded(entry_id), job_id, decoded(fields.get(b"tenant", b""))
            # Deleted from the stream while pending: nothing to run.
            await self._grouped(
                lambda entry_id=entry_id: self._client.xack(self.keys.jobs_key, GROUP, entry_id)
            )
        return None

    async def _dequeue(self, job_id: str) -> int:
        return int(
            await self._scripts["dequeue"](
                keys=[self.keys.pending_key, self.keys.counts_key],
                args=[job_id, self.keys.moved_channel, self._publish],
            )
        )

    async def _start(
        self, entry_id: str, job_id: str, *, takeover: bool, leased: bool
    ) -> Claim | None:
        owner = f"{self.worker_name}/{entry_id}"

        def dequeue_and_start(pipe: Any) -> None:
            # One round trip: both are safe to repeat.
            self._queue_script(
                pipe,
                "dequeue",
                [self.keys.pending_key, self.keys.counts_key],
                [job_id, self.keys.moved_channel, self._publish],
            )
            self._queue_script(
                pipe,
                "start",
                [self.keys.job_key(job_id), self.keys.events_key(job_id)],
                [owner, int(takeover)],
            )

        _, started = await self._reach.retry(lambda: self._pipelined(dequeue_and_start))
        attempt, state, *rest = started
        seq, spec, tenant, created_at = rest if rest else (0, None, b"", None)
        held = _Held(entry_id, int(attempt), decoded(tenant or b""), leased=leased)
        if not attempt or spec is None:
            log.debug(
                "queue entry of job %s skipped: the job is %s",
                job_id,
                decoded(state),
                extra=about(job_id),
            )
            await self._let_go(job_id, held)
            return None
        held.seq = int(seq)
        if held.attempt > 1:  # the start wrote a reset
            notice = [[job_id, held.seq, held.attempt, [[EventKind.RESET.value, ""]]]]
            await self._reach.retry(lambda: self._announce(notice))
        self._held[job_id] = held
        return Claim(
            job_id=job_id,
            attempt=int(attempt),
            spec=JobSpec.model_validate_json(spec),
            tenant=held.tenant,
            created_at=float(created_at or 0),
        )

    def _let_go_soon(self, job_id: str, held: _Held) -> None:
        """:meth:`_let_go` in the background; an append meanwhile waits for it."""
        task = self._background.spawn(self._let_go(job_id, held), name="let-go")
        self._letting_go[job_id] = task
        task.add_done_callback(lambda _: self._letting_go.pop(job_id, None))

    async def _let_go(self, job_id: str, held: _Held) -> None:
        """Done with a job: its queue entry, and its place among its tenant's running ones."""
        await self._forget_entry(held.entry)
        if held.leased:
            await self._reach.retry(
                lambda: self._client.zrem(self.keys.running_key(held.tenant), job_id)
            )
            await self._reach.retry(self._wake_workers)

    async def _forget_entry(self, entry_id: str) -> None:
        """Done with a queue entry, unless another worker took it over meanwhile."""
        await self._reach.retry(
            lambda: self._grouped(
                lambda: self._scripts["forget"](
                    keys=[self.keys.jobs_key], args=[GROUP, self.worker_name, entry_id]
                )
            )
        )

    async def append(self, job_id: str, attempt: int, kind: EventKind, message: str = "") -> Event:
        held = self._held.get(job_id)
        if held is None or held.attempt != attempt:
            if (letting_go := self._letting_go.get(job_id)) is not None:
                await asyncio.shield(letting_go)  # NotOwner means the job is let go of
            raise NotOwner(f"job {job_id} is no longer held by attempt {attempt}")
        held.ops += 1
        held.seq += 1  # while the attempt holds the job, only it appends
        batch = self._outbox.get(job_id)
        if batch is None:
            batch = self._outbox[job_id] = _Batch(attempt, [])
        batch.events.append((kind.value, message))
        batch.last_op = held.ops
        self._unwritten += 1
        self._outbox_ready.set()
        self._all_written.clear()
        event = Event(held.seq, kind, message, attempt)
        if kind.terminal:
            # The round after the one that writes it lets go of the job's queue entry.
            batch.ended = held
            await self._written(batch)
        elif self._unwritten > _MAX_UNWRITTEN:
            await self._written(batch)  # Redis is slow or away: wait for room
        return event

    async def _unwritten_of(self, job_id: str) -> None:
        """Once what this process appended to the job is written (or refused)."""
        if (batch := self._outbox.get(job_id)) is not None:
            with contextlib.suppress(NotOwner):
                await self._written(batch)

    async def _persist(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until it succeeds: through outages, and through errors Redis
        answers (out of memory, say), which are logged."""
        delay = 0.05
        while True:
            try:
                return await self._reach.retry(call)
            except ResponseError as exc:
                log.error("Redis refused a write of job events: %s; retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    @staticmethod
    async def _written(batch: _Batch) -> int:
        """Once ``batch`` is written, its last seq; :class:`NotOwner` if it was refused."""
        if batch.written is None:
            batch.written = asyncio.get_running_loop().create_future()
            # Its outcome is taken even when the waiter is gone (its job was cancelled).
            batch.written.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(batch.written)

    async def _write_forever(self) -> None:
        """Writes what jobs append, round after round: each round takes everything
        appended while the one before was on its way."""
        notice: list[list[Any]] = []
        ended: list[tuple[str, _Held]] = []
        while True:
            if not self._outbox and (notice or ended):
                await self._persist(lambda n=notice, e=ended: self._write({}, n, e))
                notice, ended = [], []
            if not self._unwritten:
                self._all_written.set()
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batches, self._outbox = self._outbox, {}
            if not batches:
                continue
            started = time.perf_counter()
            seqs = await self._persist(lambda b=batches, n=notice, e=ended: self._write(b, n, e))
            self._on_commit(time.perf_counter() - started)
            notice, ended = [], []
            for (job_id, batch), seq in zip(batches.items(), seqs, strict=True):
                self._unwritten -= len(batch.events)
                if seq < 0:
                    self._refused(job_id, batch)
                    continue
                notice.append([job_id, seq, batch.attempt, batch.events])
                if batch.ended is not None and self._held.get(job_id) is batch.ended:
                    del self._held[job_id]
                    ended.append((job_id, batch.ended))
                if batch.written is not None:
                    batch.written.set_result(seq)

    async def _write(
        self,
        batches: dict[str, _Batch],
        notice: list[list[Any]],
        ended: list[tuple[str, _Held]],
    ) -> list[int]:
        """One round trip: the notice of the round before, each job's new events, and
        the queue entries of the jobs the round before ended. Returns each job's last
        seq, or -1 where the attempt lost the job."""
        now = repr(time.time())

        def write(pipe: Any) -> None:
            if notice:
                pipe.execute_command(self._publish, self.keys.events_channel, encode_notice(notice))
            for job_id, batch in batches.items():
                args: list[Any] = [batch.attempt, batch.last_op, self._ttl, now]
                for kind, message in batch.events:
                    args += (kind, message)
                self._queue_script(
                    pipe, "append", [self.keys.job_key(job_id), self.keys.events_key(job_id)], args
                )
            for job_id, held in ended:
                self._queue_script(
                    pipe, "forget", [self.keys.jobs_key], [GROUP, self.worker_name, held.entry]
                )
                if held.leased:
                    pipe.zrem(self.keys.running_key(held.tenant), job_id)
                    pipe.execute_command(self._publish, self.keys.wake_channel, "")

        # Letting go may fail (the queue lost with Redis's data, say): an entry left
        # behind is taken over once idle, and let go of then, its job being over.
        letting_go = len(ended) + 2 * sum(held.leased for _, held in ended)
        results = await self._pipelined(write, optional=letting_go)
        first = 1 if notice else 0
        return [int(seq) for seq in results[first : first + len(batches)]]

    def _queue_script(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        """A script call, by its SHA, added to a pipeline (a cluster's included, whose
        pipelines take EVALSHA only this way)."""
        pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)

    async def _pipelined(self, build: Callable[[Any], None], optional: int = 0) -> list[Any]:
        """The results of the commands ``build`` puts in a pipeline, sent in one round
        trip (one per node on a cluster); the first error is raised, but for the last
        ``optional`` commands. Scripts a node has forgotten (it restarted) are loaded
        again, and the pipeline sent again."""
        for last_try in (False, True):
            async with self._client.pipeline(transaction=False) as pipe:
                build(pipe)
                results = await pipe.execute(raise_on_error=False)
            if not last_try and any(isinstance(r, NoScriptError) for r in results):
                await self._load_scripts()
                continue
            for result in results[: len(results) - optional]:
                if isinstance(result, Exception):
                    raise result
            break
        return list(results)

    def _refused(self, job_id: str, batch: _Batch) -> None:
        """The attempt no longer holds the job (cancelled, taken over, queued again)."""
        held = self._held.get(job_id)
        if held is not None and held.attempt == batch.attempt:
            del self._held[job_id]
            self._let_go_soon(job_id, held)
            self._cancelled(job_id)
        if batch.written is not None:
            batch.written.set_exception(
                NotOwner(f"job {job_id} is no longer held by attempt {batch.attempt}")
            )

    async def _wake_workers(self) -> None:
        """A place among a tenant's running jobs was freed: workers waiting look again."""
        await self._client.execute_command(self._publish, self.keys.wake_channel, "")

    async def _announce(self, notice: list[list[Any]]) -> None:
        await self._client.execute_command(
            self._publish, self.keys.events_channel, encode_notice(notice)
        )

    async def _load_scripts(self) -> None:
        """Every script into Redis (on a cluster, into every node): pipelines call them
        by their SHA, and a node that restarted has forgotten them."""
        for script in self._scripts.values():
            await self._client.script_load(script.script)

    async def release(self, job_id: str, attempt: int, reason: str) -> None:
        await self._unwritten_of(job_id)
        held = self._held.pop(job_id, None)
        ticket = await self._reach.retry(
            lambda: self._scripts["release"](keys=[self.keys.job_key(job_id)], args=[attempt]),
            deadline=self.outage_grace,
        )
        if held is not None:
            await self._let_go(job_id, held)
        if ticket == -1:
            return
        log.info("job %s queued again: %s", job_id, reason, extra=about(job_id))
        tenant, size = await self._reach.retry(
            lambda: self._client.hmget(self.keys.job_key(job_id), ["tenant", "size"]),
            deadline=self.outage_grace,
        )
        await self._reach.retry(
            lambda: self._scripts["requeue"](
                keys=[self.keys.jobs_key, self.keys.pending_key, self.keys.counts_key],
                args=[job_id, ticket, decoded(tenant or b""), int(size or 0)],
            ),
            deadline=self.outage_grace,
        )

    def on_cancel(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        callbacks = self._cancel_callbacks.setdefault(job_id, [])
        callbacks.append(callback)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)
            if not callbacks and self._cancel_callbacks.get(job_id) is callbacks:
                del self._cancel_callbacks[job_id]
            held = self._held.pop(job_id, None)
            if held is not None:
                # The job ended without a last event from this worker (it was
                # cancelled, or taken over): its queue entry is done with.
                self._let_go_soon(job_id, held)

        return stop

    async def _presence_forever(self) -> None:
        while True:
            try:
                await self._scripts["present"](
                    keys=[self.keys.workers_key],
                    args=[self.worker_name, int(_FORGET_SILENT_SECONDS * 1000)],
                )
            except UNREACHABLE as exc:
                self._reach.went_down(exc)
            except Exception:
                log.exception("saying this worker is alive failed")
            await asyncio.sleep(_PRESENCE_SECONDS)

    async def workers(self) -> WorkerCensus:
        now, flat = await self._reach.for_client(
            lambda: self._scripts["census"](keys=[self.keys.workers_key])
        )
        alive = 0
        quiet: dict[str, float] = {}
        for name, score in zip(flat[::2], flat[1::2], strict=True):
            silent = (int(now) - float(score)) / 1000
            if silent > self.quiet_after:
                quiet[decoded(name)] = silent
            else:
                alive += 1
        return WorkerCensus(alive, quiet)

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

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_timeout / 3)
            try:
                await self.beat()
            except UNREACHABLE as exc:
                self._reach.went_down(exc)
            except Exception:
                log.exception("heartbeat failed")

    async def beat(self) -> None:
        """Keep this worker's claims fresh; jobs another worker took over are cancelled here."""
        if not self._held:
            return
        held = dict(self._held)
        kept = await self._grouped(
            lambda: self._scripts["heartbeat"](
                keys=[self.keys.jobs_key],
                args=[GROUP, self.worker_name, *(h.entry for h in held.values())],
            )
        )
        kept_ids = {decoded(entry) for entry in kept}
        for job_id, h in held.items():
            if h.entry not in kept_ids and self._held.get(job_id) is h:
                log.warning("job %s was taken over by another worker", job_id, extra=about(job_id))
                self._held.pop(job_id, None)
                self._cancelled(job_id)
        leased = [(job_id, h) for job_id, h in held.items() if h.leased and h.entry in kept_ids]
        if leased:
            # Renew the places these jobs hold among their tenants' running ones.
            until = int((time.time() + self.heartbeat_timeout) * 1000)
            async with self._client.pipeline(transaction=False) as pipe:
                for job_id, h in leased:
                    pipe.zadd(self.keys.running_key(h.tenant), {job_id: until}, xx=True)
                await pipe.execute()

    async def _check_held_jobs(self) -> None:
        """After a reconnect: cancels may have been missed while we were away."""
        for job_id in list(self._held):
            with contextlib.suppress(*UNREACHABLE):
                state = await self._client.hget(self.keys.job_key(job_id), "state")
                if state is None or decoded(state) != JobState.RUNNING.value:
                    self._cancelled(job_id)
