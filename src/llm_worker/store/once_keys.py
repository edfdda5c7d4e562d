"""The idempotency keys an in-process store holds (memory, SQLite), until their window
ends by the store's clock, and the adds of a key still on their way.

The store's logic runs on the event loop's thread, so finding a key and putting it
is one step with no ``await`` between: of two adds racing with one key, the second
finds the first's entry, and waits for the first's job to be saved (:meth:`settled`)
before answering with it.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable

from llm_worker.jobs.model import JobRecord, JobSpec
from llm_worker.store.base import KeyReused
from llm_worker.store.idempotency import FirstJob, IdempotencyKey, Submitted
from llm_worker.store.journal import Journal

OnceKey = tuple[str, str]
"""A tenant and one of its keys."""


class OnceKeys:
    def __init__(
        self,
        clock: Callable[[], float],
        journal: Journal,
        new_job: Callable[[JobSpec, str], JobRecord],
        queued: Callable[[JobRecord], Awaitable[None]],
    ) -> None:
        """``new_job`` writes a job of a tenant (up to its first ``await``: nothing else
        runs between finding a key and that); ``queued`` waits for it to be saved, then
        queues it."""
        self._clock = clock
        self._journal = journal
        self._new_job = new_job
        self._queued = queued
        self._first: dict[OnceKey, FirstJob] = {}
        self._expiry: list[tuple[float, OnceKey]] = []
        self._saving: dict[OnceKey, asyncio.Future[None]] = {}

    async def submit(self, spec: JobSpec, tenant: str, key: IdempotencyKey) -> Submitted:
        """The store's :meth:`~.base.JobStore.submit_once`."""
        first = self.find(tenant, key.key)
        if first is not None:
            if not first.matches(key):
                raise KeyReused(key.key, first.job_id)
            await self.settled(tenant, key.key)
            return Submitted(first.answer(tenant), replayed=True)
        record = self._new_job(spec, tenant)
        now = self._clock()
        first = FirstJob(record.id, key.digest, record.created_at, now + key.window)
        self.put(tenant, key.key, first)
        # Written with the job: saved, or lost, in the same round.
        self._journal.add_once(tenant, key.key, first)
        try:
            await self._queued(record)
        except BaseException as exc:
            self.lost(tenant, key.key, exc)
            raise
        self.saved(tenant, key.key)
        return Submitted(record, replayed=False)

    def restore(self) -> None:
        """Hold again the keys the journal kept (those still in their window)."""
        for tenant, key, first in self._journal.kept_once:
            self.put(tenant, key, first, saving=False)

    def find(self, tenant: str, key: str) -> FirstJob | None:
        """The first job of the key, while its window lasts."""
        first = self._first.get((tenant, key))
        if first is None or first.expires_at <= self._clock():
            return None
        return first

    def put(self, tenant: str, key: str, first: FirstJob, *, saving: bool = True) -> None:
        """Hold ``first`` for the key; ``saving``: its job is not saved yet (an add of
        the key meanwhile waits for :meth:`saved` or :meth:`lost`)."""
        self._first[(tenant, key)] = first
        heapq.heappush(self._expiry, (first.expires_at, (tenant, key)))
        if saving:
            self._saving[(tenant, key)] = asyncio.get_running_loop().create_future()

    def saved(self, tenant: str, key: str) -> None:
        """The key's job is saved: adds waiting for it answer with it."""
        future = self._saving.pop((tenant, key), None)
        if future is not None and not future.done():
            future.set_result(None)

    def lost(self, tenant: str, key: str, error: BaseException) -> None:
        """The key's job could not be saved: the key is free again, and adds waiting
        for it fail as the first did (their clients retry)."""
        self._first.pop((tenant, key), None)
        future = self._saving.pop((tenant, key), None)
        if future is not None and not future.done():
            future.set_exception(error)
            future.exception()  # retrieved: nobody else may be waiting

    async def settled(self, tenant: str, key: str) -> None:
        """Return once the key's job is saved; raise what its add raised if it was not."""
        future = self._saving.get((tenant, key))
        if future is not None:
            await asyncio.shield(future)

    def drop_expired(self) -> list[tuple[OnceKey, FirstJob]]:
        """Forget the keys whose window has ended; those forgotten."""
        now = self._clock()
        dropped = []
        while self._expiry and self._expiry[0][0] <= now:
            _, once = heapq.heappop(self._expiry)
            first = self._first.get(once)
            if first is not None and first.expires_at <= now:
                del self._first[once]
                self._journal.delete_once(*once, first)
                dropped.append((once, first))
        return dropped
