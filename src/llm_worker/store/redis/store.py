"""The Redis job store: the gateway side and the worker side, over one connection.

This is the front: the :class:`~llm_worker.store.base.JobStore` interface, each call
handed to the part that holds it. Where keys live is :mod:`.layout`'s; the scripts
that change them, :mod:`.scripts`'; the clients, :mod:`.connection`'s. A worker's
claims on jobs are :mod:`.claims`', the events it writes :mod:`.outbox`'s, tenants'
limits :mod:`.limits`', who is alive :mod:`.presence`'s; jobs' records and logs
are read by :mod:`.records`, the listing of recent jobs is :mod:`.listing`'s, riding
out outages :mod:`.reachability`'s, and the mirrors of followed logs :mod:`.mirrors`'.

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

from llm_worker.aio.tasks import TaskSet
from llm_worker.jobs.model import (
    Claim,
    Event,
    EventKind,
    JobRecord,
    JobSpec,
    keeps_request,
    spec_json,
)
from llm_worker.ops.redaction import redact_url
from llm_worker.store.base import (
    JobStore,
    KeyReused,
    ListingQuery,
    StoreStats,
    UnknownJob,
    Unstorable,
    WorkerCensus,
)
from llm_worker.store.idempotency import IdempotencyKey, Submitted
from llm_worker.store.limits import UNLIMITED, TenantLimits
from llm_worker.store.redis.claims import Claims
from llm_worker.store.redis.connection import MAX_IN_FLIGHT, Connection
from llm_worker.store.redis.forgetting import forget
from llm_worker.store.redis.idempotency import first_job, read_tombstone
from llm_worker.store.redis.layout import Keys, decoded
from llm_worker.store.redis.limits import TenantGates
from llm_worker.store.redis.listing import RecentJobs
from llm_worker.store.redis.mirrors import Mirrors
from llm_worker.store.redis.outbox import Outbox
from llm_worker.store.redis.presence import Presence
from llm_worker.store.redis.queue import JobQueue
from llm_worker.store.redis.reachability import Reachability
from llm_worker.store.redis.records import JobRecords
from llm_worker.store.redis.schedule import Scheduler, run_at_ms
from llm_worker.store.tombstones import DEFAULT_TOMBSTONE_SECONDS, Tombstone
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
        tombstone_ttl: float = DEFAULT_TOMBSTONE_SECONDS,
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
            tombstone_ms=max(1, round(tombstone_ttl * 1000)),
        )
        self._gates, self._claims, self._outbox, self._presence = self._worker_side(limits)
        self._records, self._listing, self._mirrors = self._gateway_side()
        self._scheduler = Scheduler(self._conn)

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
        outbox = Outbox(
            self._conn, claims, gates, ttl_ms=self._ttl, tombstone_ms=self._queue.tombstone_ms
        )
        presence = Presence(
            self._conn, self.worker_name, quiet_after=max(5.0, self.heartbeat_timeout / 3)
        )
        return gates, claims, outbox, presence

    def _gateway_side(self) -> tuple[JobRecords, RecentJobs, Mirrors]:
        """The parts a gateway uses: jobs' records, the listing, the mirrors of logs."""
        records = JobRecords(self._conn)
        mirrors = Mirrors(
            read_events=records.events,
            job_exists=records.exists,
            jobs_exist=records.all_exist,
            reachability=self._reach,
            background=self._background,
            channel=self.keys.events_channel,
        )
        return records, RecentJobs(self._conn, records, self.job_ttl), mirrors

    @property
    def limits(self) -> Callable[[str], TenantLimits]:
        return self._gates.limits

    def report_commits(self, observe: Callable[[float], None]) -> None:
        self._outbox.on_commit = observe

    @property
    def _ttl(self) -> int:
        """The TTL of a finished job, in milliseconds."""
        return max(1, round(self.job_ttl * 1000))

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        await self._conn.open(deadline=self.outage_grace)
        self._tasks = [asyncio.create_task(self._outbox.write_forever(), name="redis-writes")]
        self._tasks += await self._conn.listen(
            follows=self.follows, notified=self._notified, reconnected=self._reconnected
        )
        self._tasks += [
            asyncio.create_task(self._claims.heartbeat_forever(), name="redis-heartbeat"),
            asyncio.create_task(self._mirrors.poll_forever(), name="redis-feed-poll"),
            asyncio.create_task(self._scheduler.run_forever(), name="redis-scheduled-jobs"),
        ]
        if self.follows:  # gateways add to the index of recent jobs: they trim it too
            self._tasks.append(
                asyncio.create_task(self._listing.sweep_forever(), name="redis-recent-sweep")
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
        record = await self._queue.add(text, tenant, self.limits(tenant), run_at=spec.run_at)
        assert isinstance(record, JobRecord)
        self._scheduler.heard(str(run_at_ms(record.run_at)))
        return record

    async def submit_once(self, spec: JobSpec, tenant: str, key: IdempotencyKey) -> Submitted:
        try:
            text = spec_json(spec)
        except ValueError as exc:
            raise Unstorable(str(exc)) from None
        # A replay takes nothing of the tenant's rate: asked first, apart.
        found = await first_job(self._conn, tenant, key.key)
        if found is None:
            await self._gates.take_add(tenant)
            made = await self._queue.add(text, tenant, self.limits(tenant), key, spec.run_at)
            if isinstance(made, JobRecord):
                self._scheduler.heard(str(run_at_ms(made.run_at)))
                return Submitted(made, replayed=False)
            found = made
        if not found.matches(key):
            raise KeyReused(key.key, found.job_id)
        return Submitted(found.answer(tenant), replayed=True)

    async def tombstone(self, job_id: str) -> Tombstone | None:
        return await read_tombstone(self._conn, job_id)

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._records.get(job_id)

    async def request(self, job_id: str) -> JobSpec | None:
        text = await self._records.request(job_id)
        if text is None or not keeps_request(text):
            return None
        return JobSpec.model_validate_json(text)

    async def forget(self, job_id: str) -> bool:
        await self._outbox.written_of(job_id)  # what this process appended goes first
        return await forget(self._conn, job_id)

    async def read(self, job_id: str, after: int = 0) -> list[Event]:
        return await self._records.read(job_id, after)

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

    async def _recent(self, query: ListingQuery) -> list[JobRecord]:
        return await self._listing.page(query)

    async def sweep_recent(self) -> int:
        """Drop from the index of recent jobs the ids of jobs that are gone, among those
        created over JOB_TTL ago; returns how many."""
        return await self._listing.sweep()

    async def workers(self) -> WorkerCensus:
        return await self._presence.census()

    async def owners(self, job_ids: list[str]) -> dict[str, str]:
        return await self._records.owners(job_ids)

    # -- notifications ------------------------------------------------------

    def _notified(self, channel: str, data: bytes | str) -> None:
        if channel == self.keys.moved_channel:
            self._queue_waiters.wake(None)
        elif channel == self.keys.cancel_channel:
            self._claims.cancelled(decoded(data))
        elif channel == self.keys.wake_channel:
            self._claims.woke()
            self._scheduler.heard(data)
        elif channel == self.keys.events_channel:
            self._mirrors.apply_notice(data)

    def _reconnected(self) -> None:
        """Notifications may have been lost while the connection was down, and Redis
        may have come back without its data."""
        self._reach.came_back()
        self._mirrors.check_soon()
        self._queue_waiters.wake(None)
        self._scheduler.lost_notices()
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
