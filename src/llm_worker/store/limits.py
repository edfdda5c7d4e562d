"""What one tenant may have at once: the limits every store enforces as it queues
and hands out jobs (set per tenant by the keys file, see ``server.access``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """What one tenant may have at once; ``None`` for no limit of its own."""

    max_running_jobs: int | None = None
    max_queued_jobs: int | None = None
    adds_per_minute: int | None = None


UNLIMITED = TenantLimits()
