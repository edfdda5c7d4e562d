"""The webhook deliveries' contract, on every store: entries kept, claimed by one caller
at a time for a lease, saved, settled ones forgotten after their keep; and, on the
durable stores, still there when the store is opened again."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from llm_worker.store.deliveries import Delivery, DeliveryStore, MemoryDeliveries
from llm_worker.store.redis.deliveries import RedisDeliveries
from llm_worker.store.sqlite_deliveries import SQLiteDeliveries
from llm_worker.testing.redis_cluster import RedisCluster
from llm_worker.testing.redis_server import RedisServer, unique_prefix

pytest_plugins = ["tests.support.stores"]

Opener = Callable[[], Awaitable[DeliveryStore]]


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
async def open_deliveries(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens the deliveries of one store (the same one each call: a restart)."""
    kind = request.param
    prefix = unique_prefix()
    memory = MemoryDeliveries()
    async with contextlib.AsyncExitStack() as stack:

        async def make() -> DeliveryStore:
            store: DeliveryStore
            if kind == "memory":
                return memory
            if kind == "sqlite":
                store = SQLiteDeliveries(tmp_path / "jobs.db.webhooks")
            elif kind == "redis":
                server: RedisServer = request.getfixturevalue("redis_server")
                store = RedisDeliveries(server.url, prefix=prefix)
            else:
                cluster: RedisCluster = request.getfixturevalue("redis_cluster")
                store = RedisDeliveries(cluster.url, prefix=prefix, cluster=True)
            await store.start()
            stack.push_async_callback(store.close)
            if isinstance(store, RedisDeliveries):
                # Leave nothing in the session's Redis: the cluster fixture's own test
                # expects a slot it picks to hold only its key.
                stack.push_async_callback(forget_keys, store, prefix)
            return store

        make.kind = kind  # type: ignore[attr-defined]
        yield make


async def forget_keys(store: RedisDeliveries, prefix: str) -> None:
    client = store._redis
    if client is not None:
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)


def entry(job_id: str, next_at: float = 100.0) -> Delivery:
    return Delivery(job_id, "https://example.com/h", f"msg_{job_id}", "t", next_at=next_at)


async def test_entries_are_claimed_once_their_time_has_come(open_deliveries: Opener) -> None:
    store = await open_deliveries()
    await store.add(entry("a", next_at=100.0))
    await store.add(entry("b", next_at=200.0))
    assert await store.get("a") == entry("a", next_at=100.0)
    assert await store.get("nope") is None
    assert await store.claim(now=99.0, limit=10, lease=30.0) == []
    assert [d.job_id for d in await store.claim(now=150.0, limit=10, lease=30.0)] == ["a"]
    # Leased: nobody else gets it until the lease ends, or it is saved.
    assert await store.claim(now=160.0, limit=10, lease=30.0) == []
    again = await store.claim(now=250.0, limit=10, lease=30.0)
    assert sorted(d.job_id for d in again) == ["a", "b"]


async def test_a_saved_entry_is_claimed_at_its_new_time(open_deliveries: Opener) -> None:
    store = await open_deliveries()
    await store.add(entry("a", next_at=100.0))
    (claimed,) = await store.claim(now=100.0, limit=10, lease=30.0)
    tried = claimed.replace(
        state="due", attempts=1, next_at=105.0, last_status=500, last_excerpt="oops"
    )
    await store.save(tried, keep=60.0)
    assert await store.get("a") == tried
    assert await store.claim(now=104.0, limit=10, lease=30.0) == []
    assert await store.claim(now=105.0, limit=10, lease=30.0) == [tried]


async def test_a_settled_entry_is_never_claimed_and_kept_a_while(
    open_deliveries: Opener,
) -> None:
    store = await open_deliveries()
    await store.add(entry("a", next_at=100.0))
    (claimed,) = await store.claim(now=100.0, limit=10, lease=30.0)
    done = claimed.replace(state="delivered", attempts=1, next_at=None, settled_at=100.0)
    await store.save(done, keep=3600.0)
    assert await store.claim(now=1_000.0, limit=10, lease=30.0) == []
    assert await store.get("a") == done
    await store.claim(now=3_701.0, limit=10, lease=30.0)
    if not open_deliveries.kind.startswith("redis"):  # type: ignore[attr-defined]
        # Forgotten once its keep is over (on Redis, by its key's expiry, in Redis's time).
        assert await store.get("a") is None


async def test_claims_take_at_most_the_limit(open_deliveries: Opener) -> None:
    store = await open_deliveries()
    for n in range(5):
        await store.add(entry(f"j{n}", next_at=float(n)))
    first = await store.claim(now=10.0, limit=3, lease=30.0)
    rest = await store.claim(now=10.0, limit=3, lease=30.0)
    assert len(first) == 3 and len(rest) == 2
    assert {d.job_id for d in first} | {d.job_id for d in rest} == {f"j{n}" for n in range(5)}


async def test_entries_outlive_the_store_being_opened_again(open_deliveries: Opener) -> None:
    if open_deliveries.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("the in-process store keeps nothing past its process")
    store = await open_deliveries()
    await store.add(entry("a", next_at=100.0))
    (claimed,) = await store.claim(now=100.0, limit=10, lease=30.0)
    await store.save(claimed.replace(state="due", attempts=2, next_at=150.0), keep=60.0)
    await store.close()
    reopened = await open_deliveries()
    (again,) = await reopened.claim(now=150.0, limit=10, lease=30.0)
    assert (again.state, again.attempts, again.webhook_id) == ("due", 2, "msg_a")
