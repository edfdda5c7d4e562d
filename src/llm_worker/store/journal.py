"""Where an in-process store writes its changes to keep them: the journal seam.

:class:`~llm_worker.store.memory.MemoryStore` holds the jobs and their logic;
what it writes through its journal decides what survives the process. The
memory store's :class:`NullJournal` keeps nothing; the SQLite store's journal
keeps everything in one file. A store shows a change (an event to listeners, a
new job to workers) only once its journal has saved it.

Writes are grouped by job. :meth:`Journal.save` starts (or joins) a *round*
that saves every write made so far; a round saves each job's writes wholly or
not at all, and when it ends, the store hears which jobs failed before anything
else happens (:attr:`Journal.on_round_end`), so it can let go of what those
jobs had written since.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from llm_worker.jobs.model import Event, JobRecord
from llm_worker.store.idempotency import FirstJob
from llm_worker.store.tombstones import Tombstone

Failures = dict[str, str]
"""Job id -> why its writes of a round could not be saved."""


@dataclass(slots=True)
class Restored:
    """A job as a journal kept it."""

    record: JobRecord
    spec: bytes | None
    """The request, as JSON, while the job has not ended (and after, if it asked to
    be kept)."""
    ticket: int
    events: list[Event] = field(default_factory=list)
    reset_after: int = 0
    """A re-run's ``reset`` takes a seq above this one (and above every event)."""


class Journal(abc.ABC):
    durable: bool = True
    """Whether what it saves outlives the process."""
    immediate: bool = False
    """Whether a write is saved as it is made: nothing to wait for, no rounds."""
    kept_once: list[tuple[str, str, FirstJob]] = []  # noqa: RUF012 - read only
    """The idempotency keys (tenant, key, first job) :meth:`open` found, in their window."""
    kept_tombstones: list[Tombstone] = []  # noqa: RUF012 - read only
    """The tombstones :meth:`open` found, not expired."""

    def __init__(self) -> None:
        self.on_round_end: Callable[[asyncio.Future[Failures], Failures], None] = _ignore
        """Called when a round ends, before its future resolves and before the next
        round starts, with the round's future and its failures."""
        self.on_commit: Callable[[float], None] = _ignore_seconds
        """Told how long each round took to save, in seconds."""

    async def open(self) -> list[Restored]:
        """Start, and return the jobs kept from earlier runs."""
        return []

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Save what is written, then release everything :meth:`open` took."""

    @abc.abstractmethod
    def add_job(self, record: JobRecord, spec: bytes, ticket: int) -> None:
        """A new job, its request as JSON."""

    @abc.abstractmethod
    def update_job(self, record: JobRecord) -> None:
        """The job's record now reads so (state, attempt, finish time, error)."""

    @abc.abstractmethod
    def add_event(self, job_id: str, event: Event) -> None:
        """An event joined the job's log."""

    @abc.abstractmethod
    def delete_job(self, job_id: str) -> None:
        """The job expired."""

    def add_once(self, tenant: str, key: str, first: FirstJob) -> None:  # noqa: B027
        """An idempotency key made its first job (saved with that job, in its round)."""

    def delete_once(self, tenant: str, key: str, first: FirstJob) -> None:  # noqa: B027
        """The key's window ended."""

    def bury(self, tombstone: Tombstone) -> None:  # noqa: B027
        """A job expired: its tombstone (saved with the job's deletion)."""

    def unbury(self, tombstone: Tombstone) -> None:  # noqa: B027
        """The tombstone's time is up."""

    @abc.abstractmethod
    def forget(self, job_id: str) -> None:
        """Drop the job's writes that no round has started saving."""

    @abc.abstractmethod
    def save(self) -> asyncio.Future[Failures]:
        """The round that saves everything written so far; it resolves with its failures."""

    def unsaved(self) -> bool:
        """Whether some writes wait for a round."""
        return False


def _ignore_seconds(seconds: float) -> None:
    pass


def _ignore(round_: asyncio.Future[Failures], failures: Failures) -> None:
    pass


class NullJournal(Journal):
    """Keeps nothing: every write counts as saved at once, for this process's life."""

    durable = False
    immediate = True

    def add_job(self, record: JobRecord, spec: bytes, ticket: int) -> None:
        pass

    def update_job(self, record: JobRecord) -> None:
        pass

    def add_event(self, job_id: str, event: Event) -> None:
        pass

    def delete_job(self, job_id: str) -> None:
        pass

    def forget(self, job_id: str) -> None:
        pass

    def save(self) -> asyncio.Future[Failures]:
        done: asyncio.Future[Failures] = asyncio.get_running_loop().create_future()
        done.set_result({})
        return done
