"""The fair queue, written once (:mod:`llm_worker.store.queue_policy`), and every
store tested against it: a table of scenarios (tenants, their limits of running
jobs, adds, claims and ends) with the order the policy claims in, which the pure
policy, the in-process stores and the Redis store (whose Lua cannot call the
policy) must each follow."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from llm_worker.jobs.model import Assistant, EventKind, JobSpec
from llm_worker.store import queue_policy
from llm_worker.store.limits import TenantLimits
from tests.support.stores import StoreFactory, store_factory

SPEC = JobSpec(assistant=Assistant.model_validate({"streams": [{"pipeline": "echo"}]}), query="q")

Step = tuple[str, ...]
"""``("add", job, tenant)``, ``("claim", job or "-")`` (``-``: none may run), ``("end", job)``."""


@dataclass(frozen=True)
class Scenario:
    name: str
    limits: dict[str, int]
    steps: list[Step]


SCENARIOS = [
    Scenario(
        "first come, first served",
        {},
        [
            ("add", "a1", "t1"),
            ("add", "b1", "t2"),
            ("add", "a2", "t1"),
            ("claim", "a1"),
            ("claim", "b1"),
            ("claim", "a2"),
        ],
    ),
    Scenario(
        "a tenant at its limit is passed over until a job of it ends",
        {"t1": 1},
        [
            ("add", "a1", "t1"),
            ("add", "a2", "t1"),
            ("add", "b1", "t2"),
            ("claim", "a1"),
            ("claim", "b1"),
            ("claim", "-"),
            ("end", "a1"),
            ("claim", "a2"),
        ],
    ),
    Scenario(
        "two tenants at their limits, a third runs",
        {"t1": 1, "t2": 1},
        [
            ("add", "a1", "t1"),
            ("add", "a2", "t1"),
            ("add", "b1", "t2"),
            ("add", "b2", "t2"),
            ("add", "c1", "t3"),
            ("claim", "a1"),
            ("claim", "b1"),
            ("claim", "c1"),
            ("claim", "-"),
            ("end", "b1"),
            ("claim", "b2"),
            ("end", "a1"),
            ("claim", "a2"),
        ],
    ),
    Scenario(
        "once its tenant may run again, a job passed over goes before younger ones",
        {"t1": 1},
        [
            ("add", "a1", "t1"),
            ("add", "a2", "t1"),
            ("add", "b1", "t2"),
            ("add", "b2", "t2"),
            ("claim", "a1"),
            ("claim", "b1"),
            ("end", "a1"),
            ("claim", "a2"),
            ("claim", "b2"),
        ],
    ),
]
# Where the Redis store's claims differ from the policy, and why.
REDIS_DIFFERS = {
    "once its tenant may run again, a job passed over goes before younger ones": (
        "a worker that meets a job of a tenant at its limit puts its stream entry at the "
        "back (DEFER): it keeps its place in the listing of positions, not in the order "
        "of claims, so b2 runs before a2"
    ),
}


def policy_claims(scenario: Scenario) -> list[str]:
    """The claims the pure policy makes, step by step."""
    waiting: dict[str, list[int]] = {}
    job_of: dict[int, tuple[str, str]] = {}
    tenant_of: dict[str, str] = {}
    running: Counter[str] = Counter()
    claims = []
    for ticket, (action, job, *tenant) in enumerate(scenario.steps, 1):
        if action == "add":
            waiting.setdefault(tenant[0], []).append(ticket)
            job_of[ticket] = (tenant[0], job)
            tenant_of[job] = tenant[0]
        elif action == "end":
            running[tenant_of[job]] -= 1
        else:
            tickets = sorted(t for ts in waiting.values() for t in ts)
            oldest = (tickets[0], job_of[tickets[0]][0]) if tickets else None
            chosen = queue_policy.next_ticket(
                oldest,
                waiting,
                lambda t: queue_policy.may_run(running[t], scenario.limits.get(t)),
            )
            if chosen is None:
                claims.append("-")
                continue
            tenant_name, name = job_of[chosen]
            waiting[tenant_name].remove(chosen)
            running[tenant_name] += 1
            claims.append(name)
    return claims


def expected_claims(scenario: Scenario) -> list[str]:
    return [step[1] for step in scenario.steps if step[0] == "claim"]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_the_policy_claims_in_the_order_of_the_table(scenario: Scenario) -> None:
    assert policy_claims(scenario) == expected_claims(scenario)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def kind_and_factory(request: pytest.FixtureRequest) -> tuple[str, StoreFactory]:
    return request.param, store_factory(request, request.param)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_each_store_claims_as_the_policy_does(
    request: pytest.FixtureRequest, kind_and_factory: tuple[str, StoreFactory], scenario: Scenario
) -> None:
    kind, factory = kind_and_factory
    if kind == "redis" and scenario.name in REDIS_DIFFERS:
        request.applymarker(pytest.mark.xfail(reason=REDIS_DIFFERS[scenario.name], strict=True))
    limits = scenario.limits
    store = await factory(
        queue_max=100,
        job_ttl=60,
        limits=lambda tenant: TenantLimits(max_running_jobs=limits.get(tenant)),
    )
    ids: dict[str, str] = {}
    names: dict[str, str] = {}
    attempts: dict[str, int] = {}
    claims = []
    for action, job, *tenant in scenario.steps:
        if action == "add":
            ids[job] = (await store.submit(SPEC, tenant[0])).id
            names[ids[job]] = job
        elif action == "end":
            await store.append(ids[job], attempts[job], EventKind.DONE, "{}")
        else:
            # A claim that should find none waits a moment; one that should find one
            # waits long enough for the end of a job to free its tenant's place.
            claim = await store.claim(max_wait=0.3 if job == "-" else 5)
            if claim is None:
                claims.append("-")
                continue
            attempts[names[claim.job_id]] = claim.attempt
            claims.append(names[claim.job_id])
    assert claims == expected_claims(scenario)
