"""Tenants' limits in Redis: how fast each adds jobs, and its places among running jobs.

A tenant with a limit of running jobs has a sorted set of the jobs holding its places,
each by the end of a lease its worker renews with its heartbeats: a worker that dies
stops renewing, and its places free themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llm_worker.store.base import RateLimited
from llm_worker.store.limits import TenantLimits
from llm_worker.store.redis.connection import Connection
from llm_worker.store.redis.scripts import RATE, RESERVE

# While Redis is known to be away, how long a request that needs it gets to find it back.
FAST_TRY_SECONDS = 0.5
FREE_COMMANDS = 2
"""The commands :meth:`TenantGates.queue_free` adds to a pipeline."""


class TenantGates:
    """The limits of :class:`~llm_worker.store.limits.TenantLimits` that Redis keeps."""

    def __init__(
        self,
        conn: Connection,
        limits: Callable[[str], TenantLimits],
        *,
        lease_seconds: float,
        outage_grace: float,
    ) -> None:
        self._conn = conn
        self.limits = limits
        self._lease_seconds = lease_seconds
        self._outage_grace = outage_grace

    async def take_add(self, tenant: str) -> None:
        """Count an add of the tenant's against its rate; :class:`RateLimited` if it
        must wait first. Fast when Redis is known to be away."""
        per_minute = self.limits(tenant).adds_per_minute
        if not per_minute:
            return
        wait_ms = await self._conn.reach.unless_away(
            lambda: self._conn.run(
                RATE,
                rate_key=self._conn.keys.rate_key(tenant),
                interval_ms=60_000 / per_minute,
                burst_ms=60_000,
            ),
            FAST_TRY_SECONDS,
        )
        if wait_ms:
            raise RateLimited(tenant, per_minute, float(wait_ms) / 1000)

    async def lease(self, job_id: str, tenant: str) -> bool | None:
        """One of the tenant's running places for the job: ``True`` if it took one,
        ``False`` if the tenant has no limit, ``None`` if all its places are taken."""
        limit = self.limits(tenant).max_running_jobs
        if limit is None:
            return False
        reserved = await self._conn.reach.retry(
            lambda: self._conn.run(
                RESERVE,
                running_key=self._conn.keys.running_key(tenant),
                job_id=job_id,
                now_ms=int(time.time() * 1000),
                lease_ms=int(self._lease_seconds * 1000),
                limit=limit,
            ),
            deadline=self._outage_grace,
        )
        return True if reserved else None

    async def renew(self, leased: list[tuple[str, str]]) -> None:
        """Renew the places these jobs (``(job_id, tenant)`` each) hold."""
        until = int((time.time() + self._lease_seconds) * 1000)
        async with self._conn.client.pipeline(transaction=False) as pipe:
            for job_id, tenant in leased:
                pipe.zadd(self._conn.keys.running_key(tenant), {job_id: until}, xx=True)
            await pipe.execute()

    async def free(self, job_id: str, tenant: str) -> None:
        """The job's place is free: workers waiting for one look again."""
        await self._conn.reach.retry(
            lambda: self._conn.client.zrem(self._conn.keys.running_key(tenant), job_id)
        )
        await self._conn.reach.retry(lambda: self._conn.publish(self._conn.keys.wake_channel, ""))

    def queue_free(self, pipe: Any, job_id: str, tenant: str) -> None:
        """:meth:`free`, added to ``pipe`` as :data:`FREE_COMMANDS` commands."""
        pipe.zrem(self._conn.keys.running_key(tenant), job_id)
        pipe.execute_command(self._conn.publish_command, self._conn.keys.wake_channel, "")
