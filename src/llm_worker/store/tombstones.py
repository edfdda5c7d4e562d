"""Tombstones: what a store keeps of a job whose TTL has passed, so that asking for it
answers "expired" (410) rather than "unknown" (404).

A finished job's record and log are kept ``JOB_TTL_SECONDS``; then they go, and a
tombstone stays for ``TOMBSTONE_SECONDS`` more: the id, whose job it was, and when
it expired, nothing of its content. A job forgotten on purpose
(:meth:`~llm_worker.store.base.JobStore.forget`) leaves none: it is unknown, as if it
never was. :mod:`.kept_tombstones` is the in-process stores' table of them; Redis keeps
one key per job (:mod:`.redis.layout`), written when the job ends, expiring
``JOB_TTL_SECONDS + TOMBSTONE_SECONDS`` later.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TOMBSTONE_SECONDS = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What is left of an expired job."""

    job_id: str
    tenant: str
    expired_at: float

    def encoded(self) -> str:
        """As one string (how Redis keeps it): ``expired_at``, a space, the tenant."""
        return f"{self.expired_at!r} {self.tenant}"

    @classmethod
    def decoded(cls, job_id: str, text: str) -> Tombstone:
        expired_at, _, tenant = text.partition(" ")
        return cls(job_id, tenant, float(expired_at))
