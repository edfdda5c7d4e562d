"""What one tenant may have at once, and how fast it may add jobs: the limits every
store enforces as it queues and hands out jobs (set per tenant by the keys file, see
``server.access``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """What one tenant may have at once; ``None`` for no limit of its own."""

    max_running_jobs: int | None = None
    max_queued_jobs: int | None = None
    adds_per_minute: int | None = None


UNLIMITED = TenantLimits()


class AddRates:
    """How fast each tenant adds jobs, against its limit (GCRA: a burst of a minute's
    worth, then one every 1/rate of a minute), by the in-process store's clock (the
    Redis store's limits are :mod:`.redis.limits`)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._next: dict[str, float] = {}
        """Per tenant: when its allowance is whole again (its theoretical arrival time)."""

    def take(self, tenant: str, per_minute: int) -> float:
        """0 if the tenant may add a job now (and it counts), else seconds to wait."""
        now = self._clock()
        interval = 60.0 / per_minute
        arrival = max(self._next.get(tenant, now), now)
        allowed_from = arrival - 60.0 + interval
        if now < allowed_from:
            return allowed_from - now
        self._next[tenant] = arrival + interval
        if len(self._next) > 10_000:  # forget tenants whose allowance is whole again
            self._next = {t: a for t, a in self._next.items() if a > now}
        return 0.0
