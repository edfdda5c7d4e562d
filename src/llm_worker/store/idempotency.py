"""Idempotent submission: what a key is, what "the same request" means, and what a
store answers when a key comes back. Pure: no I/O.

A client that retries an add after a timeout cannot know whether the first got
through; with an idempotency key (``Idempotency-Key`` over HTTP, ``idempotency_key``
on a full-protocol ``add``) it need not. A store keeps, per tenant and key, the
first job the key added and a digest of its request, for a window
(``IDEMPOTENCY_WINDOW_SECONDS``) from that add. The same key with the same request
within the window is that first job again (:class:`Submitted`, ``replayed``); with
another request, a refusal (:class:`~llm_worker.store.base.KeyReused`). The key and
its job are written in the store's one atomic step that queues the job (one
transaction, one Lua script), so two adds racing with one key make one job,
whichever gateway each reached. Only an add that made a job keeps its key: one
refused (a full queue, say) may be retried with the same key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from llm_worker.jobs.model import JobRecord, JobState

MAX_KEY_LENGTH = 255
"""The longest key taken, in characters (Stripe's limit too)."""
DEFAULT_WINDOW_SECONDS = 86400.0


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an idempotency key (empty, longer than
    :data:`MAX_KEY_LENGTH`, or holding a character that is not printable ASCII), or
    ``None`` when it can."""
    if not key:
        return "an idempotency key must not be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"an idempotency key has at most {MAX_KEY_LENGTH} characters, not {len(key)}"
    if not (key.isascii() and key.isprintable()):
        return "an idempotency key is printable ASCII (a UUID, say)"
    return None


def request_digest(spec_text: bytes) -> str:
    """The digest that says whether two adds asked for the same job: of the request as
    the store keeps it (:func:`~llm_worker.jobs.model.spec_json`), which is canonical
    (its fields in one order, whatever order the client wrote them in, defaults
    filled in), so only what the job would run differs between two digests."""
    return hashlib.sha256(spec_text).hexdigest()


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A key an add came with, the digest of its request, and how long it holds."""

    key: str
    digest: str
    window: float = DEFAULT_WINDOW_SECONDS


@dataclass(frozen=True, slots=True)
class FirstJob:
    """What a store keeps of a key: the job it added, when, and its request's digest."""

    job_id: str
    digest: str
    created_at: float
    expires_at: float

    def matches(self, key: IdempotencyKey) -> bool:
        """Whether an add of the key asks for the same job as the first did."""
        return key.digest == self.digest

    def answer(self, tenant: str) -> JobRecord:
        """The record the first add answered with: a job just queued."""
        return JobRecord(
            id=self.job_id, state=JobState.PENDING, created_at=self.created_at, tenant=tenant
        )

    def encoded(self) -> str:
        """As one string (how Redis keeps it); :meth:`decoded` reads it back."""
        return f"{self.job_id} {self.digest} {self.created_at!r} {self.expires_at!r}"

    @classmethod
    def decoded(cls, text: str) -> FirstJob:
        job_id, digest, created_at, expires_at = text.split(" ")
        return cls(job_id, digest, float(created_at), float(expires_at))


@dataclass(frozen=True, slots=True)
class Submitted:
    """What an idempotent add made: the job (as the first add answered), and whether
    it is a replay (an earlier add of the key made it)."""

    record: JobRecord
    replayed: bool
