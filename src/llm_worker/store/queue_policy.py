"""Which waiting job runs next: the fair-queue policy, pure, written once.

The policy: jobs run in the order they were added (by ticket), but a tenant
running as many jobs as its limit allows is passed over until one of them ends; the
next job is then the oldest waiting job whose tenant may run one more.

The in-process queue (:class:`~.queue.JobQueue`, of the memory store and so of the
SQLite store, which is it writing through a journal) asks this module. The Redis
store's Lua cannot call Python: its claims (:mod:`.redis.claims`) are tested against
this module instead, scenario by scenario (``tests/store/test_queue_policy.py``),
which names where they differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence


def may_run(running: int, limit: int | None) -> bool:
    """Whether a tenant running ``running`` jobs may start one more (``None``: no limit)."""
    return limit is None or running < limit


def next_ticket(
    oldest: tuple[int, str] | None,
    waiting: Mapping[str, Sequence[int]],
    tenant_may_run: Callable[[str], bool],
) -> int | None:
    """The ticket of the job to run next, ``None`` if no waiting job may run.

    ``oldest`` is the oldest waiting job of all (its ticket and tenant);
    ``waiting``, each tenant's waiting tickets, oldest first. The oldest of all is
    the answer whenever its tenant may run, so the tenants are looked at only when
    it may not.
    """
    if oldest is None:
        return None
    ticket, tenant = oldest
    if tenant_may_run(tenant):
        return ticket
    eligible = [tickets[0] for name, tickets in waiting.items() if tickets and tenant_may_run(name)]
    return min(eligible, default=None)
