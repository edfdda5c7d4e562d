"""Whether Redis answers: calls retried through outages, and who hears of one.

Nothing here talks to Redis; what counts as Redis being away is the errors a
call raises (:data:`UNREACHABLE`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_worker.aio.tasks import cancel_requested
from llm_worker.store.base import StoreUnavailable
from llm_worker.store.waiters import Waiters

log = logging.getLogger(__name__)

T = TypeVar("T")

# What Redis being away looks like; for a cluster, a node down or a slot moving too.
UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    ClusterDownError,
    TryAgainError,
)


class Reachability:
    """Calls to Redis retried with back-off while it is away, a bounded number at
    once; an outage longer than ``grace`` seconds is announced to :meth:`outage`
    waiters, and its end to :meth:`recovered` ones."""

    def __init__(self, grace: float, where: str, *, max_in_flight: int) -> None:
        self.grace = grace
        self.where = where
        """Redis's address, for the log."""
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._down_since: float | None = None
        self._outage_announced = False
        self._outage_waiters: Waiters[str] = Waiters()
        self._recovery_waiters: Waiters[None] = Waiters()

    @property
    def down(self) -> bool:
        """Whether the last call failed for want of Redis."""
        return self._down_since is not None

    @property
    def away(self) -> str | None:
        """While an outage longer than the grace period goes on, what to tell a
        client whose request needs Redis (it should not wait for it); else ``None``."""
        if self._down_since is None or not self._outage_announced:
            return None
        seconds = time.monotonic() - self._down_since
        return f"the job store (Redis) has been unreachable for {seconds:.0f}s"

    async def retry(self, call: Callable[[], Awaitable[T]], *, deadline: float | None = None) -> T:
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
            except UNREACHABLE as exc:
                self.went_down(exc)
                if cancel_requested():  # a stop's cancel that the Redis client swallowed
                    raise asyncio.CancelledError from exc
                if deadline is not None and time.monotonic() - started >= deadline:
                    raise StoreUnavailable(f"the job store (Redis) is unreachable: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            else:
                if self._down_since is not None:
                    self.came_back()
                return result

    def for_client(self, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """A client's request waits out an outage up to the grace period."""
        return self.retry(call, deadline=self.grace)

    async def unless_away(self, call: Callable[[], Awaitable[T]], within: float) -> T:
        """:meth:`for_client`, but while an announced outage goes on, one try of
        ``call`` within ``within`` seconds, then :class:`StoreUnavailable`: a request
        made then fails fast, rather than wait out a timeout (a black hole's)."""
        if (away := self.away) is None:
            return await self.for_client(call)
        try:
            async with self._in_flight:
                result = await asyncio.wait_for(call(), within)
        except (*UNREACHABLE, TimeoutError):
            raise StoreUnavailable(away) from None
        self.came_back()
        return result

    def went_down(self, exc: BaseException) -> None:
        """A call failed for want of Redis."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("lost contact with Redis at %s: %r; retrying", self.where, exc)
            asyncio.get_running_loop().call_later(self.grace, self._outage_check)

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
        self._outage_waiters.wake(message)

    def came_back(self) -> None:
        """A call got through: an outage, if there was one, is over."""
        if self._down_since is None:
            return
        seconds = time.monotonic() - self._down_since
        self._down_since = None
        log.warning("Redis is reachable again after %.1fs", seconds)
        if self._outage_announced:
            self._outage_announced = False
            self._recovery_waiters.wake(None)

    async def outage(self) -> str:
        """Once Redis has been away for longer than the grace period: what to tell clients."""
        return await self._outage_waiters.wait()

    async def recovered(self) -> None:
        """Once an announced outage is over; at once when none is."""
        if not self._outage_announced:
            return
        await self._recovery_waiters.wait()
