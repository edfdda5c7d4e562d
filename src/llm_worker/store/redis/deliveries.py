"""Webhook deliveries of a Redis store, shared by every worker on it.

Keys (``P`` is ``REDIS_PREFIX``; one hash tag, so a transaction touches one slot on a
cluster too):

``P:{webhooks}:due``        sorted set of open entries' job ids by ``next_at``
``P:{webhooks}:d:ID``       the entry of job ID, as JSON; a settled one expires
``P:{webhooks}:lease:ID``   whose the entry's next attempt is (``SET NX PX``): a worker
                            that dies holding it delays the attempt by the lease only

A worker leases entries in one script (:data:`CLAIM`), which reads each as it leases it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis

from llm_worker.store.base import StoreUnavailable
from llm_worker.store.deliveries import Delivery, DeliveryStore
from llm_worker.store.redis.reachability import UNREACHABLE

T = TypeVar("T")

CLAIM = """
local due, now, lease_until, limit = KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local prefix, expiry_ms = ARGV[5], ARGV[6]
local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local taken = {}
for _, id in ipairs(ids) do
  if #taken >= limit then break end
  local lease = prefix .. 'lease:' .. id
  local held = redis.call('GET', lease)
  if not held or tonumber(held) <= now then
    local entry = redis.call('GET', prefix .. 'd:' .. id)
    if entry then
      redis.call('SET', lease, lease_until, 'PX', expiry_ms)
      table.insert(taken, entry)
    else
      redis.call('ZREM', due, id)
    end
  end
end
return taken
"""
"""Lease up to ``limit`` entries whose time has come (among the first ``4 * limit`` due:
those leased by others are passed over); their JSON. Every key is in the
``{webhooks}`` slot, as ``due`` is."""


class RedisDeliveries(DeliveryStore):
    def __init__(self, url: str, *, prefix: str = "llmw", cluster: bool = False) -> None:
        self.url = url
        self.cluster = cluster
        self._due = f"{prefix}:{{webhooks}}:due"
        self._entry = f"{prefix}:{{webhooks}}:d:"
        self._lease = f"{prefix}:{{webhooks}}:lease:"
        self._prefix = f"{prefix}:{{webhooks}}:"
        self._redis: Any = None
        self._claim: Any = None

    async def start(self) -> None:
        client_class = aioredis.RedisCluster if self.cluster else aioredis.Redis
        self._redis = client_class.from_url(
            self.url, decode_responses=False, socket_timeout=5.0, socket_connect_timeout=5.0
        )
        self._claim = self._redis.register_script(CLAIM)

    async def close(self) -> None:
        if self._redis is not None:
            client, self._redis = self._redis, None
            await client.aclose()

    async def add(self, delivery: Delivery) -> None:
        await _reaching(self._add(delivery))

    async def _add(self, delivery: Delivery) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._entry + delivery.job_id, _dumps(delivery))
            pipe.zadd(self._due, {delivery.job_id: delivery.next_at or 0.0})
            await pipe.execute()

    async def get(self, job_id: str) -> Delivery | None:
        return await _reaching(self._get(job_id))

    async def _get(self, job_id: str) -> Delivery | None:
        raw = await self._redis.get(self._entry + job_id)
        return _loads(raw) if raw is not None else None

    async def claim(self, now: float, limit: int, lease: float) -> list[Delivery]:
        return await _reaching(self._take(now, limit, lease))

    async def _take(self, now: float, limit: int, lease: float) -> list[Delivery]:
        # The lease's end is its value, on the callers' clock; its expiry in Redis only
        # cleans up after a worker that died holding it.
        expiry_ms = int(max(lease, 1.0) * 2000)
        raw = await self._claim(
            keys=[self._due],
            args=[now, now + lease, limit, limit * 4, self._prefix, expiry_ms],
        )
        taken = [_loads(entry) for entry in raw]
        return [entry for entry in taken if entry.open and (entry.next_at or 0.0) <= now]

    async def save(self, delivery: Delivery, keep: float) -> None:
        await _reaching(self._save(delivery, keep))

    async def _save(self, delivery: Delivery, keep: float) -> None:
        job_id = delivery.job_id
        async with self._redis.pipeline(transaction=True) as pipe:
            if delivery.open:
                pipe.set(self._entry + job_id, _dumps(delivery))
                pipe.zadd(self._due, {job_id: delivery.next_at or 0.0})
            else:
                pipe.set(self._entry + job_id, _dumps(delivery), px=max(1, int(keep * 1000)))
                pipe.zrem(self._due, job_id)
            pipe.delete(self._lease + job_id)
            await pipe.execute()


async def _reaching(call: Awaitable[T]) -> T:
    """``call``'s result; :class:`StoreUnavailable` when Redis cannot be reached (what
    the store's other parts raise then: a 503 to a client, a quiet wait to the deliverer),
    not redis-py's own errors."""
    try:
        return await call
    except UNREACHABLE as exc:
        raise StoreUnavailable(f"webhook deliveries: Redis is unreachable: {exc}") from exc


def _dumps(delivery: Delivery) -> bytes:
    return orjson.dumps(dataclasses.asdict(delivery))


def _loads(raw: bytes) -> Delivery:
    return Delivery(**orjson.loads(raw))
