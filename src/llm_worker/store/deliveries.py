"""Webhook deliveries as a store keeps them: one entry per job that names a webhook.

An entry is written when its job is added and outlives the process that wrote it (on
SQLite and Redis), so a job that ends while no worker runs, or whose worker dies before
its webhook got through, still has it delivered once a worker runs again. Its life:

``waiting``   the job has not ended; a deliverer looks again at ``next_at``
``due``       the job ended; an attempt is due at ``next_at`` (retries included)
``delivered`` a receiver answered 2xx
``given_up``  every attempt of the schedule failed, or the job was gone

A deliverer takes due entries with :meth:`DeliveryStore.claim`, which leases each for a
while: of several workers on one store, one makes each attempt; one that dies holding a
lease only delays the attempt until the lease ends (at-least-once, never lost).
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any

OPEN_STATES = frozenset({"waiting", "due"})


@dataclass(frozen=True, slots=True)
class Delivery:
    """A job's webhook, and how its delivery has gone so far."""

    job_id: str
    url: str
    webhook_id: str
    """The ``webhook-id`` of every attempt: the receiver's key for dropping repeats."""
    tenant: str = ""
    state: str = "waiting"
    attempts: int = 0
    next_at: float | None = 0.0
    """When to look again (``waiting``) or try again (``due``); ``None`` once settled."""
    last_status: int | None = None
    """The HTTP status of the last attempt's reply; ``None`` when none came."""
    last_error: str | None = None
    last_excerpt: str = ""
    """The start of the last reply's body (:data:`~llm_worker.wire.webhooks.EXCERPT_BYTES`)."""
    settled_at: float | None = None
    created_at: float = 0.0

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES

    def replace(self, **changes: Any) -> Delivery:
        return dataclasses.replace(self, **changes)

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def shown(self) -> dict[str, Any]:
        """The entry as ``GET /v1/jobs/{id}`` and ``status`` show it (no secret in it)."""
        shown = {
            "url": self.url,
            "webhook_id": self.webhook_id,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": self.next_at if self.state == "due" else None,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_response": self.last_excerpt or None,
        }
        return shown


class DeliveryStore(abc.ABC):
    """Where a deployment keeps its webhook deliveries: beside its jobs, as durable."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open what the store needs."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` took."""

    @abc.abstractmethod
    async def add(self, delivery: Delivery) -> None:
        """Keep a new entry (its job was just added)."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> Delivery | None:
        """The entry of ``job_id``'s webhook, while it is kept."""

    @abc.abstractmethod
    async def claim(self, now: float, limit: int, lease: float) -> list[Delivery]:
        """Up to ``limit`` open entries whose ``next_at`` has come, each leased to the
        caller for ``lease`` seconds: no other caller gets it until the lease ends or
        :meth:`save` writes it."""

    @abc.abstractmethod
    async def save(self, delivery: Delivery, keep: float) -> None:
        """Write what became of an entry (and end its lease); a settled one is kept
        ``keep`` seconds more, for whoever asks how it went, then forgotten."""


class MemoryDeliveries(DeliveryStore):
    """Deliveries in this process, for the in-process store: gone with it, as its jobs."""

    def __init__(self) -> None:
        self._entries: dict[str, Delivery] = {}
        self._leases: dict[str, float] = {}
        self._expiry: dict[str, float] = {}

    async def add(self, delivery: Delivery) -> None:
        self._entries[delivery.job_id] = delivery

    async def get(self, job_id: str) -> Delivery | None:
        return self._entries.get(job_id)

    async def claim(self, now: float, limit: int, lease: float) -> list[Delivery]:
        self._expire(now)
        taken = []
        for entry in self._entries.values():
            if len(taken) >= limit:
                break
            ready = entry.open and entry.next_at is not None and entry.next_at <= now
            if ready and self._leases.get(entry.job_id, 0.0) <= now:
                self._leases[entry.job_id] = now + lease
                taken.append(entry)
        return taken

    async def save(self, delivery: Delivery, keep: float) -> None:
        self._entries[delivery.job_id] = delivery
        self._leases.pop(delivery.job_id, None)
        if not delivery.open and delivery.settled_at is not None:
            self._expiry[delivery.job_id] = delivery.settled_at + keep

    def _expire(self, now: float) -> None:
        for job_id in [j for j, at in self._expiry.items() if at <= now]:
            del self._expiry[job_id]
            self._entries.pop(job_id, None)
