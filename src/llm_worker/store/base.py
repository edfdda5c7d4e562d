"""The job store: the one seam between the gateway and the workers.

The gateway submits jobs, follows their logs, cancels and queries them; workers
claim jobs and append to their logs. Neither talks to the other except through
a store, so one process or many run the same code. A store guarantees:

* a job is claimed by one worker at a time; events are accepted only from the
  attempt that holds the claim (:class:`NotOwner` otherwise), so nothing is
  written to a job after it was cancelled or finished;
* events get consecutive ``seq`` numbers and every follower sees each of them
  once, in order, whether it joined before, during or after the job ran;
* a finished job and its log stay readable for the store's TTL, then vanish; so
  does its request, when it asked to be kept (:meth:`JobStore.request`); a finished
  job :meth:`JobStore.forget` was asked to forget vanishes at once, for good.
"""

from __future__ import annotations

import abc
import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from llm_worker.jobs.model import Claim, Event, EventKind, JobRecord, JobSpec, JobState
from llm_worker.store.idempotency import IdempotencyKey, Submitted
from llm_worker.store.tombstones import Tombstone


class StoreError(Exception):
    """A request the store cannot honour; the message is meant for the client."""


@dataclass(frozen=True, order=True, slots=True)
class ListingKey:
    """A job's place in the listing of recent jobs: newest first, by ``created_at`` then
    by id (the greater first), the same on every store. A page of the listing starts
    strictly below the key of the last job of the page before, so jobs added meanwhile
    (newer) shift no page."""

    created_at: float
    job_id: str

    @classmethod
    def of(cls, record: JobRecord) -> ListingKey:
        return cls(record.created_at, record.id)

    def cursor(self) -> str:
        """The key as a cursor for a client (opaque to it: ``created_at``, ``_``, id)."""
        return f"{self.created_at!r}_{self.job_id}"

    @classmethod
    def from_cursor(cls, cursor: str) -> ListingKey:
        """The key a cursor of :data:`CURSOR_PATTERN` names (any such cursor is a place
        in the listing); ``ValueError`` for anything else."""
        if CURSOR.fullmatch(cursor) is None:
            raise ValueError("not a cursor of this listing")
        created_at, _, job_id = cursor.partition("_")
        return cls(float(created_at), job_id)


CURSOR_PATTERN = r"^[0-9]{1,17}(\.[0-9]{1,17})?_[0-9A-Za-z-]{1,64}$"
"""What a cursor of the listing is (as the OpenAPI document says it)."""
CURSOR = re.compile(CURSOR_PATTERN.removeprefix("^").removesuffix("$"), re.ASCII)


@dataclass(frozen=True, slots=True)
class ListingQuery:
    """What a page of the listing of recent jobs asks for (see :meth:`JobStore.recent`)."""

    state: JobState | None
    limit: int
    tenant: str | None
    below: ListingKey | None = None

    def admits(self, record: JobRecord) -> bool:
        """Whether the job belongs on the page (its place there aside): in the state and
        of the tenant asked for, below the page's start."""
        return (
            (self.state is None or record.state is self.state)
            and (self.tenant is None or record.tenant == self.tenant)
            and (self.below is None or ListingKey.of(record) < self.below)
        )


class QueueFull(StoreError):
    """The queue, or a tenant's share of it (``per_tenant``), is at its limit."""

    def __init__(self, message: str, per_tenant: bool = False) -> None:
        super().__init__(message)
        self.per_tenant = per_tenant

    @classmethod
    def of_jobs(cls, limit: int) -> QueueFull:
        return cls(f"the queue is full ({limit} jobs waiting, QUEUE_MAX); try again later")

    @classmethod
    def of_bytes(cls, limit: int) -> QueueFull:
        return cls(
            f"the queue is full ({limit / 1048576:g} MiB of requests waiting, "
            "QUEUE_MAX_BYTES); try again later"
        )

    @classmethod
    def of_tenant(cls, tenant: str, limit: int) -> QueueFull:
        return cls(
            f"tenant {tenant!r} has {limit} jobs waiting, its limit; "
            "try again once some of them have run",
            per_tenant=True,
        )


class Unstorable(StoreError):
    """A request no store can keep (it does not serialize): the client's to fix."""


class RateLimited(StoreError):
    """A tenant added jobs faster than its rate allows."""

    def __init__(self, tenant: str, per_minute: int, retry_after: float) -> None:
        super().__init__(
            f"tenant {tenant!r} may add {per_minute} jobs a minute; "
            f"try again in {max(retry_after, 0.1):.1f}s"
        )
        self.retry_after = retry_after


class UnknownJob(StoreError):
    """No such job: it never existed, it expired, or it is another tenant's."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"unknown job_id {job_id!r}")
        self.job_id = job_id


class ExpiredJob(UnknownJob):
    """The job existed, and its record and log expired: its tombstone is what is left
    (:mod:`.tombstones`). An :class:`UnknownJob` still, for whoever tells no difference
    (the seed's clients)."""

    def __init__(self, tombstone: Tombstone) -> None:
        super().__init__(tombstone.job_id)
        self.tombstone = tombstone

    def __str__(self) -> str:
        return (
            f"job {self.job_id!r} has expired: a finished job is kept for JOB_TTL_SECONDS "
            "(this one's record and events are gone)"
        )


class KeyReused(StoreError):
    """An idempotency key used, within its window, for a different request."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"the idempotency key {key[:80]!r} was used for a different request (job "
            f"{job_id}) within its window: use a new key for a new job"
        )
        self.job_id = job_id


class NotOwner(StoreError):
    """The attempt no longer holds the job: it was cancelled, finished or reclaimed."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    pending: int
    running: int


class JobStore(abc.ABC):
    shared: bool = False
    """Whether processes other than this one can use the same jobs."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections and start background work."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything :meth:`start` took."""

    def report_commits(self, observe: Callable[[float], None]) -> None:  # noqa: B027
        """Have ``observe`` told how long each round of durable writes took, in
        seconds (for metrics); a store that keeps nothing has none to tell."""

    # -- gateway side -------------------------------------------------------

    @abc.abstractmethod
    async def submit(self, spec: JobSpec, tenant: str = "") -> JobRecord:
        """Queue a new job of ``tenant``.

        :class:`QueueFull` when the queue, its bytes, or the tenant's share of it
        is at its limit; :class:`RateLimited` when the tenant adds too fast.
        """

    @abc.abstractmethod
    async def submit_once(self, spec: JobSpec, tenant: str, key: IdempotencyKey) -> Submitted:
        """:meth:`submit`, once per ``key`` of ``tenant`` within its window
        (:mod:`.idempotency`): an add of the key made a job already (or is making it),
        that job is the answer (``replayed``, once it is saved); :class:`KeyReused` if
        that add asked for another job. The key is kept in the step that queues the job."""

    @abc.abstractmethod
    async def tombstone(self, job_id: str) -> Tombstone | None:
        """What is left of the job if it expired lately (:mod:`.tombstones`); ``None``
        for a job kept, forgotten on purpose, never known, or expired long ago."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or ``None`` for an unknown or expired job."""

    @abc.abstractmethod
    async def request(self, job_id: str) -> JobSpec | None:
        """The job's request, if it asked to be kept (``keep_request``): for as long as
        the job's record is kept, as :meth:`get` reads it. ``None`` for any other job,
        and for an unknown or expired one."""

    @abc.abstractmethod
    async def forget(self, job_id: str) -> bool:
        """Forget a job that has ended, before its TTL: its record, log and kept request
        are gone at once, for every process on the store and after a restart (the job
        is unknown, as an expired one). ``False``, and nothing changes, for a job that
        has not ended (cancel it first, and wait for its end) or one not known. Its
        listeners had its terminal event already: those still following end."""

    @abc.abstractmethod
    async def read(self, job_id: str, after: int = 0) -> list[Event]:
        """The events of the job's log with ``seq > after``, as they stand."""

    @abc.abstractmethod
    def follow(self, job_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        """Every event with ``seq > after``, in batches, live, until the terminal one.

        A batch holds whatever accumulated since the last one. On a finished
        job whose log holds nothing after ``after``, the batch is the terminal
        event alone, whatever its seq: a listener always learns how the job ended.
        Raises :class:`UnknownJob` when iteration starts on an unknown job.
        """

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a pending or running job; returns its record as it now stands.

        A finished job is returned unchanged. Raises :class:`UnknownJob`.
        """

    @abc.abstractmethod
    async def position(self, job_id: str) -> int | None:
        """The job's place in the queue (1 = next), or ``None`` if it is not pending."""

    @abc.abstractmethod
    async def queue_moved(self) -> None:
        """Return once pending jobs may have moved up (a job left the queue)."""

    @abc.abstractmethod
    async def stats(self) -> StoreStats:
        """How many jobs wait and how many run."""

    async def recent(
        self,
        state: JobState | None,
        limit: int,
        tenant: str | None,
        below: ListingKey | None = None,
    ) -> list[JobRecord]:
        """The ``limit`` newest jobs that have not expired, newest first (by
        :class:`ListingKey`): only those in ``state``, and only ``tenant``'s, when
        given (``None``: any state, every tenant); only those below ``below``, when
        given (the next page after a job of that key)."""
        return await self._recent(ListingQuery(state, limit, tenant, below))

    @abc.abstractmethod
    async def _recent(self, query: ListingQuery) -> list[JobRecord]:
        """The page of :meth:`recent` that ``query`` asks for."""

    # -- worker side --------------------------------------------------------

    @abc.abstractmethod
    async def claim(self, max_wait: float) -> Claim | None:
        """Take the oldest pending job, waiting up to ``max_wait`` seconds for one."""

    @abc.abstractmethod
    async def append(self, job_id: str, attempt: int, kind: EventKind, message: str = "") -> Event:
        """Add an event to the job's log; a terminal kind ends the job.

        A store may return before it has saved the event (it saves events in
        rounds), except for a terminal one, and shows an event only once saved.
        Raises :class:`NotOwner` when ``attempt`` no longer holds the job, as far
        as the store knows: one that learns it only when it saves the events
        also stops the job then, through its :meth:`on_cancel` callbacks.
        """

    @abc.abstractmethod
    async def release(self, job_id: str, attempt: int, reason: str) -> None:
        """Give up a claimed job this worker cannot finish (it is shutting down).

        A store that outlives the process queues the job again; one that does
        not ends it as failed with ``reason``.
        """

    @abc.abstractmethod
    def on_cancel(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the job is cancelled (or lost to another worker).

        Returns the function the worker calls when it is done with the job,
        however the job ended: it stops the watch and lets go of the claim.
        """

    # -- health -------------------------------------------------------------

    async def outage(self) -> str:
        """Return, with a message for listeners, once the store has been unreachable
        for longer than its grace period. An in-process store never is."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def recovered(self) -> None:  # noqa: B027 - nothing to wait for by default
        """Return once the outage :meth:`outage` reported is over."""

    async def workers(self) -> WorkerCensus | None:
        """Who runs jobs from this store; ``None`` where it is this process alone."""
        return None

    async def owners(self, job_ids: list[str]) -> dict[str, str]:
        """The worker running each of these jobs, for those running (shared stores)."""
        return {}

    @property
    def away(self) -> str | None:
        """While an outage :meth:`outage` reported goes on, why the store cannot be
        used (a request needing it should fail at once, not wait); else ``None``."""
        return None


@dataclass(frozen=True, slots=True)
class WorkerCensus:
    """The workers sharing a store, from their heartbeats."""

    alive: int
    """Workers heard from lately."""
    quiet: dict[str, float]
    """Workers gone quiet (not heard from for a few heartbeats), with how many seconds."""


class StoreUnavailable(StoreError):
    """The store could not be reached for longer than the caller could wait."""
