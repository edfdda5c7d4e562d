"""This process's connection to Redis: its clients, the scripts registered with them,
and the calls every part of the store makes (pipelines, notices, the consumer group)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from llm_worker.aio.tasks import cancel_requested
from llm_worker.store.redis.layout import GROUP, Keys, decoded, encode_notice
from llm_worker.store.redis.reachability import UNREACHABLE, Reachability
from llm_worker.store.redis.scripts import Script, Scripts

log = logging.getLogger(__name__)

T = TypeVar("T")
# Commands on their way at once, each on a connection of its own: a gateway whose
# clients follow thousands of jobs must not open thousands of connections (nor
# exceed a cluster client's connections per node, which fails the command and then
# closes every connection of the client, the other commands' included).
MAX_IN_FLIGHT = 64
_MAX_CONNECTIONS = 2 * MAX_IN_FLIGHT


class Connection:
    """Three clients of one Redis (or cluster): for commands, for blocking reads of the
    queue, for notices (a subscribed connection is never lent to commands)."""

    def __init__(
        self,
        url: str,
        *,
        keys: Keys,
        cluster: bool,
        reach: Reachability,
        command_timeout: float,
        blocking_timeout: float,
    ) -> None:
        self.url = url
        self.keys = keys
        self.cluster = cluster
        """A Redis Cluster: notices go by sharded pub/sub, each channel in one slot."""
        self.publish_command = "SPUBLISH" if cluster else "PUBLISH"
        self.reach = reach
        self.command_timeout = command_timeout
        self.blocking_timeout = blocking_timeout
        self.on_queue_lost: Callable[[], Awaitable[None]] = _nothing
        """Called when Redis has lost the queue, once it exists again."""
        self._redis: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None
        self._notifier: Any = None
        self._pubsubs: list[Any] = []
        self._scripts: Scripts | None = None

    async def open(self, deadline: float) -> None:
        """Connect, load the scripts and make the queue's consumer group, retrying for
        up to ``deadline`` seconds while Redis is away."""
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
            socket_timeout=self.blocking_timeout,
            socket_connect_timeout=timeout,
        )
        self._notifier = client_class.from_url(
            self.url, decode_responses=False, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        for client in (self._redis, self._notifier):
            if isinstance(client, aioredis.RedisCluster):
                await self.reach.retry(client.initialize, deadline=deadline)
        self._scripts = Scripts(self._redis)
        await self.reach.retry(self.load_scripts, deadline=deadline)
        await self.reach.retry(self.create_group, deadline=deadline)

    async def close(self) -> None:
        for pubsub in self._pubsubs:
            with contextlib.suppress(*UNREACHABLE):
                await pubsub.aclose()
        for client in (self._redis, self._blocking, self._notifier):
            if client is not None:
                with contextlib.suppress(*UNREACHABLE):
                    await client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        assert self._redis is not None, "the store was not started"
        return self._redis

    @property
    def blocking(self) -> aioredis.Redis:
        assert self._blocking is not None, "the store was not started"
        return self._blocking

    @property
    def scripts(self) -> Scripts:
        assert self._scripts is not None, "the store was not started"
        return self._scripts

    async def run(self, script: Script[T], **named: Any) -> T:
        """``script`` run with its keys and arguments by name; its reply, read."""
        return await self.scripts.run(script, **named)

    def queue(self, pipe: Any, script: Script[Any], **named: Any) -> None:
        """A call of ``script`` added to ``pipe``."""
        self.scripts.queue(pipe, script, **named)

    async def load_scripts(self) -> None:
        await self.scripts.load(self.client)

    async def publish(self, channel: str, message: str | bytes) -> None:
        await self.client.execute_command(self.publish_command, channel, message)

    async def announce(self, notice: list[list[Any]]) -> None:
        """Tell followers that jobs' logs grew (see :func:`.layout.encode_notice`)."""
        await self.publish(self.keys.events_channel, encode_notice(notice))

    async def pipelined(self, build: Callable[[Any], None], optional: int = 0) -> list[Any]:
        """The results of the commands ``build`` puts in a pipeline, sent in one round
        trip (one per node on a cluster); the first error is raised, but for the last
        ``optional`` commands. Scripts a node has forgotten (it restarted) are loaded
        again, and the pipeline sent again."""
        for last_try in (False, True):
            async with self.client.pipeline(transaction=False) as pipe:
                build(pipe)
                results = await pipe.execute(raise_on_error=False)
            if not last_try and any(isinstance(r, NoScriptError) for r in results):
                await self.load_scripts()
                continue
            for result in results[: len(results) - optional]:
                if isinstance(result, Exception):
                    raise result
            break
        return list(results)

    # -- the queue's consumer group --------------------------------------------

    async def create_group(self) -> None:
        try:
            await self.client.xgroup_create(self.keys.jobs_key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def grouped(self, call: Callable[[], Awaitable[T]]) -> T:
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
        log.error(
            "Redis has lost the job queue (restarted without its data, or a replica without "
            "it took over): making it again; the jobs it held are lost"
        )
        await self.create_group()
        await self.on_queue_lost()
        return await call()

    # -- notices ----------------------------------------------------------------

    async def listen(
        self,
        *,
        follows: bool,
        notified: Callable[[str, bytes], None],
        reconnected: Callable[[], None],
    ) -> list[asyncio.Task[None]]:
        """Subscribe to the channels this process hears (as :meth:`subscribe` does): a
        worker needs to hear of cancels and wakes only; queue moves and logs are for
        those who show them (``follows``). The tasks reading them, returned."""
        queue_channels = [self.keys.cancel_channel, self.keys.wake_channel]
        events_channels = []
        if follows:
            queue_channels.append(self.keys.moved_channel)
            events_channels.append(self.keys.events_channel)
        # On a cluster, a subscription per shard: one reader waiting on one shard's
        # connection would hold up the messages of another.
        groups = (
            [queue_channels, events_channels]
            if self.cluster
            else [queue_channels + events_channels]
        )
        return [
            await self.subscribe(channels, notified, reconnected)
            for channels in filter(None, groups)
        ]

    async def subscribe(
        self,
        channels: list[str],
        notified: Callable[[str, bytes], None],
        reconnected: Callable[[], None],
    ) -> asyncio.Task[None]:
        """Subscribe to ``channels`` (one slot's, on a cluster); the task returned calls
        ``notified(channel, data)`` for each message, and ``reconnected()`` after the
        connection was lost and found again (messages may have been lost)."""
        pubsub = self._notifier.pubsub()
        if self.cluster:
            await pubsub.ssubscribe(*channels)
        else:
            await pubsub.subscribe(*channels)
        self._pubsubs.append(pubsub)
        return asyncio.create_task(
            self._read_notices(pubsub, notified, reconnected),
            name=f"redis-notifications-{channels[0]}",
        )

    async def _read_notices(
        self,
        pubsub: Any,
        notified: Callable[[str, bytes], None],
        reconnected: Callable[[], None],
    ) -> None:
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
                self.reach.went_down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except Exception:
                log.exception("reading Redis notifications failed")
                await asyncio.sleep(delay)
                continue
            finally:
                if cancel_requested():  # a stop's cancel that the Redis client swallowed
                    raise asyncio.CancelledError
            if delay > 0.05:
                delay = 0.05
                reconnected()
            if message is None:
                continue
            if decoded(message["type"]) in ("message", "smessage"):
                notified(decoded(message["channel"]), message["data"])


async def _nothing() -> None:
    return None
