"""The gateway's side of the queue: adding a job, cancelling one, where one waits.

A new job's record is written first, with a TTL, then queued by one script that
checks every limit; only then is the record kept. A gateway dying in between leaves
a record that expires, never a job said queued that is not.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from llm_worker.jobs.model import JobRecord, JobState
from llm_worker.store.base import QueueFull, StoreStats, StoreUnavailable, UnknownJob
from llm_worker.store.idempotency import FirstJob, IdempotencyKey
from llm_worker.store.limits import TenantLimits
from llm_worker.store.redis.connection import Connection
from llm_worker.store.redis.idempotency import SUBMIT_ONCE, once_args
from llm_worker.store.redis.layout import GROUP
from llm_worker.store.redis.limits import FAST_TRY_SECONDS
from llm_worker.store.redis.schedule import UNQUEUE, run_at_ms
from llm_worker.store.redis.scripts import CANCEL, KEEP, RECORD, SUBMIT


def dequeue_args(conn: Connection, job_id: str) -> dict[str, Any]:
    """:data:`.scripts.DEQUEUE`'s keys and arguments for ``job_id`` leaving the queue
    (started or cancelled): out of the waiting jobs and their counts, those behind it
    told that they moved."""
    keys = conn.keys
    return {
        "pending_key": keys.pending_key,
        "counts_key": keys.counts_key,
        "job_id": job_id,
        "moved_channel": keys.moved_channel,
        "publish": conn.publish_command,
    }


class JobQueue:
    """The queue shared by every gateway and worker, as a gateway changes it."""

    def __init__(
        self,
        conn: Connection,
        *,
        queue_max: int,
        queue_max_bytes: int,
        unqueued_ttl: float,
        finished_ttl_ms: int,
        tombstone_ms: int,
    ) -> None:
        self._conn = conn
        self._keys = conn.keys
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self._unqueued_ttl_ms = int(unqueued_ttl * 1000)
        self._finished_ttl_ms = finished_ttl_ms
        self.tombstone_ms = tombstone_ms

    async def add(
        self,
        spec_text: str,
        tenant: str,
        limits: TenantLimits,
        once: IdempotencyKey | None = None,
        run_at: float | None = None,
    ) -> JobRecord | FirstJob:
        """A new job, queued; :class:`QueueFull` if the queue, the tenant's share of
        it or its bytes are full. With ``once``, the job of that idempotency key of the
        tenant instead, if it has one (:mod:`.idempotency`). With a ``run_at`` ahead,
        scheduled (:mod:`.schedule`)."""
        reach = self._conn.reach
        job_id = str(uuid.uuid4())
        now = time.time()
        job_key = self._keys.job_key(job_id)
        await self._record(job_key, spec_text, tenant, now, run_at)
        max_queued = limits.max_queued_jobs
        named = self._submit_args(job_id, spec_text, tenant, max_queued, now, run_at)
        if once is None:
            submitted = await reach.for_client(lambda: self._conn.run(SUBMIT, **named))
        else:
            first = FirstJob(job_id, once.digest, now, now + once.window)
            submitted = await reach.for_client(
                lambda: self._conn.run(
                    SUBMIT_ONCE, **named, **once_args(self._conn, tenant, once, first)
                )
            )
            if isinstance(submitted, FirstJob):  # the key's: this job is not queued
                await reach.for_client(lambda: self._conn.client.delete(job_key))
                return submitted
        if submitted.full is not None:
            await reach.for_client(lambda: self._conn.client.delete(job_key))
            raise self._full(submitted.full, tenant, max_queued or 0)
        kept = await reach.for_client(
            lambda: self._conn.run(KEEP, job_key=job_key, ticket=submitted.ticket)
        )
        if not kept:  # Redis was away for longer than the record's TTL
            raise StoreUnavailable("the job store (Redis) lost the job while adding it")
        return JobRecord(job_id, JobState.PENDING, now, tenant=tenant, run_at=run_at)

    async def _record(
        self, job_key: str, spec_text: str, tenant: str, now: float, run_at: float | None
    ) -> None:
        """The new job's record, which expires unless the submit that follows goes
        through. Fast when Redis is known to be away: the client is told at once."""
        fields = {
            "state": JobState.PENDING.value,
            "attempt": 0,
            "seq": 0,
            "start": 0,
            "op": 0,
            "spec": spec_text,
            "tenant": tenant,
            "size": len(spec_text),
            "created_at": repr(now),
        }
        if run_at is not None:
            fields["run_at"] = repr(run_at)
        await self._conn.reach.unless_away(
            lambda: self._conn.run(
                RECORD,
                job_key=job_key,
                ttl_ms=self._unqueued_ttl_ms,
                fields=[part for field in fields.items() for part in field],
            ),
            FAST_TRY_SECONDS,
        )

    def _submit_args(
        self,
        job_id: str,
        spec_text: str,
        tenant: str,
        max_queued: int | None,
        now: float,
        run_at: float | None,
    ) -> dict[str, Any]:
        """What the submit script is given for the job."""
        return {
            "jobs_key": self._keys.jobs_key,
            "pending_key": self._keys.pending_key,
            "tickets_key": self._keys.tickets_key,
            "counts_key": self._keys.counts_key,
            "recent_key": self._keys.recent_key,
            "scheduled_key": self._keys.scheduled_key,
            "job_id": job_id,
            "run_at_ms": run_at_ms(run_at),
            "queue_max": self.queue_max,
            "tenant": tenant,
            "tenant_max": -1 if max_queued is None else max_queued,
            "size": len(spec_text),
            "max_bytes": self.queue_max_bytes,
            "created_at": repr(now),
            "wake_channel": self._keys.wake_channel,
            "publish": self._conn.publish_command,
        }

    def _full(self, what: str, tenant: str, tenant_max: int) -> QueueFull:
        if what == "tenant":
            return QueueFull.of_tenant(tenant, tenant_max)
        if what == "bytes":
            return QueueFull.of_bytes(self.queue_max_bytes)
        return QueueFull.of_jobs(self.queue_max)

    async def cancel(self, job_id: str) -> None:
        """End the job cancelled, if it has not ended: out of the queue if it waits,
        its worker told if it runs. :class:`UnknownJob` if there is no such job."""
        reach = self._conn.reach
        before = await reach.for_client(
            lambda: self._conn.run(
                CANCEL,
                job_key=self._keys.job_key(job_id),
                events_key=self._keys.events_key(job_id),
                gone_key=self._keys.gone_key(job_id),
                ttl_ms=self._finished_ttl_ms,
                now=repr(time.time()),
                tombstone_ms=self.tombstone_ms,
            )
        )
        if before is None:
            raise UnknownJob(job_id)
        if before in (JobState.PENDING, JobState.RUNNING):
            await reach.for_client(lambda: self._conn.announce([[job_id, 0]]))
        if before in (JobState.PENDING, JobState.CANCELLED):
            await reach.for_client(  # a scheduled job too
                lambda: self._conn.run(
                    UNQUEUE,
                    **dequeue_args(self._conn, job_id),
                    scheduled_key=self._keys.scheduled_key,
                )
            )
        elif before is JobState.RUNNING:
            await reach.for_client(lambda: self._conn.publish(self._keys.cancel_channel, job_id))

    async def position(self, job_id: str) -> int | None:
        rank = await self._conn.reach.for_client(
            lambda: self._conn.client.zrank(self._keys.pending_key, job_id)
        )
        return None if rank is None else rank + 1

    async def stats(self) -> StoreStats:
        client, reach = self._conn.client, self._conn.reach
        pending = await reach.for_client(lambda: client.zcard(self._keys.pending_key))
        summary = await reach.for_client(
            lambda: self._conn.grouped(lambda: client.xpending(self._keys.jobs_key, GROUP))
        )
        return StoreStats(pending=int(pending), running=int(summary["pending"]))
