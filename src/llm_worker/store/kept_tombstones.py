"""The tombstones an in-process store (memory, SQLite) keeps (:mod:`.tombstones`)."""

from __future__ import annotations

import heapq
from collections.abc import Callable

from llm_worker.store.journal import Journal
from llm_worker.store.tombstones import Tombstone


class Tombstones:
    """The tombstones of an in-process store, each until it expires by the store's
    clock, written through its journal (:meth:`.Journal.bury`)."""

    def __init__(self, keep: float, clock: Callable[[], float], journal: Journal) -> None:
        self.keep = keep
        self._clock = clock
        self.journal = journal
        self._by_id: dict[str, Tombstone] = {}
        self._expiry: list[tuple[float, str]] = []

    def bury(self, tombstone: Tombstone, *, written: bool = False) -> None:
        """Keep ``tombstone`` (``written``: the journal has it already)."""
        if not written:
            self.journal.bury(tombstone)
        self._by_id[tombstone.job_id] = tombstone
        heapq.heappush(self._expiry, (tombstone.expired_at + self.keep, tombstone.job_id))

    def find(self, job_id: str) -> Tombstone | None:
        tombstone = self._by_id.get(job_id)
        if tombstone is None or tombstone.expired_at + self.keep <= self._clock():
            return None
        return tombstone

    def drop_expired(self) -> list[Tombstone]:
        """Forget the tombstones whose time is up; those forgotten."""
        now = self._clock()
        dropped = []
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = heapq.heappop(self._expiry)
            tombstone = self._by_id.get(job_id)
            if tombstone is not None and tombstone.expired_at + self.keep <= now:
                del self._by_id[job_id]
                self.journal.unbury(tombstone)
                dropped.append(tombstone)
        return dropped
