"""This process's mirrors of the logs its listeners follow.

Gateways apply the events a notice carries to their mirrors of the logs, and
read from Redis only what they missed; a poll every second is the safety net.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson

from llm_worker.aio.tasks import TaskSet, cancel_requested
from llm_worker.jobs.model import Event, EventKind, stored_kind
from llm_worker.ops.logs import about
from llm_worker.store.base import UnknownJob
from llm_worker.store.eventlog import EventLog
from llm_worker.store.redis.reachability import UNREACHABLE, Reachability

log = logging.getLogger(__name__)

_REFRESH_BATCH = 1000
_POLL_SECONDS = 1.0
JOB_LOST = (
    "the job store lost this job: Redis restarted without its data, or failed over to a "
    "replica that did not have it"
)

ReadEvents = Callable[[str, int, int | None], Awaitable[list[Event]]]
"""A job's events after a seq, at most a count of them (all with ``None``), from Redis."""
JobExists = Callable[[str], Awaitable[bool]]
"""Whether Redis holds the job."""
JobsExist = Callable[[list[str]], Awaitable[list[bool]]]
"""Whether Redis holds each of the jobs, in one round trip."""


class Feed:
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


class Mirrors:
    """The feeds of the jobs followed here, kept up to date from notices and from Redis."""

    def __init__(
        self,
        *,
        read_events: ReadEvents,
        job_exists: JobExists,
        jobs_exist: JobsExist,
        reachability: Reachability,
        background: TaskSet,
        channel: str,
    ) -> None:
        self._read_events = read_events
        self._job_exists = job_exists
        self._jobs_exist = jobs_exist
        self._reach = reachability
        self._background = background
        self._channel = channel
        """The events channel, for the log."""
        self.feeds: dict[str, Feed] = {}

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        """The job's events after ``after``, live, as :meth:`EventLog.follow` gives them."""
        feed = await self._open(job_id)
        try:
            async for batch in feed.log.follow(after):
                yield batch
        finally:
            await self._close(feed)

    async def _open(self, job_id: str) -> Feed:
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = Feed(job_id)
            feed.loading = asyncio.create_task(self._load(feed))
        feed.users += 1
        try:
            assert feed.loading is not None
            await asyncio.shield(feed.loading)
        except BaseException:
            await self._close(feed)
            raise
        return feed

    async def _load(self, feed: Feed) -> None:
        try:
            exists = await self._reach.for_client(lambda: self._job_exists(feed.job_id))
            if not exists:
                raise UnknownJob(feed.job_id)
            # The events channel was subscribed to first (at start): what is appended
            # from now on is announced to this feed, which is in feeds already.
            await self._refresh(feed, deadline=self._reach.grace)
        except Exception:
            # Openers from now on start afresh; those waiting get this error.
            if self.feeds.get(feed.job_id) is feed:
                await self._drop(feed)
            raise

    async def _close(self, feed: Feed) -> None:
        feed.users -= 1
        if feed.users == 0 and self.feeds.get(feed.job_id) is feed:
            await self._drop(feed)

    async def _drop(self, feed: Feed) -> None:
        del self.feeds[feed.job_id]
        if feed.loading is not None and not feed.loading.done():
            feed.loading.cancel()

    async def _refresh(self, feed: Feed, *, deadline: float | None = None) -> None:
        """Bring the mirror up to date; one refresh at a time per feed."""
        if feed.refreshing:
            feed.dirty = True
            return
        feed.refreshing = True
        try:
            while True:
                feed.dirty = False
                events = await self._reach.retry(
                    lambda: self._read_events(feed.job_id, feed.log.last_seq, _REFRESH_BATCH),
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

    def _refresh_later(self, feed: Feed) -> None:
        if feed.refreshing:
            feed.dirty = True
        else:
            self._background.spawn(self._refresh(feed), name=f"refresh-{feed.job_id}")

    async def poll_forever(self) -> None:
        # A safety net under the notifications: a message lost to a reconnect
        # costs a listener at most this long, and so does a job Redis lost.
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            try:
                await self.check()
            except UNREACHABLE as exc:
                self._reach.went_down(exc)
            except Exception:
                log.exception("checking the followed jobs failed")
            if cancel_requested():  # a stop's cancel that the Redis client swallowed
                raise asyncio.CancelledError

    async def check(self) -> None:
        """Refresh the logs of unfinished jobs; tell the listeners of jobs Redis lost."""
        feeds = [feed for feed in self.feeds.values() if not feed.log.finished]
        if not feeds:
            return
        exist = await self._jobs_exist([feed.job_id for feed in feeds])
        for feed, exists in zip(feeds, exist, strict=True):
            if exists:
                self._refresh_later(feed)
            elif not feed.log.finished and feed.loading is not None and feed.loading.done():
                # Gone before its end: Redis restarted without its data, or failed over.
                log.error(
                    "job %s was lost by Redis; telling its listeners",
                    feed.job_id,
                    extra=about(feed.job_id),
                )
                feed.log.add(Event(feed.log.last_seq + 1, EventKind.FAILED, JOB_LOST, 0))
                feed.log.show()

    def check_soon(self) -> None:
        """:meth:`check` in the background."""
        self._background.spawn(self.check(), name="check-feeds")

    def apply_notice(self, data: bytes | str) -> None:
        """Events of followed jobs, from a notice: applied to the mirrors when they
        follow on from what they hold, read from Redis when some are missing."""
        try:
            entries = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("an unreadable notice on %s: %r", self._channel, data[:200])
            return
        for entry in entries:
            feed = self.feeds.get(entry[0])
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
                known = stored_kind(kind)
                # A kind written by a newer version is left out (the next notice then
                # seems to skip one, and a refresh reads what the mirror lacks).
                if seq > feed.log.last_seq and known is not None:
                    feed.log.add(Event(seq, known, message, attempt))
            feed.log.show()
