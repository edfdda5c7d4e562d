"""Fixtures that make started job stores of each kind, closed after the test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_worker.store import JobStore, MemoryStore
from llm_worker.store.redis import RedisStore
from llm_worker.store.sqlite import SQLiteStore
from llm_worker.testing.redis_cluster import RedisCluster
from llm_worker.testing.redis_server import RedisServer, unique_prefix

STORE_KINDS = ["memory", "sqlite", "redis"]
DURABLE_STORE_KINDS = ["sqlite", "redis"]
# The store's own contract runs on a Redis Cluster of three masters too.
CONTRACT_STORE_KINDS = [*STORE_KINDS, "redis-cluster"]
CONTRACT_DURABLE_STORE_KINDS = [*DURABLE_STORE_KINDS, "redis-cluster"]

StoreFactory = Callable[..., Awaitable[JobStore]]


async def until_shown(store: JobStore, job_id: str, seq: int, timeout: float = 5) -> None:
    """Return once readers see the job's events up to ``seq``: a durable store shows
    an event only once it has saved it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        events = await store.read(job_id)
        if events and events[-1].seq >= seq:
            return
        assert loop.time() < deadline, f"event {seq} of job {job_id} never shown: {events}"
        await asyncio.sleep(0.002)


@pytest.fixture
async def memory_store_factory() -> AsyncIterator[StoreFactory]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(**options: Any) -> JobStore:
            store = MemoryStore(**options)
            await store.start()
            stack.push_async_callback(store.close)
            return store

        yield make


@pytest.fixture
async def sqlite_store_factory(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def make(**options: Any) -> JobStore:
            nonlocal count
            count += 1
            options.setdefault("path", tmp_path / f"jobs-{count}.db")
            store = SQLiteStore(**options)
            await store.start()
            stack.push_async_callback(store.close)
            return store

        yield make


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the session; tests keep apart by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, to kill and restart; its append-only file keeps the jobs."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_store_factory(redis_server: RedisServer) -> AsyncIterator[StoreFactory]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(**options: Any) -> JobStore:
            options.setdefault("prefix", unique_prefix())
            options.setdefault("url", redis_server.url)
            store = RedisStore(**options)
            await store.start()
            stack.push_async_callback(store.close)
            return store

        yield make


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One private Redis Cluster of three masters for the session."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def redis_cluster_store_factory(redis_cluster: RedisCluster) -> AsyncIterator[StoreFactory]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(**options: Any) -> JobStore:
            options.setdefault("prefix", unique_prefix())
            options.setdefault("url", redis_cluster.url)
            store = RedisStore(cluster=True, **options)
            await store.start()
            stack.push_async_callback(store.close)
            return store

        yield make


@pytest.fixture
def make_store(request: pytest.FixtureRequest, store_kind: str) -> StoreFactory:
    """Makes started stores of the test's kind (``store_kind``: a module parametrizes it
    over the kinds it runs on), closed after the test."""
    return store_factory(request, store_kind)


def store_settings(request: pytest.FixtureRequest, kind: str) -> dict[str, str]:
    """The environment that points a worker process at a durable store of ``kind``
    (``sqlite``: a file in its working directory; ``redis``: the session's private
    Redis, under a prefix of its own)."""
    if kind == "sqlite":
        return {"STORE_URL": "sqlite:///jobs.db"}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"STORE_URL": server.url, "REDIS_PREFIX": unique_prefix()}


def store_factory(request: pytest.FixtureRequest, kind: str) -> StoreFactory:
    """The factory of stores of ``kind``, set up now (from a fixture: not once a test runs)."""
    factory: StoreFactory = request.getfixturevalue(f"{kind.replace('-', '_')}_store_factory")
    return factory
