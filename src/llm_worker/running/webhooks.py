"""The deliverer: sends each ended job's webhook, retrying on a schedule, from the store's
entries (:mod:`llm_worker.store.deliveries`), so that what one worker could not deliver
before it died, it or another delivers after.

Every worker runs one. Each round it claims the entries whose time has come: a job not
ended yet is looked at again later (sooner while it is young); an ended one's webhook is
sent, the target checked again first. A 2xx delivers it; anything else (an error, a
timeout, a 3xx, which is not followed, a target now refused) is a failed attempt, tried
again after the schedule's next wait, or given up once the schedule is spent.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
from prometheus_client import Counter

from llm_worker.aio.tasks import TaskSet, cancel_requested
from llm_worker.config import ConfigError, Settings
from llm_worker.jobs.model import output_of
from llm_worker.ops.metrics import Metrics
from llm_worker.running.webhook_targets import Target, TenantWebhook, WebhookTargets
from llm_worker.store.base import JobStore, StoreUnavailable
from llm_worker.store.deliveries import Delivery, DeliveryStore
from llm_worker.wire import webhooks
from llm_worker.wire.events import summary_of

log = logging.getLogger(__name__)

DEFAULT_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
"""Seconds between attempts, after the first (at the job's end): Svix's, in spirit."""
JITTER = 0.1
"""Each wait is the schedule's, give or take this fraction, so that receivers that came
back are not hit by every retry at once."""


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    timeout: float = 10.0
    """How long one attempt may take, connecting and reading the reply included."""
    keep: float = 3600.0
    """How long a settled delivery stays visible (the jobs' TTL)."""
    poll: float = 0.5
    """How often the deliverer looks for entries whose time has come."""
    batch: int = 64
    """Entries one round takes at most (their attempts run at once)."""


def webhook_settings(
    settings: Settings, tenants: Callable[[str], TenantWebhook] | None = None
) -> tuple[WebhookTargets, DeliveryPolicy]:
    """The deployment's webhooks as its settings describe them; :class:`ConfigError` for
    a ``WEBHOOK_SECRET`` or ``WEBHOOK_URL`` that cannot work (said at start, not at the
    first job's end)."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    try:
        key = webhooks.secret_bytes(secret) if secret is not None else None
    except ValueError as exc:
        raise ConfigError(f"WEBHOOK_SECRET: {exc}") from None
    if settings.webhook_url is not None:
        try:
            webhooks.check_url(settings.webhook_url, settings.webhook_allow_private_targets)
        except webhooks.BadTarget as exc:
            raise ConfigError(f"WEBHOOK_URL: {exc}") from None
    targets = WebhookTargets(
        default_url=settings.webhook_url,
        secret=key,
        allow_private=settings.webhook_allow_private_targets,
    )
    if tenants is not None:
        targets.tenants = tenants
    policy = DeliveryPolicy(
        schedule=tuple(float(s) for s in settings.webhook_retry_schedule.split(",")),
        timeout=settings.webhook_timeout_seconds,
        keep=settings.job_ttl_seconds,
    )
    return targets, policy


def new_delivery(job_id: str, url: str, tenant: str, now: float) -> Delivery:
    """The entry of a job just added that names ``url``."""
    return Delivery(job_id, url, f"msg_{uuid.uuid4().hex}", tenant, next_at=now, created_at=now)


@dataclass
class Webhooks:
    """What the gateway does with webhooks: check a new job's target, keep its entry,
    show how its delivery goes."""

    targets: WebhookTargets
    deliveries: DeliveryStore
    clock: Callable[[], float] = time.time

    async def target(self, tenant: str, given: str | None) -> str | None:
        """The webhook a new job of ``tenant`` will have (``given``, else a default),
        checked; :class:`~llm_worker.wire.webhooks.BadTarget` saying why it will not do."""
        url = self.targets.url_for(tenant, given)
        if url is not None:
            await self.targets.check(url, tenant)
        return url

    async def register(self, job_id: str, url: str, tenant: str) -> None:
        """Keep the entry of a job just added (see :mod:`llm_worker.store.deliveries`)."""
        await self.deliveries.add(new_delivery(job_id, url, tenant, self.clock()))

    async def shown(self, job_id: str) -> dict[str, Any] | None:
        """How the job's webhook has gone, as a job's status shows it; ``None`` without."""
        entry = await self.deliveries.get(job_id)
        return entry.shown() if entry is not None else None


class Deliverer:
    def __init__(
        self,
        jobs: JobStore,
        deliveries: DeliveryStore,
        targets: WebhookTargets,
        policy: DeliveryPolicy | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.jobs = jobs
        self.deliveries = deliveries
        self.targets = targets
        self.policy = policy or DeliveryPolicy()
        self.clock = clock
        self._tasks = TaskSet("webhooks")
        self._http = httpx2.AsyncClient(
            follow_redirects=False,
            timeout=self.policy.timeout,
            trust_env=False,  # no proxy from the environment: the address checked is called
            headers={"user-agent": "llm-worker-webhooks"},
        )
        self._outcomes = _counters(metrics)

    def start(self) -> None:
        self._tasks.spawn(self._deliver_forever(), name="webhooks")

    async def stop(self) -> None:
        await self._tasks.close()
        await self._http.aclose()

    async def _deliver_forever(self) -> None:
        failing = False
        while not cancel_requested():
            handled = 0
            try:
                handled = await self.round()
            except StoreUnavailable as exc:  # a fault the store says: no traceback
                if not failing:
                    log.warning("webhooks: %s; deliveries wait for the store", exc)
                failing = True
            except Exception:
                # Once per spell of failures (a store away): not twice a second.
                if not failing:
                    log.exception("webhooks: a round of deliveries failed; trying again")
                failing = True
            else:
                if failing:
                    log.info("webhooks: deliveries go on")
                failing = False
            if handled < self.policy.batch:  # a full batch: more may be due at once
                await asyncio.sleep(self.policy.poll)

    async def round(self) -> int:
        """Handle every entry whose time has come; how many there were."""
        lease = self.policy.timeout + 30.0
        entries = await self.deliveries.claim(self.clock(), self.policy.batch, lease)
        await asyncio.gather(*(self._handle(entry) for entry in entries))
        return len(entries)

    async def _handle(self, entry: Delivery) -> None:
        if entry.state == "waiting":
            record = await self.jobs.get(entry.job_id)
            if record is None:
                await self._settle(entry, "given_up", error="the job expired before it ended")
                return
            if not record.state.finished:
                # Looked at every poll while young, then less often, up to 5 s.
                now = self.clock()
                wait = min(5.0, max(self.policy.poll, (now - entry.created_at) / 10))
                await self.deliveries.save(entry.replace(next_at=now + wait), self.policy.keep)
                return
            entry = entry.replace(state="due", attempts=0)
        await self._attempt(entry)

    async def _attempt(self, entry: Delivery) -> None:
        body = await self._body(entry.job_id)
        if body is None:
            await self._settle(entry, "given_up", error="the job expired before its delivery")
            return
        status, excerpt, error = await self._send(entry, body)
        entry = entry.replace(
            attempts=entry.attempts + 1, last_status=status, last_excerpt=excerpt, last_error=error
        )
        if status is not None and 200 <= status < 300:
            self._outcomes["attempt_delivered"].inc()
            await self._settle(entry, "delivered")
            return
        self._outcomes["attempt_failed"].inc()
        if entry.attempts > len(self.policy.schedule):
            await self._settle(entry, "given_up", error=error)
            return
        wait = self.policy.schedule[entry.attempts - 1] * random.uniform(1 - JITTER, 1 + JITTER)
        await self.deliveries.save(entry.replace(next_at=self.clock() + wait), self.policy.keep)

    async def _body(self, job_id: str) -> bytes | None:
        record = await self.jobs.get(job_id)
        if record is None:
            return None
        events = await self.jobs.read(job_id)
        summary = summary_of(events[-1], typed=True) if events else {}
        return webhooks.body(
            job_id,
            record.state.value,
            output=output_of(events),
            summary=summary,
            error=record.error,
            ended_at=record.finished_at or record.created_at,
        )

    async def _send(self, entry: Delivery, body: bytes) -> tuple[int | None, str, str | None]:
        """One attempt: the reply's status and excerpt, or why there was none."""
        try:
            target = await self.targets.check(entry.url, entry.tenant)
        except webhooks.BadTarget as exc:
            return None, "", str(exc)
        key = self.targets.key_for(entry.tenant)
        sent = webhooks.headers(key, entry.webhook_id, int(time.time()), body)
        try:
            # The whole attempt, not each read: a receiver that drips its reply is cut too.
            async with asyncio.timeout(self.policy.timeout):
                return await self._post(target, sent, body)
        except (httpx2.TimeoutException, TimeoutError):
            return None, "", f"no reply within {self.policy.timeout:g}s"
        except httpx2.HTTPError as exc:
            return None, "", f"{type(exc).__name__}: {exc}"[:300]

    async def _post(
        self, target: Target, sent: dict[str, str], body: bytes
    ) -> tuple[int | None, str, str | None]:
        """POST to the address checked (not to the name again, which could now lead
        elsewhere), naming the host for HTTP and TLS alike; the reply read no further
        than its excerpt."""
        url = httpx2.URL(target.url)
        address = f"[{target.address}]" if ":" in target.address else target.address
        pinned = url.copy_with(host=address.strip("[]"))
        # The excerpt is read raw: ask for it uncompressed.
        sent = {**sent, "host": url.netloc.decode(), "accept-encoding": "identity"}
        request = self._http.build_request(
            "POST", pinned, headers=sent, content=body, extensions={"sni_hostname": url.host}
        )
        reply = await self._http.send(request, stream=True)
        try:
            taken = bytearray()
            async for chunk in reply.aiter_raw():
                taken += chunk
                if len(taken) >= webhooks.EXCERPT_BYTES:
                    break
        finally:
            await reply.aclose()
        error = None
        if reply.is_redirect:
            error = f"redirected ({reply.status_code}), not followed"
        elif not reply.is_success:
            error = f"the receiver answered {reply.status_code}"
        return reply.status_code, webhooks.excerpt(bytes(taken)), error

    async def _settle(self, entry: Delivery, state: str, error: str | None = None) -> None:
        settled = entry.replace(
            state=state, next_at=None, settled_at=self.clock(), last_error=error or entry.last_error
        )
        if state == "delivered":
            settled = settled.replace(last_error=None)
        self._outcomes[state].inc()
        await self.deliveries.save(settled, self.policy.keep)
        log.info("webhook of job %s %s after %d attempts", entry.job_id, state, entry.attempts)


def _counters(metrics: Metrics | None) -> dict[str, Counter]:
    """The deliveries' counters, on the process's registry (none without metrics)."""
    registry = metrics.registry if metrics is not None else None
    attempts = Counter(
        "llm_worker_webhook_attempts",
        "Webhook attempts, by outcome (delivered, failed).",
        ["outcome"],
        registry=registry,
    )
    deliveries = Counter(
        "llm_worker_webhook_deliveries",
        "Webhook deliveries settled, by outcome (delivered, given_up).",
        ["outcome"],
        registry=registry,
    )
    return {
        "attempt_delivered": attempts.labels("delivered"),
        "attempt_failed": attempts.labels("failed"),
        "delivered": deliveries.labels("delivered"),
        "given_up": deliveries.labels("given_up"),
    }
