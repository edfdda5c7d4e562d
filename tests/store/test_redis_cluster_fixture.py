"""The private Redis Cluster that tests use: keys spread over its nodes by hash tag,
Lua scripts within one hash tag, sharded pub/sub through redis-py's async cluster
client, and a node killed and brought back."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.asyncio.cluster import ClusterPubSub

from llm_worker.testing.redis_cluster import RedisCluster
from llm_worker.testing.redis_server import unique_prefix


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The session's cluster (tests/support/stores.py); tests keep apart by key prefix."""
    return redis_cluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of the test's own, to kill a node of."""
    cluster = RedisCluster(tmp_path / "redis-cluster")
    cluster.start()
    yield cluster
    cluster.stop()


@contextlib.asynccontextmanager
async def connect(cluster: RedisCluster) -> AsyncIterator[AsyncRedisCluster]:
    client = AsyncRedisCluster.from_url(cluster.url, decode_responses=True)
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


def tags_by_port(client: AsyncRedisCluster, prefix: str) -> dict[int, str]:
    """A hash tag of each node's, by the node's port."""
    tags: dict[int, str] = {}
    for number in itertools.count():
        tag = f"{{{prefix}.{number}}}"
        tags.setdefault(client.get_node_from_key(tag).port, tag)
        if len(tags) == len(client.get_primaries()):
            return tags
    raise AssertionError("unreachable")


async def next_message(pubsub: ClusterPubSub, timeout: float = 5) -> dict[str, Any]:
    """The next published message, past subscription confirmations; a node that is
    down is read again until it is back."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        with contextlib.suppress(redis.ConnectionError):
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is not None:
                return message
    raise AssertionError(f"no message in {timeout} s")


async def test_keys_of_different_hash_tags_live_on_different_nodes(cluster: RedisCluster) -> None:
    async with connect(cluster) as client:
        tags = tags_by_port(client, unique_prefix())
        assert sorted(tags) == sorted(cluster.ports)
        for tag in tags.values():
            await client.set(f"{tag}key", f"value of {tag}")
        for port, tag in tags.items():
            assert await client.get(f"{tag}key") == f"value of {tag}"
            slot = client.keyslot(f"{tag}key")
            for node_port in cluster.ports:
                with redis.Redis(port=node_port, decode_responses=True) as node:
                    held = node.execute_command("CLUSTER GETKEYSINSLOT", slot, 10)
                assert held == ([f"{tag}key"] if node_port == port else [])


async def test_lua_scripts_run_over_the_keys_of_one_hash_tag(cluster: RedisCluster) -> None:
    tag = f"{{{unique_prefix()}}}"
    script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[2], ARGV[2])"
    async with connect(cluster) as client:
        assert await client.eval(script, 2, f"{tag}name", f"{tag}count", "job", 5) == 5
        assert await client.get(f"{tag}name") == "job"
        registered = client.register_script(script)
        assert await registered(keys=[f"{tag}name", f"{tag}count"], args=["job2", 2]) == 7
        assert await client.get(f"{tag}name") == "job2"
        other = next(t for t in tags_by_port(client, unique_prefix()).values() if t != tag)
        with pytest.raises(redis.RedisClusterException, match="same key slot"):
            await client.eval(script, 2, f"{tag}name", f"{other}count", "job", 1)


async def test_sharded_pubsub_delivers_from_every_node(cluster: RedisCluster) -> None:
    async with connect(cluster) as client:
        channels = {
            port: f"{tag}events" for port, tag in tags_by_port(client, unique_prefix()).items()
        }
        pubsub = client.pubsub()
        try:
            await pubsub.ssubscribe(*channels.values())
            for channel in channels.values():
                assert await client.spublish(channel, f"to {channel}") == 1
            received = [await next_message(pubsub) for _ in channels]
            assert {(m["type"], m["channel"], m["data"]) for m in received} == {
                ("smessage", channel, f"to {channel}") for channel in channels.values()
            }

            channel = channels[cluster.ports[0]]
            tag = channel.removesuffix("events")
            async with client.pipeline(transaction=True) as pipe:
                pipe.rpush(f"{tag}log", "event")
                pipe.spublish(channel, "in a transaction")
                assert await pipe.execute() == [1, 1]
            assert (await next_message(pubsub))["data"] == "in a transaction"
        finally:
            await pubsub.aclose()


async def test_killed_nodes_come_back_with_their_keys_and_subscribers(
    own_cluster: RedisCluster,
) -> None:
    cluster = own_cluster
    async with connect(cluster) as client:
        tag = tags_by_port(client, unique_prefix())[cluster.ports[1]]
        channel = f"{tag}events"
        await client.set(f"{tag}key", "kept")
        pubsub = client.pubsub()
        try:
            await pubsub.ssubscribe(channel)
            assert (await pubsub.get_sharded_message(timeout=1))["type"] == "ssubscribe"

            cluster.kill_node(1)
            with pytest.raises((redis.ConnectionError, redis.exceptions.ClusterDownError)):
                await client.get(f"{tag}key")
            with pytest.raises(redis.ConnectionError):
                await pubsub.get_sharded_message(timeout=1)

            await asyncio.to_thread(cluster.restart_node, 1)
            assert await client.get(f"{tag}key") == "kept"
            # The subscriber's connection comes back, subscribed again, once read.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while await client.spublish(channel, "back") == 0:
                assert loop.time() < deadline, "the subscription never came back"
                with contextlib.suppress(redis.ConnectionError):
                    await pubsub.get_sharded_message(timeout=0.05)
            assert (await next_message(pubsub))["data"] == "back"
        finally:
            await pubsub.aclose()
    cluster.stop(kill=True)
    cluster.stop()
    assert all(node.process is None for node in cluster.nodes)

    cluster.start()
    async with connect(cluster) as client:
        assert await client.get(f"{tag}key") == "kept"
