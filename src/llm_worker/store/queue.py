"""The in-process store's queue: the jobs waiting, in order, and how many run.

Jobs wait in the order they were added, by ticket (tickets grow with each add, so
each list here stays sorted and a job's place is a binary search); which of them
runs next is :mod:`.queue_policy`'s to say, from how many jobs each tenant runs.
Workers waiting for a job, and listeners waiting for the queue to move, wait here.

A scheduled job (its record's ``run_at`` ahead) waits apart, in :class:`.Later`,
until it is due; then it joins the queue's end with a new ticket, as a job added
that moment would (so the places of the jobs before it stay true).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import Counter
from collections.abc import Callable

from llm_worker.store import queue_policy
from llm_worker.store.later import Later
from llm_worker.store.limits import TenantLimits
from llm_worker.store.stored_job import StoredJob
from llm_worker.store.waiters import Waiters


class JobQueue:
    """The jobs of one process's store waiting to run, and its running jobs' count."""

    def __init__(
        self,
        limits: Callable[[str], TenantLimits],
        clock: Callable[[], float],
        new_ticket: Callable[[], int],
    ) -> None:
        self._limits = limits
        self._later = Later(clock)
        """The scheduled jobs, not due yet."""
        self._new_ticket = new_ticket
        self._tickets: list[int] = []
        self._jobs: dict[int, StoredJob] = {}
        self._of_tenant: dict[str, list[int]] = {}
        """Per tenant: the tickets of its waiting jobs."""
        self._running_of: Counter[str] = Counter()
        self.running = 0
        """How many jobs run (of every tenant)."""
        self.bytes = 0
        """The size of the waiting jobs' requests."""
        self._claimable: Waiters[None] = Waiters()
        self._moved: Waiters[None] = Waiters()

    def __len__(self) -> int:
        """How many jobs wait, scheduled ones too (for the queue's limits)."""
        return len(self._tickets) + len(self._later)

    @property
    def ready(self) -> int:
        """How many jobs wait to run now (scheduled ones not yet due aside)."""
        self._promote()
        return len(self._tickets)

    def waiting_of(self, tenant: str) -> int:
        """How many of the tenant's jobs wait, scheduled ones too."""
        return len(self._of_tenant.get(tenant, ())) + self._later.of(tenant)

    def position(self, job: StoredJob) -> int | None:
        """The job's place in the order of adds (1 = first), ``None`` if it does not
        wait, or waits scheduled."""
        self._promote()
        index = bisect.bisect_left(self._tickets, job.ticket)
        if index == len(self._tickets) or self._tickets[index] != job.ticket:
            return None
        return index + 1

    def add(self, job: StoredJob) -> None:
        """The job waits (again, if it ran), in the place its ticket gives it; apart,
        if it is scheduled and not due."""
        if self._later.add(job):
            self.bytes += len(job.spec or b"")
            self._claimable.wake(None)  # a worker waiting may now wait less long
            return
        self._queue(job)

    def _queue(self, job: StoredJob) -> None:
        bisect.insort(self._tickets, job.ticket)
        self._jobs[job.ticket] = job
        bisect.insort(self._of_tenant.setdefault(job.record.tenant, []), job.ticket)
        self.bytes += len(job.spec or b"")
        self._claimable.wake(None)

    def remove(self, job: StoredJob) -> None:
        """The job waits no more (it was taken, cancelled or lost): those after it move up."""
        if self._later.remove(job):
            self.bytes -= len(job.spec or b"")
            return
        index = bisect.bisect_left(self._tickets, job.ticket)
        if index < len(self._tickets) and self._tickets[index] == job.ticket:
            del self._tickets[index]
            del self._jobs[job.ticket]
            tenant = job.record.tenant
            tickets = self._of_tenant[tenant]
            del tickets[bisect.bisect_left(tickets, job.ticket)]
            if not tickets:
                del self._of_tenant[tenant]
            self.bytes -= len(job.spec or b"")
            self._moved.wake(None)

    async def take(self, max_wait: float) -> StoredJob | None:
        """The job to run next, out of the queue and counted as running; ``None`` after
        ``max_wait`` seconds without one that may run."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while (job := self._next()) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            # Not past the next scheduled job's time: it is due then.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claimable.wait(), self._later.within(remaining))
        self.remove(job)
        self.running += 1
        self._running_of[job.record.tenant] += 1
        return job

    def stopped(self, job: StoredJob) -> None:
        """The job, taken, runs no more (it ended, or waits again)."""
        self.running -= 1
        tenant = job.record.tenant
        self._running_of[tenant] -= 1
        if not self._running_of[tenant]:
            del self._running_of[tenant]
        # A job of a tenant at its limit of running jobs may now start.
        self._claimable.wake(None)

    async def moved(self) -> None:
        """Return once waiting jobs may have moved up (a job left the queue)."""
        await self._moved.wait()

    def _next(self) -> StoredJob | None:
        """The job :func:`.queue_policy.next_ticket` says runs next."""
        self._promote()
        oldest = None
        if self._tickets:
            head = self._jobs[self._tickets[0]]
            oldest = (head.ticket, head.record.tenant)
        ticket = queue_policy.next_ticket(oldest, self._of_tenant, self._may_run)
        return None if ticket is None else self._jobs[ticket]

    def _may_run(self, tenant: str) -> bool:
        limit = self._limits(tenant).max_running_jobs
        return queue_policy.may_run(self._running_of[tenant], limit)

    def _promote(self) -> None:
        """The scheduled jobs now due join the queue's end, each with a new ticket."""
        for job in self._later.due():
            job.ticket = self._new_ticket()
            self._queue(job)
            self.bytes -= len(job.spec or b"")  # counted once, when it was scheduled
