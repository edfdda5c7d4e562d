"""A job store in Redis, shared by any number of gateways and workers.

Key layout (``P`` is ``REDIS_PREFIX``; ``{...}`` are Redis Cluster hash tags,
so each Lua script touches one slot):

``P:{queue}:jobs``      stream, one entry per queued job; consumer group ``workers``
``P:{queue}:pending``   sorted set of waiting job ids by ticket: positions
``P:{queue}:tickets``   counter: the order of submission
``P:{queue}:counts``    hash: bytes of waiting requests; per tenant ``q:T`` its waiting
                        jobs; per waiting job ``of:ID`` its tenant and size
``P:{queue}:running:T`` sorted set: tenant T's running jobs (with a limit), by the
                        end of the lease their worker keeps renewing
``P:job:{ID}``          hash: state, attempt, seq, start, spec, tenant, size, times,
                        error, owner
``P:events:{ID}``       stream: the job's log, entry ``0-SEQ`` per event
``P:rate:{T}``          the time tenant T's allowance of adds is whole again (GCRA)

Channels: ``P:events`` (jobs' logs grew: one message per write, covering every
job it wrote to, with the events themselves where it has them; see
:func:`_notice`), ``P:cancel`` (a running job was cancelled; payload its id),
``P:queue-moved``.

A worker does not wait for Redis at each event: what its jobs append meanwhile
goes in one pipelined round trip (a script call per job, carrying all of that
job's new events), one round after the other, as SQLite's rounds do; a job's
last event waits for its round. Gateways apply the events a notice carries to
their mirrors of the logs, and read from Redis only what they missed.

A worker claims a job by reading its entry through the consumer group; the
entry stays in the worker's pending list until the job ends. The worker
re-claims its own entries every ``heartbeat_timeout / 3`` seconds, which keeps
them fresh; entries idle for ``heartbeat_timeout`` belong to a worker that
died, and another worker takes them over with ``XAUTOCLAIM``. Each start of a
job increments its ``attempt``, and events are accepted only from the current
attempt: a worker that lost its job (it was cancelled, or taken over after a
long pause) is refused at its next event and stops.

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
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ClusterDownError, NoScriptError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_worker.access import UNLIMITED, TenantLimits
from llm_worker.jobs import Claim, Event, EventKind, JobRecord, JobSpec, JobState, spec_json
from llm_worker.store.base import (
    JobStore,
    NotOwner,
    QueueFull,
    RateLimited,
    StoreError,
    StoreStats,
    StoreUnavailable,
    UnknownJob,
)
from llm_worker.store.eventlog import EventLog
from llm_worker.tasks import TaskSet

log = logging.getLogger(__name__)

T = TypeVar("T")
GROUP = "workers"
# What Redis being away looks like; for a cluster, a node down or a slot moving too.
_UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    ClusterDownError,
    TryAgainError,
)
_REFRESH_BATCH = 1000
# After putting back a job whose tenant runs all it may, before reading the next.
_DEFER_PAUSE = 0.05
_POLL_SECONDS = 1.0
JOB_LOST = (
    "the job store lost this job: Redis restarted without its data, or failed over to a "
    "replica that did not have it"
)

# KEYS: jobs stream, pending zset, tickets, counts. ARGV: job id, queue max, tenant,
# tenant's max queued (-1: none), size, max bytes. Returns the job's ticket (the same
# one when a retry finds it queued already), or -1: the queue is full, -3: the
# tenant's share is, -4: its bytes are.
_SUBMIT = """
local queued = redis.call('ZSCORE', KEYS[2], ARGV[1])
if queued then return tonumber(queued) end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return -1 end
local tenant_max = tonumber(ARGV[4])
if tenant_max >= 0 and tonumber(redis.call('HGET', KEYS[4], 'q:' .. ARGV[3]) or 0) >= tenant_max
then return -3 end
local size = tonumber(ARGV[5])
if tonumber(redis.call('HGET', KEYS[4], 'bytes') or 0) + size > tonumber(ARGV[6]) then
  return -4
end
local ticket = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[1], 'tenant', ARGV[3])
redis.call('ZADD', KEYS[2], ticket, ARGV[1])
redis.call('HINCRBY', KEYS[4], 'q:' .. ARGV[3], 1)
redis.call('HINCRBY', KEYS[4], 'bytes', size)
redis.call('HSET', KEYS[4], 'of:' .. ARGV[1], ARGV[3] .. ' ' .. size)
return ticket
"""

# KEYS: pending zset, counts. ARGV: job id, the queue-moved channel, the publish
# command (SPUBLISH on a cluster: the channel is in the queue's slot). Takes a job out
# of the queue, and out of the counts; returns 1, or 0 if it was not queued.
_DEQUEUE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local of = redis.call('HGET', KEYS[2], 'of:' .. ARGV[1])
if of then
  local tenant, size = string.match(of, '^(.*) (%d+)$')
  redis.call('HDEL', KEYS[2], 'of:' .. ARGV[1])
  if redis.call('HINCRBY', KEYS[2], 'q:' .. tenant, -1) <= 0 then
    redis.call('HDEL', KEYS[2], 'q:' .. tenant)
  end
  redis.call('HINCRBY', KEYS[2], 'bytes', -tonumber(size))
end
redis.call(ARGV[3], ARGV[2], ARGV[1])
return 1
"""

# KEYS: the tenant's running set. ARGV: job id, now (ms), lease (ms), limit. Holds
# one of the tenant's running places for the job; 0 when all are taken. Leases
# whose worker stopped renewing them have run out and count no more.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1])
  or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
  return 1
end
return 0
"""

# KEYS: the tenant's rate key. ARGV: ms between adds, ms of burst. Returns 0 when
# the tenant may add a job now (and it counts), else the ms to wait (GCRA).
_RATE = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local interval = tonumber(ARGV[1])
local arrival = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local allowed_from = arrival - tonumber(ARGV[2]) + interval
if now < allowed_from then return allowed_from - now end
redis.call('SET', KEYS[1], arrival + interval, 'PX', arrival + interval - now + 1000)
return 0
"""

# KEYS: job, events. ARGV: owner (worker + entry), takeover (0|1).
# Returns {attempt, '', seq, spec, tenant} or {0, state that forbids starting}. A fresh entry starts
# a pending job only; one taken over from a dead worker, a running one too.
_START = """
local state, attempt, owner = unpack(redis.call('HMGET', KEYS[1], 'state', 'attempt', 'owner'))
if not state then return {0, 'missing'} end
if state == 'running' and owner == ARGV[1] then
  return {tonumber(attempt), '', unpack(redis.call('HMGET', KEYS[1], 'seq', 'spec', 'tenant'))}
end
if state ~= 'pending' and not (state == 'running' and ARGV[2] == '1') then
  return {0, state}
end
attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1], 'op', 0)
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
if attempt > 1 then
  seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('XADD', KEYS[2], '0-' .. seq, 'k', 'reset', 'm', '', 'a', attempt)
  redis.call('HSET', KEYS[1], 'start', seq - 1)
end
return {attempt, '', seq, unpack(redis.call('HMGET', KEYS[1], 'spec', 'tenant'))}
"""

# KEYS: job, events. ARGV: attempt, the batch's last op, ttl (ms), now, then each
# event's kind and message. Appends the batch unless the attempt no longer holds the
# job; returns the seq of its last event, or -1. A batch applied already (a retry
# after a reply that got lost) returns the seq it ended at.
_APPEND = """
local state, attempt, op, opseq, seq =
  unpack(redis.call('HMGET', KEYS[1], 'state', 'attempt', 'op', 'opseq', 'seq'))
if attempt ~= ARGV[1] then return -1 end
if tonumber(op) >= tonumber(ARGV[2]) then return tonumber(opseq) end
if state ~= 'running' then return -1 end
seq = tonumber(seq)
for i = 5, #ARGV, 2 do
  seq = seq + 1
  local kind = ARGV[i]
  redis.call('XADD', KEYS[2], '0-' .. seq, 'k', kind, 'm', ARGV[i + 1], 'a', ARGV[1])
  if kind == 'done' or kind == 'failed' then
    redis.call('HSET', KEYS[1], 'state', kind, 'finished_at', ARGV[4])
    if kind == 'failed' then redis.call('HSET', KEYS[1], 'error', ARGV[i + 1]) end
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  end
end
redis.call('HSET', KEYS[1], 'seq', seq, 'op', ARGV[2], 'opseq', seq)
return seq
"""

# KEYS: job, events. ARGV: ttl (ms), now. Returns the state before.
_CANCEL = """
local state, attempt = unpack(redis.call('HMGET', KEYS[1], 'state', 'attempt'))
if not state then return 'missing' end
if state ~= 'pending' and state ~= 'running' then return state end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], '0-' .. seq, 'k', 'cancelled', 'm', '', 'a', attempt)
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return state
"""

# KEYS: job. ARGV: attempt. Returns the job's ticket, or -1 if the attempt lost it.
_RELEASE = """
local state, attempt, ticket = unpack(redis.call('HMGET', KEYS[1], 'state', 'attempt', 'ticket'))
if state ~= 'running' or attempt ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'state', 'pending', 'owner', '')
return tonumber(ticket)
"""

# KEYS: jobs stream. ARGV: group, consumer, entry ids. Re-claims (so refreshes)
# the entries this consumer still owns; returns those.
_HEARTBEAT = """
local kept = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept[#kept + 1] = ARGV[i]
  end
end
return kept
"""

# KEYS: jobs stream. ARGV: group, consumer, entry id. Acknowledges and deletes the
# entry unless another consumer took it over.
_FORGET = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if pending[1] and pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""

# KEYS: jobs stream, pending zset, counts. ARGV: job id, ticket, tenant, size.
_REQUEUE = """
if redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[1], '*', 'job', ARGV[1], 'tenant', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'q:' .. ARGV[3], 1)
redis.call('HINCRBY', KEYS[3], 'bytes', tonumber(ARGV[4]))
redis.call('HSET', KEYS[3], 'of:' .. ARGV[1], ARGV[3] .. ' ' .. ARGV[4])
return 1
"""

# KEYS: jobs stream. ARGV: group, consumer, entry id, job id, tenant. Puts a job this
# consumer read back at the end of the stream (its tenant runs all it may).
_DEFER = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if pending[1] and pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[4], 'tenant', ARGV[5])
return 1
"""


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


# Events a worker may hold unwritten (Redis slow or away) before appends wait.
_MAX_UNWRITTEN = 10_000
# Commands on their way at once, each on a connection of its own: a gateway whose
# clients follow thousands of jobs must not open thousands of connections (nor
# exceed a cluster client's connections per node, which fails the command and then
# closes every connection of the client, the other commands' included).
_MAX_IN_FLIGHT = 64
_MAX_CONNECTIONS = 2 * _MAX_IN_FLIGHT


def _notice(entries: list[list[Any]]) -> bytes:
    """A message on the events channel: for each job, ``[job_id, last seq]``, and when
    the message carries them, ``attempt`` and the events themselves (``[kind,
    message]`` each, ending at that seq)."""
    return orjson.dumps(entries)


class _Feed:
    """This process's mirror of one job's log, shared by its local followers."""

    __slots__ = ("dirty", "job_id", "loading", "log", "refreshing", "users")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.log = EventLog()
        self.users = 0
        self.refreshing = False
        self.dirty = False
        self.loading: asyncio.Task[None] | None = None
        """Subscribes and reads the log; every follower waits for it, none owns it."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        """Whether this process follows logs (a gateway): only then is it sent every
        notice of the events channel, which a worker alone would parse for nothing."""
        """A Redis Cluster: notices go by sharded pub/sub, each channel in one slot."""
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
        self.jobs_key = f"{prefix}:{{queue}}:jobs"
        self.pending_key = f"{prefix}:{{queue}}:pending"
        self.tickets_key = f"{prefix}:{{queue}}:tickets"
        self.counts_key = f"{prefix}:{{queue}}:counts"
        self.events_channel = f"{prefix}:{{events}}"
        self.cancel_channel = f"{prefix}:{{queue}}:cancel"
        self.moved_channel = f"{prefix}:{{queue}}:moved"
        self._redis: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None
        self._notifier: Any = None
        self._pubsubs: list[Any] = []
        self._scripts: dict[str, Any] = {}
        self._held: dict[str, _Held] = {}
        self._letting_go: dict[str, asyncio.Task[None]] = {}
        self._in_flight = asyncio.Semaphore(_MAX_IN_FLIGHT)
        self._cancel_callbacks: dict[str, list[Callable[[], None]]] = {}
        self._feeds: dict[str, _Feed] = {}
        self._queue_waiters: list[asyncio.Future[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._background = TaskSet("redis store")
        self._next_takeover_check = 0.0
        self._down_since: float | None = None
        self._outage_waiters: list[asyncio.Future[str]] = []
        self._recovery_waiters: list[asyncio.Future[None]] = []
        self._outage_announced = False
        self._outbox: dict[str, _Batch] = {}
        self._unwritten = 0
        self._outbox_ready = asyncio.Event()
        self._all_written = asyncio.Event()
        self._all_written.set()

    # -- keys ---------------------------------------------------------------

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}"

    def _events_key(self, job_id: str) -> str:
        return f"{self.prefix}:events:{{{job_id}}}"

    def _running_key(self, tenant: str) -> str:
        return f"{self.prefix}:{{queue}}:running:{tenant}"

    def _rate_key(self, tenant: str) -> str:
        return f"{self.prefix}:rate:{{{tenant}}}"

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
                await self._retry(client.initialize, deadline=self.outage_grace)
        for name, source in (
            ("submit", _SUBMIT),
            ("start", _START),
            ("append", _APPEND),
            ("cancel", _CANCEL),
            ("release", _RELEASE),
            ("requeue", _REQUEUE),
            ("dequeue", _DEQUEUE),
            ("reserve", _RESERVE),
            ("rate", _RATE),
            ("defer", _DEFER),
            ("heartbeat", _HEARTBEAT),
            ("forget", _FORGET),
        ):
            self._scripts[name] = redis.register_script(source)
        await self._retry(self._load_scripts, deadline=self.outage_grace)
        await self._retry(self._create_group, deadline=self.outage_grace)
        self._tasks = [asyncio.create_task(self._write_forever(), name="redis-writes")]
        queue_channels = [self.cancel_channel, self.moved_channel]
        events_channels = [self.events_channel] if self.follows else []
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
            asyncio.create_task(self._poll_feeds_forever(), name="redis-feed-poll"),
        ]
        log.info(
            "job store: Redis at %s, keys %s:*, worker %s",
            self._safe_url(),
            self.prefix,
            self.worker_name,
        )

    async def close(self) -> None:
        # Events on their way, and queue entries being let go of: worth a moment, so
        # that listeners get them and no other worker re-runs the jobs.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_written.wait(), 2.0)
        await self._background.close(wait=2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for pubsub in self._pubsubs:
            with contextlib.suppress(*_UNREACHABLE):
                await pubsub.aclose()
        for client in (self._redis, self._blocking, self._notifier):
            if client is not None:
                with contextlib.suppress(*_UNREACHABLE):
                    await client.aclose()

    def _safe_url(self) -> str:
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    async def _create_group(self) -> None:
        try:
            await self._client.xgroup_create(self.jobs_key, GROUP, id="0", mkstream=True)
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
            if not await self._client.exists(self._job_key(job_id)):
                log.error("job %s, running here, was lost by Redis: stopping it", job_id)
                if self._held.get(job_id) is held:
                    del self._held[job_id]
                self._cancelled(job_id)
        self._check_feeds_soon()

    @property
    def _client(self) -> aioredis.Redis:
        assert self._redis is not None, "the store was not started"
        return self._redis

    # -- resilience ---------------------------------------------------------

    async def _retry(self, call: Callable[[], Awaitable[T]], *, deadline: float | None = None) -> T:
        """``call()``, tried again with back-off while Redis cannot be reached.

        Gives up with :class:`StoreUnavailable` after ``deadline`` seconds;
        without a deadline, tries until it gets through.
        """
        delay = 0.05
        started = time.monotonic()
        while True:
            try:
                async with self._in_flight:
                    result = await call()
            except _UNREACHABLE as exc:
                self._went_down(exc)
                if deadline is not None and time.monotonic() - started >= deadline:
                    raise StoreUnavailable(f"the job store (Redis) is unreachable: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            else:
                if self._down_since is not None:
                    self._came_back()
                return result

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("lost contact with Redis at %s: %r; retrying", self._safe_url(), exc)
            asyncio.get_running_loop().call_later(self.outage_grace, self._outage_check)

    def _outage_check(self) -> None:
        if self._down_since is None or self._outage_announced:
            return
        self._outage_announced = True
        seconds = time.monotonic() - self._down_since
        message = (
            f"the job store (Redis) has been unreachable for {seconds:.0f}s; still trying. "
            "Events resume where they stopped once it is back."
        )
        log.error("%s", message)
        waiters, self._outage_waiters = self._outage_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(message)

    def _came_back(self) -> None:
        seconds = time.monotonic() - (self._down_since or time.monotonic())
        self._down_since = None
        log.warning("Redis is reachable again after %.1fs", seconds)
        if self._outage_announced:
            self._outage_announced = False
            waiters, self._recovery_waiters = self._recovery_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def outage(self) -> str:
        waiter = asyncio.get_running_loop().create_future()
        self._outage_waiters.append(waiter)
        return await waiter

    async def recovered(self) -> None:
        if not self._outage_announced:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._recovery_waiters.append(waiter)
        await waiter

    def _for_client(self, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """A client's request waits out an outage up to the grace period."""
        return self._retry(call, deadline=self.outage_grace)

    # -- gateway side -------------------------------------------------------

    async def submit(self, spec: JobSpec, tenant: str = "") -> JobRecord:
        try:
            text = spec_json(spec)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        limits = self.limits(tenant)
        if limits.adds_per_minute:
            wait_ms = await self._for_client(
                lambda: self._scripts["rate"](
                    keys=[self._rate_key(tenant)],
                    args=[60_000 / limits.adds_per_minute, 60_000],
                )
            )
            if wait_ms:
                raise RateLimited(tenant, limits.adds_per_minute, float(wait_ms) / 1000)
        job_id = str(uuid.uuid4())
        now = time.time()
        job_key = self._job_key(job_id)
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
        await self._for_client(lambda: self._client.hset(job_key, mapping=fields))
        max_queued = limits.max_queued_jobs
        ticket = await self._for_client(
            lambda: self._scripts["submit"](
                keys=[self.jobs_key, self.pending_key, self.tickets_key, self.counts_key],
                args=[
                    job_id,
                    self.queue_max,
                    tenant,
                    -1 if max_queued is None else max_queued,
                    len(text),
                    self.queue_max_bytes,
                ],
            )
        )
        if ticket < 0:
            await self._for_client(lambda: self._client.delete(job_key))
            if ticket == -3:
                raise QueueFull.of_tenant(tenant, max_queued or 0)
            if ticket == -4:
                raise QueueFull.of_bytes(self.queue_max_bytes)
            raise QueueFull.of_jobs(self.queue_max)
        await self._for_client(lambda: self._client.hset(job_key, "ticket", ticket))
        return JobRecord(id=job_id, state=JobState.PENDING, created_at=now, tenant=tenant)

    async def _fields(self, job_id: str) -> dict[str, str] | None:
        raw = await self._for_client(lambda: self._client.hgetall(self._job_key(job_id)))
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

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
        return await self._for_client(lambda: self._events(job_id, start))

    async def _events(self, job_id: str, after: int, count: int | None = None) -> list[Event]:
        entries = await self._client.xrange(
            self._events_key(job_id), min=f"0-{after + 1}", count=count
        )
        events = []
        for entry_id, fields in entries:
            seq = int(_text(entry_id).partition("-")[2])
            events.append(
                Event(
                    seq,
                    EventKind(_text(fields[b"k"])),
                    _text(fields[b"m"]),
                    int(fields[b"a"]),
                )
            )
        return events

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        feed = await self._open_feed(job_id)
        try:
            async for batch in feed.log.follow(after):
                yield batch
        finally:
            await self._close_feed(feed)

    async def cancel(self, job_id: str) -> JobRecord:
        await self._unwritten_of(job_id)  # what this process appended goes first
        before = _text(
            await self._for_client(
                lambda: self._scripts["cancel"](
                    keys=[self._job_key(job_id), self._events_key(job_id)],
                    args=[self._ttl, repr(time.time())],
                )
            )
        )
        if before == "missing":
            raise UnknownJob(job_id)
        if before in ("pending", "running"):
            await self._for_client(lambda: self._announce([[job_id, 0]]))
        if before in ("pending", "cancelled"):
            await self._for_client(lambda: self._dequeue(job_id))
        elif before == "running":
            await self._for_client(
                lambda: self._client.execute_command(self._publish, self.cancel_channel, job_id)
            )
        record = await self.get(job_id)
        if record is None:
            raise UnknownJob(job_id)
        return record

    async def position(self, job_id: str) -> int | None:
        rank = await self._for_client(lambda: self._client.zrank(self.pending_key, job_id))
        return None if rank is None else rank + 1

    async def queue_moved(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._queue_waiters.append(waiter)
        await waiter

    async def stats(self) -> StoreStats:
        pending = await self._for_client(lambda: self._client.zcard(self.pending_key))
        summary = await self._for_client(
            lambda: self._grouped(lambda: self._client.xpending(self.jobs_key, GROUP))
        )
        return StoreStats(pending=int(pending), running=int(summary["pending"]))

    @property
    def _ttl(self) -> int:
        """The TTL of a finished job, in milliseconds."""
        return max(1, round(self.job_ttl * 1000))

    # -- feeds: local mirrors of logs that local listeners follow -----------

    async def _open_feed(self, job_id: str) -> _Feed:
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _Feed(job_id)
            feed.loading = asyncio.create_task(self._load_feed(feed))
        feed.users += 1
        try:
            assert feed.loading is not None
            await asyncio.shield(feed.loading)
        except BaseException:
            await self._close_feed(feed)
            raise
        return feed

    async def _load_feed(self, feed: _Feed) -> None:
        try:
            exists = await self._for_client(lambda: self._client.exists(self._job_key(feed.job_id)))
            if not exists:
                raise UnknownJob(feed.job_id)
            # The events channel was subscribed to first (at start): what is appended
            # from now on is announced to this feed, which is in _feeds already.
            await self._refresh(feed, deadline=self.outage_grace)
        except Exception:
            # Openers from now on start afresh; those waiting get this error.
            if self._feeds.get(feed.job_id) is feed:
                await self._drop_feed(feed)
            raise

    async def _close_feed(self, feed: _Feed) -> None:
        feed.users -= 1
        if feed.users == 0 and self._feeds.get(feed.job_id) is feed:
            await self._drop_feed(feed)

    async def _drop_feed(self, feed: _Feed) -> None:
        del self._feeds[feed.job_id]
        if feed.loading is not None and not feed.loading.done():
            feed.loading.cancel()

    async def _refresh(self, feed: _Feed, *, deadline: float | None = None) -> None:
        """Bring the mirror up to date; one refresh at a time per feed."""
        if feed.refreshing:
            feed.dirty = True
            return
        feed.refreshing = True
        try:
            while True:
                feed.dirty = False
                events = await self._retry(
                    lambda: self._events(feed.job_id, feed.log.last_seq, _REFRESH_BATCH),
                    deadline=deadline,
                )
                for event in events:
                    if event.seq > feed.log.last_seq:
                        feed.log.add(event)
                if events:
                    feed.log.show()
                if not feed.dirty and len(events) < _REFRESH_BATCH:
                    return
        finally:
            feed.refreshing = False

    def _refresh_later(self, feed: _Feed) -> None:
        if feed.refreshing:
            feed.dirty = True
        else:
            self._background.spawn(self._refresh(feed), name=f"refresh-{feed.job_id}")

    async def _poll_feeds_forever(self) -> None:
        # A safety net under the notifications: a message lost to a reconnect
        # costs a listener at most this long, and so does a job Redis lost.
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            try:
                await self._check_feeds()
            except _UNREACHABLE as exc:
                self._went_down(exc)
            except Exception:
                log.exception("checking the followed jobs failed")

    async def _check_feeds(self) -> None:
        """Refresh the logs of unfinished jobs; tell the listeners of jobs Redis lost."""
        feeds = [feed for feed in self._feeds.values() if not feed.log.finished]
        if not feeds:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for feed in feeds:
                pipe.exists(self._job_key(feed.job_id))
            exist = await pipe.execute()
        for feed, exists in zip(feeds, exist, strict=True):
            if exists:
                self._refresh_later(feed)
            elif not feed.log.finished and feed.loading is not None and feed.loading.done():
                # Gone before its end: Redis restarted without its data, or failed over.
                log.error("job %s was lost by Redis; telling its listeners", feed.job_id)
                feed.log.add(Event(feed.log.last_seq + 1, EventKind.FAILED, JOB_LOST, 0))
                feed.log.show()

    def _check_feeds_soon(self) -> None:
        self._background.spawn(self._check_feeds(), name="check-feeds")

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
            except _UNREACHABLE as exc:
                self._went_down(exc)
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
            if _text(message["type"]) in ("message", "smessage"):
                self._notified(_text(message["channel"]), message["data"])

    def _notified(self, channel: str, data: bytes) -> None:
        if channel == self.moved_channel:
            waiters, self._queue_waiters = self._queue_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        elif channel == self.cancel_channel:
            self._cancelled(_text(data))
        elif channel == self.events_channel:
            self._apply_notice(data)

    def _apply_notice(self, data: bytes | str) -> None:
        """Events of followed jobs, from a notice: applied to the mirrors when they
        follow on from what they hold, read from Redis when some are missing."""
        try:
            entries = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("an unreadable notice on %s: %r", self.events_channel, data[:200])
            return
        for entry in entries:
            feed = self._feeds.get(entry[0])
            if feed is None:
                continue
            last = entry[1]
            if len(entry) < 4:
                if not last or last > feed.log.last_seq:
                    self._refresh_later(feed)
                continue
            attempt, events = entry[2], entry[3]
            first = last - len(events) + 1
            if first > feed.log.last_seq + 1:
                self._refresh_later(feed)  # some went by unseen
                continue
            for offset, (kind, message) in enumerate(events):
                seq = first + offset
                if seq > feed.log.last_seq:
                    feed.log.add(Event(seq, EventKind(kind), message, attempt))
            feed.log.show()

    def _reconnected(self) -> None:
        """Notifications may have been lost while the connection was down, and Redis
        may have come back without its data."""
        if self._down_since is not None:
            self._came_back()
        self._check_feeds_soon()
        self._notified(self.moved_channel, "")
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
                log.exception("cancel callback of job %s failed", job_id)

    # -- worker side --------------------------------------------------------

    async def claim(self, max_wait: float) -> Claim | None:
        deadline = time.monotonic() + max_wait
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
        reserved = await self._retry(
            lambda: self._scripts["reserve"](
                keys=[self._running_key(tenant)],
                args=[job_id, int(time.time() * 1000), int(self.heartbeat_timeout * 1000), limit],
            ),
            deadline=self.outage_grace,
        )
        return True if reserved else None

    async def _defer(self, entry_id: str, job_id: str, tenant: str) -> None:
        """The tenant runs all it may: its job goes to the back of the stream, keeping
        its place in the queue; a short pause, so that a queue of such jobs is not a spin."""
        await self._retry(
            lambda: self._grouped(
                lambda: self._scripts["defer"](
                    keys=[self.jobs_key], args=[GROUP, self.worker_name, entry_id, job_id, tenant]
                )
            ),
            deadline=self.outage_grace,
        )
        await asyncio.sleep(_DEFER_PAUSE)

    async def _read_one(self, wait: float) -> tuple[str, str, str] | None:
        assert self._blocking is not None
        # Wake at least every heartbeat interval to look for jobs to take over.
        block_ms = int(min(wait, self.heartbeat_timeout / 3) * 1000)
        response = await self._retry(
            lambda: self._grouped(
                lambda: self._blocking.xreadgroup(
                    GROUP,
                    self.worker_name,
                    {self.jobs_key: ">"},
                    count=1,
                    block=block_ms if block_ms > 0 else None,
                )
            ),
            deadline=self.outage_grace,
        )
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                return _text(entry_id), _text(fields[b"job"]), _text(fields.get(b"tenant", b""))
        return None

    async def _take_over_one(self) -> tuple[str, str, str] | None:
        """An entry of a worker silent for ``heartbeat_timeout``: its job runs here now."""
        result = await self._retry(
            lambda: self._grouped(
                lambda: self._client.xautoclaim(
                    self.jobs_key,
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
                job_id = _text(fields[b"job"])
                held = self._held.get(job_id)
                if held is not None and held.entry == _text(entry_id):
                    # Our own job, idle only because our heartbeats could not get
                    # through (Redis was away): it runs here still, once.
                    continue
                log.warning("taking over job %s from a worker that stopped answering", job_id)
                return _text(entry_id), job_id, _text(fields.get(b"tenant", b""))
            # Deleted from the stream while pending: nothing to run.
            await self._grouped(
                lambda entry_id=entry_id: self._client.xack(self.jobs_key, GROUP, entry_id)
            )
        return None

    async def _dequeue(self, job_id: str) -> int:
        return int(
            await self._scripts["dequeue"](
                keys=[self.pending_key, self.counts_key],
                args=[job_id, self.moved_channel, self._publish],
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
                [self.pending_key, self.counts_key],
                [job_id, self.moved_channel, self._publish],
            )
            self._queue_script(
                pipe,
                "start",
                [self._job_key(job_id), self._events_key(job_id)],
                [owner, int(takeover)],
            )

        _, started = await self._retry(lambda: self._pipelined(dequeue_and_start))
        attempt, state, *rest = started
        seq, spec, tenant = rest if rest else (0, None, b"")
        held = _Held(entry_id, int(attempt), _text(tenant or b""), leased=leased)
        if not attempt or spec is None:
            log.debug("queue entry of job %s skipped: the job is %s", job_id, _text(state))
            await self._let_go(job_id, held)
            return None
        held.seq = int(seq)
        if held.attempt > 1:  # the start wrote a reset
            notice = [[job_id, held.seq, held.attempt, [[EventKind.RESET.value, ""]]]]
            await self._retry(lambda: self._announce(notice))
        self._held[job_id] = held
        return Claim(job_id=job_id, attempt=int(attempt), spec=JobSpec.model_validate_json(spec))

    def _let_go_soon(self, job_id: str, held: _Held) -> None:
        """:meth:`_let_go` in the background; an append meanwhile waits for it."""
        task = self._background.spawn(self._let_go(job_id, held), name="let-go")
        self._letting_go[job_id] = task
        task.add_done_callback(lambda _: self._letting_go.pop(job_id, None))

    async def _let_go(self, job_id: str, held: _Held) -> None:
        """Done with a job: its queue entry, and its place among its tenant's running ones."""
        await self._forget_entry(held.entry)
        if held.leased:
            await self._retry(lambda: self._client.zrem(self._running_key(held.tenant), job_id))

    async def _forget_entry(self, entry_id: str) -> None:
        """Done with a queue entry, unless another worker took it over meanwhile."""
        await self._retry(
            lambda: self._grouped(
                lambda: self._scripts["forget"](
                    keys=[self.jobs_key], args=[GROUP, self.worker_name, entry_id]
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
            await self._written(batch)
            if self._held.get(job_id) is held:
                del self._held[job_id]
            await self._let_go(job_id, held)
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
                return await self._retry(call)
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
        while True:
            if not self._outbox and notice:
                await self._persist(lambda notice=notice: self._announce(notice))
                notice = []
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batches, self._outbox = self._outbox, {}
            if not batches:
                continue
            seqs = await self._persist(lambda b=batches, n=notice: self._write(b, n))
            notice = []
            for (job_id, batch), seq in zip(batches.items(), seqs, strict=True):
                self._unwritten -= len(batch.events)
                if seq < 0:
                    self._refused(job_id, batch)
                    continue
                notice.append([job_id, seq, batch.attempt, batch.events])
                if batch.written is not None:
                    batch.written.set_result(seq)
            if not self._unwritten:
                self._all_written.set()

    async def _write(self, batches: dict[str, _Batch], notice: list[list[Any]]) -> list[int]:
        """One round trip: the notice of the round before, then each job's new events.
        Returns each job's last seq, or -1 where the attempt lost the job."""
        now = repr(time.time())

        def write(pipe: Any) -> None:
            if notice:
                pipe.execute_command(self._publish, self.events_channel, _notice(notice))
            for job_id, batch in batches.items():
                args: list[Any] = [batch.attempt, batch.last_op, self._ttl, now]
                for kind, message in batch.events:
                    args += (kind, message)
                self._queue_script(
                    pipe, "append", [self._job_key(job_id), self._events_key(job_id)], args
                )

        results = await self._pipelined(write)
        return [int(seq) for seq in results[1 if notice else 0 :]]

    def _queue_script(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        """A script call, by its SHA, added to a pipeline (a cluster's included, whose
        pipelines take EVALSHA only this way)."""
        pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)

    async def _pipelined(self, build: Callable[[Any], None]) -> list[Any]:
        """The results of the commands ``build`` puts in a pipeline, sent in one round
        trip (one per node on a cluster); the first error is raised. Scripts a node
        has forgotten (it restarted) are loaded again, and the pipeline sent again."""
        for last_try in (False, True):
            async with self._client.pipeline(transaction=False) as pipe:
                build(pipe)
                results = await pipe.execute(raise_on_error=False)
            if not last_try and any(isinstance(r, NoScriptError) for r in results):
                await self._load_scripts()
                continue
            for result in results:
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

    async def _announce(self, notice: list[list[Any]]) -> None:
        await self._client.execute_command(self._publish, self.events_channel, _notice(notice))

    async def _load_scripts(self) -> None:
        """Every script into Redis (on a cluster, into every node): pipelines call them
        by their SHA, and a node that restarted has forgotten them."""
        for script in self._scripts.values():
            await self._client.script_load(script.script)

    async def release(self, job_id: str, attempt: int, reason: str) -> None:
        await self._unwritten_of(job_id)
        held = self._held.pop(job_id, None)
        ticket = await self._retry(
            lambda: self._scripts["release"](keys=[self._job_key(job_id)], args=[attempt]),
            deadline=self.outage_grace,
        )
        if held is not None:
            await self._let_go(job_id, held)
        if ticket == -1:
            return
        log.info("job %s queued again: %s", job_id, reason)
        tenant, size = await self._retry(
            lambda: self._client.hmget(self._job_key(job_id), ["tenant", "size"]),
            deadline=self.outage_grace,
        )
        await self._retry(
            lambda: self._scripts["requeue"](
                keys=[self.jobs_key, self.pending_key, self.counts_key],
                args=[job_id, ticket, _text(tenant or b""), int(size or 0)],
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

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_timeout / 3)
            try:
                await self.beat()
            except _UNREACHABLE as exc:
                self._went_down(exc)
            except Exception:
                log.exception("heartbeat failed")

    async def beat(self) -> None:
        """Keep this worker's claims fresh; jobs another worker took over are cancelled here."""
        if not self._held:
            return
        held = dict(self._held)
        kept = await self._grouped(
            lambda: self._scripts["heartbeat"](
                keys=[self.jobs_key],
                args=[GROUP, self.worker_name, *(h.entry for h in held.values())],
            )
        )
        kept_ids = {_text(entry) for entry in kept}
        for job_id, h in held.items():
            if h.entry not in kept_ids and self._held.get(job_id) is h:
                log.warning("job %s was taken over by another worker", job_id)
                self._held.pop(job_id, None)
                self._cancelled(job_id)
        leased = [(job_id, h) for job_id, h in held.items() if h.leased and h.entry in kept_ids]
        if leased:
            # Renew the places these jobs hold among their tenants' running ones.
            until = int((time.time() + self.heartbeat_timeout) * 1000)
            async with self._client.pipeline(transaction=False) as pipe:
                for job_id, h in leased:
                    pipe.zadd(self._running_key(h.tenant), {job_id: until}, xx=True)
                await pipe.execute()

    async def _check_held_jobs(self) -> None:
        """After a reconnect: cancels may have been missed while we were away."""
        for job_id in list(self._held):
            with contextlib.suppress(*_UNREACHABLE):
                state = await self._client.hget(self._job_key(job_id), "state")
                if state is None or _text(state) != JobState.RUNNING.value:
                    self._cancelled(job_id)
