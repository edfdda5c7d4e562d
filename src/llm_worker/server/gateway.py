"""The gateway: what every client connection shares (the store, the template checks,
access, the limits) and the operations the WebSocket (:mod:`.websocket`) and HTTP
(:mod:`.http_api`) endpoints both serve: add, see and cancel a job, and its status,
each checked against who asks.

When the process stops, the gateway takes no new connections or jobs, and keeps
the open connections while jobs they follow are running (:meth:`Gateway.drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import HTTPConnection
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from llm_worker.jobs import schedule
from llm_worker.jobs.model import JobRecord, JobSpec, JobState, output_of
from llm_worker.jobs.templates import TemplateError
from llm_worker.ops.logs import about
from llm_worker.ops.metrics import CONTENT_TYPE, Metrics, Readings
from llm_worker.running.catalog import local_model_readings
from llm_worker.running.checks import RequestRefused
from llm_worker.running.runner import Runner
from llm_worker.running.webhooks import Webhooks
from llm_worker.server import idempotent
from llm_worker.server.access import Access, Principal
from llm_worker.server.refusals import Refused, error_response
from llm_worker.store import JobStore, StoreError, StoreStats, UnknownJob
from llm_worker.store.base import ExpiredJob, ListingKey, WorkerCensus
from llm_worker.wire import errors, protocol
from llm_worker.wire import events as event_frames
from llm_worker.wire.webhooks import BadTarget

log = logging.getLogger(__name__)

SHUTTING_DOWN = "the worker is shutting down and takes no new jobs; try again shortly"
# How often the store's health is asked in the background, and how long it may take.
HEALTH_PROBE_SECONDS = 1.0
HEALTH_PROBE_TIMEOUT_SECONDS = 2.0
# How long /healthz waits for the store's figures, once the store answered its probe.
HEALTH_ANSWER_SECONDS = 0.5
# How long without a live worker before /healthz says so (a worker starting, or saying
# again that it is alive after Redis came back without its data, is not an outage).
NO_WORKERS_AFTER_SECONDS = 5.0
LISTEN_ONLY = "a listen token may only listen to its job and ask its status"
ADMIN_ONLY = "only an admin key may list jobs"


class Listener(Protocol):
    """What the gateway asks of a client's connection (``websocket.Connection``)."""

    followers: dict[str, asyncio.Task[None]]
    """The jobs it follows, each by the task that relays it."""

    def announce(self, message: str, job_ids: set[str] | None, code: str) -> None:
        """Tell its listeners of the jobs it follows (or of ``job_ids``) ``message``,
        whose code (:mod:`llm_worker.wire.errors`) is ``code``."""


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    max_message_bytes: int = 1024 * 1024
    max_followed_jobs: int = 1000
    slow_listener_seconds: float = 30.0
    sse_keepalive_seconds: float = 15.0
    idempotency_window_seconds: float = 86400.0


class Gateway:
    """What every connection shares: the store, the template checker, access, the limits."""

    def __init__(
        self,
        store: JobStore,
        runner: Runner,
        *,
        access: Access | None = None,
        limits: GatewayLimits | None = None,
        metrics: Metrics | None = None,
        webhooks: Webhooks | None = None,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.runner = runner
        self.metrics = metrics or runner.metrics
        self.access = access or Access()
        self.limits = limits or GatewayLimits()
        self.connections: set[Listener] = set()
        self.streams: dict[asyncio.Task[None], str] = {}
        """HTTP event streams relaying a job, and the job each relays."""
        self.event_streams: set[Listener] = set()
        """The same event streams, as listeners to tell of an outage or a quiet worker."""
        self.draining = False
        """Set when the process stops: no new connections or jobs."""
        self._health_watch: asyncio.Task[None] | None = None
        self._health_probe: asyncio.Task[None] | None = None
        self._store_trouble: str | None = None
        """Why the store did not answer the last probe; ``None`` when it did."""
        self._probed = asyncio.Event()
        self._census: WorkerCensus | None = None
        """The workers sharing the store, as the last probe found them (shared stores)."""
        self._told_quiet: set[tuple[str, str]] = set()
        self._worker_seen_at = 0.0
        """When a live worker was last counted (loop time), or this gateway started."""
        """(job, worker) pairs whose listeners were told the worker went quiet."""

    def start(self) -> None:
        self._worker_seen_at = asyncio.get_running_loop().time()
        self._health_watch = asyncio.create_task(self._watch_store(), name="store-health")
        self._health_probe = asyncio.create_task(self._probe_forever(), name="health-probe")

    async def stop(self) -> None:
        for task in (self._health_watch, self._health_probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _probe_forever(self) -> None:
        """Ask the store how it is every ``HEALTH_PROBE_SECONDS``, bounded, so that
        ``/healthz`` answers from what is known without waiting on the store."""
        # A probe that takes long is not cancelled but waited for by the next rounds:
        # its failure, when it comes, is how the store learns it is away.
        probe: asyncio.Future[object] | None = None
        try:
            while True:
                if probe is None:
                    probe = asyncio.ensure_future(self.store.stats())
                done, _ = await asyncio.wait({probe}, timeout=HEALTH_PROBE_TIMEOUT_SECONDS)
                if not done:
                    self._store_trouble = (
                        f"the job store did not answer within {HEALTH_PROBE_TIMEOUT_SECONDS:.0f}s"
                    )
                else:
                    probe, finished = None, probe
                    exc = finished.exception()
                    if exc is not None and not isinstance(exc, StoreError):
                        log.warning("the job store could not answer a health probe: %r", exc)
                    self._store_trouble = None if exc is None else (str(exc) or repr(exc))
                    if exc is None:
                        await self._count_workers()
                self._probed.set()
                await asyncio.sleep(HEALTH_PROBE_SECONDS)
        finally:
            if probe is not None:
                probe.cancel()

    async def _watch_store(self) -> None:
        """Tell listeners when the store has been away longer than its grace period."""
        while True:
            message = await self.store.outage()
            for listener in self._listeners():
                listener.announce(message, None, errors.STORE_UNAVAILABLE)
            await self.store.recovered()

    async def _count_workers(self) -> None:
        """Who runs jobs (from their heartbeats); the full-dialect listeners of a job
        whose worker went quiet are told so, once per job and worker."""
        try:
            census = await asyncio.wait_for(self.store.workers(), HEALTH_PROBE_TIMEOUT_SECONDS)
            self._census = census
            if census is None:
                return
            if census.alive:
                self._worker_seen_at = asyncio.get_running_loop().time()
            self._told_quiet = {told for told in self._told_quiet if told[1] in census.quiet}
            if not census.quiet:
                return
            followed = {job_id for c in self._listeners() for job_id in c.followers}
            followed -= {job_id for job_id, _ in self._told_quiet}
            owners = await asyncio.wait_for(
                self.store.owners(sorted(followed)), HEALTH_PROBE_TIMEOUT_SECONDS
            )
        except (StoreError, TimeoutError):
            return
        for job_id, worker in owners.items():
            if worker not in census.quiet:
                continue
            self._told_quiet.add((job_id, worker))
            message = (
                f"the worker running job {job_id} has not been heard from for "
                f"{census.quiet[worker]:.0f}s; the job goes on once it is back or another "
                "worker takes it over"
            )
            log.warning("%s", message)
            for listener in self._listeners():
                listener.announce(message, {job_id}, errors.WORKER_QUIET)

    def _listeners(self) -> list[Listener]:
        """Whoever follows jobs here: WebSocket connections and event streams."""
        return [*self.connections, *self.event_streams]

    async def drain(self, until: float) -> None:
        """Take no new connections or jobs; return once no connection follows a job
        that is running or whose end it has yet to relay, or at ``until`` (loop time).
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        while (remaining := until - loop.time()) > 0:
            try:
                # Within the deadline, whatever the store's state.
                followers = await asyncio.wait_for(self._followers_of_started_jobs(), remaining)
            except (StoreError, TimeoutError):
                return  # nothing more to relay while the store is away
            if not followers:
                return
            # Jobs a connection waits on may start elsewhere meanwhile: look again soon.
            await asyncio.wait(followers, timeout=min(remaining, 0.5))

    async def _followers_of_started_jobs(self) -> list[asyncio.Task[None]]:
        following = [
            (job_id, task)
            for connection in list(self.connections)
            for job_id, task in list(connection.followers.items())
        ]
        following += [(job_id, task) for task, job_id in list(self.streams.items())]
        followers = []
        for job_id, task in following:
            if task.done():
                continue
            record = await self.store.get(job_id)
            if record is not None and record.state is not JobState.PENDING:
                followers.append(task)
        return followers

    # -- operations, for the WebSocket and HTTP alike ----------------------------

    def authenticate(self, connection: HTTPConnection) -> Principal:
        """Who an HTTP request speaks for; :class:`Refused` (401) without a valid key."""
        principal = self.access.authenticate(credential(connection))
        if principal is None:
            raise Refused(NEEDS_KEY, errors.UNAUTHORIZED, challenge=True)
        return principal

    async def add_job(
        self,
        principal: Principal,
        spec: JobSpec,
        webhook: object = None,
        once: idempotent.IdempotentAdd | None = None,
        run_at: object = None,
        delay: object = None,
    ) -> tuple[JobRecord, str | None]:
        """Queue a job after checking it; the job and, with keys, its listen token. With
        ``once``, the job of its idempotency key if an add of it made one (a replay).
        With ``run_at`` or ``delay``, scheduled (:mod:`llm_worker.jobs.schedule`).

        :class:`Refused` for a request the gateway will not queue, the store's
        :class:`StoreError` for one it cannot."""
        if principal.listen_only:
            raise Refused(LISTEN_ONLY, errors.LISTEN_ONLY)
        if self.draining:
            raise Refused(SHUTTING_DOWN, errors.SHUTTING_DOWN)
        spec = _scheduled(spec, run_at, delay)
        try:
            self.runner.check(spec)
        except RequestRefused as exc:
            raise Refused(str(exc), errors.INVALID_JOB) from None
        except TemplateError as exc:
            raise Refused(f"invalid assistant template: {exc}", errors.INVALID_JOB) from None
        url = await self._webhook_of(principal.tenant, webhook)
        window = self.limits.idempotency_window_seconds
        record = await idempotent.submit(self.store, spec, principal.tenant, once, window, url)
        if once is not None and once.replayed:  # the first add did the rest
            record.run_at = spec.run_at  # its time too: the same request (same digest)
            return record, self._listen_token(record)
        if url is not None and self.webhooks is not None:
            await self.webhooks.register(record.id, url, record.tenant)
        self.metrics.job_added(record.tenant)
        log.debug("job %s added", record.id, extra=about(record.id, record.tenant))
        token = self.access.listen_token(record.id, record.tenant) if self.access.enabled else None
        return record, token

    async def _webhook_of(self, tenant: str, given: object) -> str | None:
        """The webhook a new job will report its end to, checked (a job's own is
        refused with the reason; a deployment's or tenant's default was checked at start
        and is checked again before each attempt)."""
        if given is not None and not isinstance(given, str):
            raise Refused("webhook: an http:// or https:// URL, as a string", errors.INVALID_JOB)
        if self.webhooks is None:
            if given is not None:
                raise Refused("webhook: this process sends no webhooks", errors.INVALID_JOB)
            return None
        try:
            if given is None:
                return self.webhooks.targets.url_for(tenant, None)
            return await self.webhooks.target(tenant, given)
        except BadTarget as exc:
            raise Refused(str(exc), errors.INVALID_JOB) from None

    def _listen_token(self, record: JobRecord) -> str | None:
        return self.access.listen_token(record.id, record.tenant) if self.access.enabled else None

    async def visible(self, principal: Principal, job_id: str) -> JobRecord:
        """The job's record, if ``principal`` may know of the job at all (else
        :class:`UnknownJob`, as for a job that does not exist; :class:`ExpiredJob` for
        one of its own that expired lately)."""
        record = await self.store.get(job_id)
        if record is None:
            tombstone = await self.store.tombstone(job_id)
            if tombstone is not None and principal.may_see(tombstone.tenant, job_id):
                raise ExpiredJob(tombstone)
        if record is None or not principal.may_see(record.tenant, job_id):
            raise UnknownJob(job_id)
        return record

    async def cancel_job(self, principal: Principal, job_id: str) -> JobRecord:
        """Cancel the job; its record as it now stands (unchanged if it had ended)."""
        before = await self.visible(principal, job_id)
        if principal.listen_only:
            raise Refused(LISTEN_ONLY, errors.LISTEN_ONLY)
        record = await self.store.cancel(job_id)
        if record.state is JobState.CANCELLED and before.state is JobState.PENDING:
            # A waiting job never reaches a worker: its end is counted here (a running
            # one's by its worker, which knows its provider).
            self.metrics.waiting_job_cancelled(record.tenant)
        return record

    async def status_of(
        self, principal: Principal, job_id: str, typed: bool = False, webhook: bool = True
    ) -> str:
        """The ``status`` reply about the job; ``typed``, with the finished message and the
        usage's details once it is done (:mod:`llm_worker.wire.events`); ``webhook``, with
        how its webhook's delivery goes, if it has one."""
        record = await self.visible(principal, job_id)
        position = await self.store.position(record.id)
        events = await self.store.read(record.id)
        summary = event_frames.summary_of(events[-1], typed) if events else None
        shown = None
        if webhook and self.webhooks is not None:
            shown = await self.webhooks.shown(record.id)
        return protocol.status(record, position, output_of(events), summary, shown, time.time())

    async def recent_jobs(
        self,
        principal: Principal,
        state: JobState | None,
        limit: int,
        below: ListingKey | None = None,
    ) -> list[JobRecord]:
        """The newest jobs of every tenant (below ``below``: a next page), for an admin
        (:class:`Refused`, 403, for anyone else)."""
        if not principal.admin:
            raise Refused(ADMIN_ONLY, errors.ADMIN_ONLY)
        return await self.store.recent(state, limit, None, below)

    def catalog(self, principal: Principal) -> dict[str, list[str]]:
        """What a template may name here: the providers configured, the inserts and
        the pipelines."""
        if principal.listen_only:
            raise Refused(LISTEN_ONLY, errors.LISTEN_ONLY)
        return {
            "providers": self.runner.providers.usable(),
            "inserts": list(self.runner.inserts),
            "pipelines": list(self.runner.pipelines),
        }

    async def readings(self) -> Readings:
        """The gauges ``/metrics`` shows, as they stand (the store's, if it answers)."""
        try:
            stats = await self.store.stats()
        except StoreError:
            self.metrics.store_errors.labels("stats").inc()
            stats = StoreStats(pending=0, running=0)
        followed = sum(len(c.followers) for c in self.connections) + len(self.streams)
        return Readings(
            queued=stats.pending,
            running=stats.running,
            connections=len(self.connections),
            followed_jobs=followed,
            **local_model_readings(self.runner.providers),
        )

    async def metrics_endpoint(self, request: HTTPRequest) -> Response:
        """``/metrics``, for whoever ``METRICS_KEY`` (or, with keys, an admin key) lets in:
        its figures name tenants and the models they use."""
        refused = self.access.metrics_refusal(credential(request))
        if refused is not None:
            return metrics_refusal(refused)
        body = self.metrics.render(await self.readings())
        return Response(body, media_type=CONTENT_TYPE)

    async def healthz(self, request: HTTPRequest) -> Response:
        """Answers at once (a load balancer's check must not time out): the store's
        health is what the last probe found; the figures are asked for only of a
        store that answered it, and within ``HEALTH_ANSWER_SECONDS``.

        Failing, it answers in the API's error shape, with the figure a probe reads:
        ``status`` (a load balancer should send clients elsewhere)."""
        if self.draining:
            return _unhealthy(errors.SHUTTING_DOWN, "shutting down", "the worker is shutting down")
        if not self._probed.is_set():  # just started: the first probe is on its way
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._probed.wait(), HEALTH_ANSWER_SECONDS)
        trouble = self._store_trouble if self._probed.is_set() else "the job store is starting"
        trouble = self.store.away or trouble
        stats = None
        if trouble is None:
            try:
                stats = await asyncio.wait_for(self.store.stats(), HEALTH_ANSWER_SECONDS)
            except TimeoutError:
                trouble = f"the job store did not answer within {HEALTH_ANSWER_SECONDS}s"
            except Exception as exc:
                if not isinstance(exc, StoreError):
                    log.warning("the job store could not answer /healthz: %r", exc)
                trouble = str(exc) or repr(exc)
        if stats is None:
            # Up, but not serving: a load balancer should send clients elsewhere.
            return _unhealthy(errors.STORE_UNAVAILABLE, "store unavailable", trouble or "")
        body: dict[str, object] = {
            "status": "ok",
            "queued": stats.pending,
            "running": stats.running,
            # WebSocket connections and event streams alike hold a connection.
            "connections": len(self.connections) + len(self.streams),
        }
        if (census := self._census) is not None:  # workers of their own (a shared store)
            body["workers"] = census.alive
            unseen = asyncio.get_running_loop().time() - self._worker_seen_at
            if not census.alive and unseen > NO_WORKERS_AFTER_SECONDS:  # no job can run
                body |= {
                    "type": "error",
                    "code": errors.NO_WORKERS,
                    "message": "no worker has been heard from lately: jobs wait",
                    "status": "no workers",
                }
                return JSONResponse(body, status_code=errors.CODES[errors.NO_WORKERS])
        return JSONResponse(body)


def credential(connection: HTTPConnection) -> str | None:
    """The key or listen token a request presents: ``Authorization: Bearer ...``, or the
    ``access_token`` query parameter for clients that cannot set headers (browsers)."""
    scheme, _, value = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return connection.query_params.get("access_token")


NEEDS_KEY = "an API key is needed: send it as Authorization: Bearer KEY, or as ?access_token=KEY"


def metrics_refusal(code: str) -> Response:
    """The answer to a scrape without the key ``/metrics`` asks for."""
    if code == errors.UNAUTHORIZED:
        return error_response(
            code,
            "/metrics needs a key: METRICS_KEY, or with API keys an admin key, as "
            "Authorization: Bearer KEY",
            {"www-authenticate": "Bearer"},
        )
    return error_response(code, "only METRICS_KEY or an admin key may read /metrics")


def unauthorized() -> Response:
    return error_response(errors.UNAUTHORIZED, NEEDS_KEY, {"www-authenticate": "Bearer"})


def _unhealthy(code: str, status: str, message: str) -> JSONResponse:
    """A failing ``/healthz``: the error shape, with the ``status`` a probe reads."""
    body = {"type": "error", "code": code, "message": message, "status": status}
    return JSONResponse(body, status_code=errors.CODES[code])


def _scheduled(spec: JobSpec, run_at: object, delay: object) -> JobSpec:
    """``spec`` with the time it may start, if the add gave one (checked: refused if
    it is no time, or too far ahead)."""
    try:
        start = schedule.start_time(run_at, delay, time.time())
    except schedule.BadSchedule as exc:
        raise Refused(str(exc), errors.INVALID_JOB) from None
    return spec if start is None else spec.model_copy(update={"run_at": start})
