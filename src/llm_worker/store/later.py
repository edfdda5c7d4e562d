"""The in-process store's scheduled jobs: waiting apart from the queue until due.

A heap by due time; a job taken out before it is due (cancelled, lost) stays in the
heap, forgotten, and is skipped when its time comes (a heap has no cheap removal).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable

from llm_worker.store.stored_job import StoredJob


class Later:
    """Scheduled jobs not due yet, by the time they are due (the store's clock)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, str]] = []
        self._jobs: dict[str, StoredJob] = {}
        self._of_tenant: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._jobs)

    def of(self, tenant: str) -> int:
        """How many of the tenant's jobs are scheduled."""
        return self._of_tenant[tenant]

    def add(self, job: StoredJob) -> bool:
        """Keep the job until it is due; ``False`` (and nothing kept) if it is due now."""
        run_at = job.record.run_at
        if run_at is None or run_at <= self._clock():
            return False
        self._jobs[job.record.id] = job
        self._of_tenant[job.record.tenant] += 1
        heapq.heappush(self._heap, (run_at, job.ticket, job.record.id))
        return True

    def remove(self, job: StoredJob) -> bool:
        """Forget the job if it is kept here; whether it was."""
        if self._jobs.pop(job.record.id, None) is None:
            return False
        self._uncount(job)
        return True

    def due(self) -> list[StoredJob]:
        """The jobs due now, out of here, in the order they fell due."""
        now = self._clock()
        due = []
        while self._heap and self._heap[0][0] <= now:
            _, _, job_id = heapq.heappop(self._heap)
            job = self._jobs.pop(job_id, None)
            if job is not None:
                self._uncount(job)
                due.append(job)
        return due

    def within(self, seconds: float) -> float:
        """``seconds``, or less if a job falls due sooner: how long a worker may wait."""
        while self._heap and self._heap[0][2] not in self._jobs:
            heapq.heappop(self._heap)  # removed before it was due
        if not self._heap:
            return seconds
        return max(0.0, min(seconds, self._heap[0][0] - self._clock()))

    def _uncount(self, job: StoredJob) -> None:
        tenant = job.record.tenant
        self._of_tenant[tenant] -= 1
        if not self._of_tenant[tenant]:
            del self._of_tenant[tenant]
