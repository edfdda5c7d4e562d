"""Every job the in-process store keeps: by id, in the listing's order, and until when.

A finished job is kept until its TTL has passed since it ended, by the store's clock:
the one it was given (``clock=``, :func:`time.time` unless a test gives one it moves).
The store reads that clock for every time it writes or compares: a job's creation and
end, its expiry here, tenants' rates, the SQLite journal's expiry at start. (The Redis
store's jobs expire by Redis's own clock, PEXPIRE.)
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable

from llm_worker.jobs.model import JobRecord
from llm_worker.store.base import ExpiredJob, ListingKey, ListingQuery, UnknownJob
from llm_worker.store.journal import Journal
from llm_worker.store.kept_tombstones import Tombstones
from llm_worker.store.stored_job import StoredJob
from llm_worker.store.tombstones import Tombstone


class KeptJobs:
    """The jobs of one process's store, saved or not yet, finished or not."""

    def __init__(
        self, ttl: float, clock: Callable[[], float], tombstone_ttl: float, journal: Journal
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self.tombstones = Tombstones(tombstone_ttl, clock, journal)
        """What is left of the jobs expired lately (:mod:`.tombstones`)."""
        self.by_id: dict[str, StoredJob] = {}
        # Every job's ListingKey, sorted: a listing's page is a binary search and a
        # walk of about its length. Jobs come in created_at order, so an add lands
        # at the end.
        self._listing: list[ListingKey] = []
        self._expiry: list[tuple[float, str]] = []
        """A heap of (when a finished job expires, its id)."""

    def add(self, job: StoredJob) -> None:
        self.by_id[job.record.id] = job
        bisect.insort(self._listing, ListingKey.of(job.record))

    def add_restored(self, jobs: Iterable[StoredJob]) -> None:
        """Jobs a journal kept, in any order (sorted once, not one by one), and its
        tombstones."""
        for tombstone in self.tombstones.journal.kept_tombstones:
            self.tombstones.bury(tombstone, written=True)
        for job in jobs:
            self.by_id[job.record.id] = job
            self._listing.append(ListingKey.of(job.record))
        self._listing.sort()

    def drop(self, job_id: str) -> StoredJob | None:
        """Forget the job; the job forgotten, if it was kept."""
        job = self.by_id.pop(job_id, None)
        if job is not None:
            key = ListingKey.of(job.record)
            index = bisect.bisect_left(self._listing, key)
            if index < len(self._listing) and self._listing[index] == key:
                del self._listing[index]
        return job

    def visible(self, job_id: str) -> StoredJob | None:
        """The job, if others may see it: saved, and not expired."""
        job = self.by_id.get(job_id)
        if job is None or not job.saved or self.expired(job.record):
            return None
        return job

    def page(self, query: ListingQuery) -> list[JobRecord]:
        """The page of the listing ``query`` asks for: saved jobs not expired, newest first."""
        # A walk down the index from the page's start: O(limit), plus the jobs a
        # filter passes over.
        listing, by_id, admits, expired = self._listing, self.by_id, query.admits, self.expired
        below = query.below
        end = len(listing) if below is None else bisect.bisect_left(listing, below)
        found: list[JobRecord] = []
        for index in range(end - 1, -1, -1):
            job = by_id[listing[index].job_id]
            record = job.record
            if job.saved and admits(record) and not expired(record):
                found.append(record)
                if len(found) == query.limit:
                    break
        return found

    # -- expiry ---------------------------------------------------------------

    def tombstone(self, job_id: str) -> Tombstone | None:
        """What is left of the job if it expired (swept already or not), and lately."""
        job = self.by_id.get(job_id)
        if job is not None and job.saved and self.expired(job.record):
            return self._tombstone_of(job.record)
        return self.tombstones.find(job_id)

    def unknown(self, job_id: str) -> UnknownJob:
        """What to raise for a job not visible: :class:`ExpiredJob` if it expired lately."""
        tombstone = self.tombstone(job_id)
        return UnknownJob(job_id) if tombstone is None else ExpiredJob(tombstone)

    def _tombstone_of(self, record: JobRecord) -> Tombstone:
        assert record.finished_at is not None
        return Tombstone(record.id, record.tenant, record.finished_at + self.ttl)

    def expired(self, record: JobRecord) -> bool:
        """Whether the job ended over its TTL ago."""
        return record.finished_at is not None and record.finished_at + self.ttl <= self._clock()

    def ended(self, record: JobRecord) -> None:
        """The job finished: it is to be forgotten once its TTL has passed."""
        assert record.finished_at is not None
        heapq.heappush(self._expiry, (record.finished_at + self.ttl, record.id))

    def drop_expired(self) -> list[str]:
        """Forget the jobs whose TTL has passed (in the journal too), each leaving a
        tombstone (expired tombstones go); their ids."""
        now = self._clock()
        dropped = []
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = heapq.heappop(self._expiry)
            job = self.by_id.get(job_id)
            if job is not None and self.expired(job.record):
                self.drop(job_id)
                self.tombstones.journal.delete_job(job_id)
                self.tombstones.bury(self._tombstone_of(job.record))
                dropped.append(job_id)
        self.tombstones.drop_expired()
        return dropped

    @property
    def sweep_interval(self) -> float:
        """How often to drop the expired jobs: a short TTL often, any at least every 30 s."""
        return min(max(self.ttl / 4, 0.05), 30.0)
