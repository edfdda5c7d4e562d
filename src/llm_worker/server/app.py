"""Puts the pieces together for each role a process can play.

``all`` (the default) runs the gateway and a worker around one store;
``gateway`` serves clients only and ``worker`` runs jobs only, both around a
store they share with other processes (Redis).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute

from llm_worker.config import ConfigError, Role, Settings
from llm_worker.ops.metrics import CONTENT_TYPE, Metrics, Readings
from llm_worker.ops.redaction import redact_url
from llm_worker.providers.openai_compatible import ClientPool
from llm_worker.running.assistants import load_assistants
from llm_worker.running.catalog import (
    build_providers,
    known_models,
    local_model_readings,
    provider_readiness,
)
from llm_worker.running.checks import RequestLimits
from llm_worker.running.inserts import builtin_inserts
from llm_worker.running.pipelines import builtin_pipelines
from llm_worker.running.runner import RetryPolicy, Runner
from llm_worker.running.webhooks import Deliverer, Webhooks, webhook_settings
from llm_worker.running.worker import Worker
from llm_worker.server import openai_api
from llm_worker.server.access import load_access
from llm_worker.server.gateway import Gateway, GatewayLimits
from llm_worker.server.http_api import JobsAPI
from llm_worker.server.openai_api.errors import openai_error
from llm_worker.server.openapi import openapi_document
from llm_worker.server.origins import origin_middleware
from llm_worker.server.websocket import websocket_endpoint
from llm_worker.store import JobStore, StoreError, open_store
from llm_worker.store.delivery_stores import open_deliveries
from llm_worker.wire import errors

log = logging.getLogger(__name__)

# After the grace, how long listeners may take to receive what giving up jobs produced.
RELAY_AFTER_GRACE_SECONDS = 2.0
STATIC = Path(__file__).parent / "static"
CLIENT_JS = STATIC / "client.js"
# The modules client.js imports, by name: only these are served at /client/{name}.js.
CLIENT_MODULES = {path.stem: path for path in sorted((STATIC / "client").glob("*.js"))}
CONSOLE_HTML = STATIC / "console.html"
CONSOLE_JS = STATIC / "console.js"
# The console loads nothing from anywhere but the worker (it works offline, and an
# injected tag could call nowhere else), and no other page may frame it.
CONSOLE_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
    "style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def build_runner(settings: Settings, clients: ClientPool, metrics: Metrics | None = None) -> Runner:
    """The runner with every provider, insert and pipeline the settings name."""
    inserts = builtin_inserts()
    inserts.load_entry_points("llm_worker.inserts")
    inserts.load_specs(settings.extra_inserts)
    pipelines = builtin_pipelines()
    pipelines.load_entry_points("llm_worker.pipelines")
    pipelines.load_specs(settings.extra_pipelines)
    return Runner(
        build_providers(settings, clients),
        inserts,
        pipelines,
        RetryPolicy(
            retries=settings.provider_retries, base_delay=settings.provider_retry_base_seconds
        ),
        RequestLimits(
            max_streams=settings.max_streams,
            max_history_messages=settings.max_history_messages,
            max_model_request_chars=settings.max_model_request_chars,
        ),
        metrics,
    )


class Service:
    """The parts one process runs for its role, started and stopped together.

    Configuration errors (a bad providers file, a plugin that does not
    import, a store the role cannot share) are raised here, before anything
    listens or runs.
    """

    def __init__(self, settings: Settings, role: Role = "all") -> None:
        self.settings = settings
        self.role = role
        self.clients = ClientPool(
            timeout=settings.provider_timeout_seconds,
            connect_timeout=settings.provider_connect_timeout_seconds,
            # Every running job may hold a connection; keep them all for reuse.
            max_connections=settings.worker_concurrency + 16,
        )
        self.metrics = Metrics()
        self.runner = build_runner(settings, self.clients, self.metrics)
        self.assistants = load_assistants(settings.assistants, self.runner)
        self.metrics.know_models(known_models(self.runner.providers, settings.metrics_models))
        self.access = load_access(settings)
        if self.access.enabled and role == "gateway" and settings.token_secret is None:
            raise ConfigError(
                "--role gateway with API keys needs TOKEN_SECRET, the same on every gateway: "
                "a listen token one hands out must hold on the others"
            )
        # Last of what can refuse to start: it takes the SQLite file for this process.
        self.store: JobStore = open_store(
            settings, self.access.tenant_limits, follows=role in ("all", "gateway")
        )
        self.store.report_commits(self.metrics.store_commit.observe)
        targets, delivery_policy = webhook_settings(settings, self.access.webhook_of)
        self.deliveries = open_deliveries(
            settings.store_url,
            prefix=settings.redis_prefix,
            synchronous=settings.sqlite_synchronous,
        )
        self.webhooks = Webhooks(targets, self.deliveries)
        if role != "all" and not self.store.shared:
            raise ConfigError(
                f"--role {role} needs a store shared between processes: STORE_URL "
                f"{settings.store_url!r} keeps jobs in one process; use redis://"
            )
        self.gateway = self._gateway() if role in ("all", "gateway") else None
        self.worker = self._worker() if role in ("all", "worker") else None
        self.deliverer = (
            Deliverer(self.store, self.deliveries, targets, delivery_policy, self.metrics)
            if self.worker is not None
            else None
        )
        # All could be built: what runs jobs says what it can run them with.
        if self.worker is not None:
            for ready, line in provider_readiness(self.runner.providers):
                log.log(logging.INFO if ready else logging.WARNING, "%s", line)

    def _gateway(self) -> Gateway:
        """What serves clients, on the store, with the settings' limits."""
        settings = self.settings
        return Gateway(
            self.store,
            self.runner,
            access=self.access,
            limits=GatewayLimits(
                max_message_bytes=settings.max_message_bytes,
                max_followed_jobs=settings.max_followed_jobs,
                slow_listener_seconds=settings.slow_listener_seconds,
                sse_keepalive_seconds=settings.sse_keepalive_seconds,
                idempotency_window_seconds=settings.idempotency_window_seconds,
            ),
            metrics=self.metrics,
            webhooks=self.webhooks,
        )

    def _worker(self) -> Worker:
        """What runs jobs from the store."""
        settings = self.settings
        return Worker(
            self.store,
            self.runner,
            concurrency=settings.worker_concurrency,
            max_attempts=settings.job_max_attempts,
            shutdown_grace=settings.shutdown_grace_seconds,
            metrics=self.metrics,
        )

    async def start(self) -> None:
        await self.store.start()
        await self.deliveries.start()
        if self.worker is not None:
            self.worker.start()
        if self.deliverer is not None:
            self.deliverer.start()
        if self.gateway is not None:
            self.gateway.start()

    async def drain(self) -> None:
        """Take no new connections or jobs; let running jobs finish, and their
        listeners receive them, for up to ``SHUTDOWN_GRACE_SECONDS``.

        Jobs still running then are given up (queued again by a durable store);
        listeners get what that produced, up to a short while more.
        """
        loop = asyncio.get_running_loop()
        until = loop.time() + self.settings.shutdown_grace_seconds
        await asyncio.gather(
            *([self.worker.drain(until)] if self.worker is not None else []),
            *([self.gateway.drain(until)] if self.gateway is not None else []),
        )
        if self.gateway is not None:
            await self.gateway.drain(loop.time() + RELAY_AFTER_GRACE_SECONDS)

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
        if self.worker is not None:
            await self.worker.stop()
        if self.deliverer is not None:
            await self.deliverer.stop()
        await self.deliveries.close()
        for _, provider in self.runner.providers.items():
            await provider.aclose()
        await self.clients.aclose()
        await self.store.close()


def create_app(settings: Settings | None = None, role: Role = "all") -> Starlette:
    """The ASGI app of a gateway (with a worker, for role ``all``)."""
    service = Service(settings or Settings(), role)
    assert service.gateway is not None, "a worker-only process serves no app"
    gateway = service.gateway

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=[
            WebSocketRoute("/ws/", websocket_endpoint(gateway)),
            WebSocketRoute("/ws", websocket_endpoint(gateway)),
            Route("/healthz", gateway.healthz),
            Route("/metrics", gateway.metrics_endpoint),
            *JobsAPI(gateway).routes(),
            *openai_api.routes(gateway, service.settings.openai_api_provider, service.assistants),
            Route("/openapi.json", openapi_route(service)),
            Route("/client.js", client_js),
            Route("/client/{name}.js", client_module),
            Route("/", to_console),
            Route("/console", console_page),
            Route("/console.js", console_js),
        ],
        middleware=origin_middleware(service.access, service.settings.allowed_hosts),
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = service.settings
    app.state.store = service.store
    app.state.gateway = gateway
    app.state.worker = service.worker
    return app


# The router's own refusals, in the API's error shape.
_ROUTER_CODES = {404: errors.NOT_FOUND, 405: errors.METHOD_NOT_ALLOWED}


async def http_error(request: Request, exc: Exception) -> Response:
    """The router's 404 (no such route) and 405 (``Allow`` lists the methods the path
    serves), in the API's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        message = f"{request.method} is not served at {request.url.path} (Allow: "
        message += f"{(exc.headers or {}).get('Allow', '')})"
    elif exc.status_code == 404:
        message = f"nothing is served at {request.url.path}"
    else:
        message = exc.detail
    code = _ROUTER_CODES.get(exc.status_code, errors.BAD_REQUEST)
    if request.url.path.startswith(openai_api.PATHS):
        # OpenAI's API answers in OpenAI's shape, which its SDKs read.
        return openai_error(exc.status_code, message, code=code, headers=exc.headers)
    return Response(
        errors.error_body(code, message),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


def openapi_route(service: Service) -> Callable[[Request], Awaitable[JSONResponse]]:
    """``/openapi.json``: the document of this deployment (its providers, inserts,
    pipelines, limits and keys), built once."""
    document = openapi_document(
        service.runner,
        keys=service.access.enabled,
        openai_provider=service.settings.openai_api_provider,
        assistants=service.assistants,
        webhooks=service.webhooks.targets.secret is not None or bool(service.access.webhooks),
    )

    async def openapi_json(request: Request) -> JSONResponse:
        return JSONResponse(document)

    return openapi_json


async def client_js(request: Request) -> FileResponse:
    """The browser client (an ES module, also usable from Node), public like the page
    that loads it: it holds no secret."""
    return FileResponse(CLIENT_JS, media_type="text/javascript; charset=utf-8")


async def client_module(request: Request) -> FileResponse:
    """A module of the browser client, which ``/client.js`` imports: public and served
    as it is. Only the files of ``static/client/`` are, by name; any other is a 404."""
    module = CLIENT_MODULES.get(request.path_params["name"])
    if module is None:
        raise HTTPException(404)
    return FileResponse(module, media_type="text/javascript; charset=utf-8")


async def console_page(request: Request) -> FileResponse:
    """The web console: a static page, public like the client it is built on; what it
    shows comes from the API, with the key its user types."""
    return FileResponse(
        CONSOLE_HTML, media_type="text/html; charset=utf-8", headers=CONSOLE_HEADERS
    )


async def to_console(request: Request) -> RedirectResponse:
    """The root leads a browser to the console."""
    return RedirectResponse("/console", status_code=307)


async def console_js(request: Request) -> FileResponse:
    return FileResponse(
        CONSOLE_JS, media_type="text/javascript; charset=utf-8", headers=CONSOLE_HEADERS
    )


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """A worker-only process: runs jobs from the shared store until ``stop`` is set,
    serving ``/metrics`` on ``METRICS_PORT`` when set."""
    service = Service(settings, "worker")
    await service.start()
    assert service.worker is not None
    metrics_server = None
    if settings.metrics_port is not None:
        metrics_server = await serve_metrics(service, settings)
    log.info(
        "worker ready: up to %d jobs at once from %s",
        settings.worker_concurrency,
        redact_url(settings.store_url),
    )
    try:
        await stop.wait()
        log.info(
            "stopping: waiting up to %.0fs for running jobs (a second SIGTERM or Ctrl-C "
            "stops at once)",
            settings.shutdown_grace_seconds,
        )
    finally:
        if metrics_server is not None:
            metrics_server.close()
        await service.stop()


async def serve_metrics(service: Service, settings: Settings) -> asyncio.Server:
    """``/metrics`` of a worker-only process, on a plain HTTP server of its own: one
    short request at a time is all a scraper asks, so the standard library's
    streams serve it without a web framework."""
    worker = service.worker
    assert worker is not None

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            refused = service.access.metrics_refusal(_bearer(request))
            if path.split(b"?")[0] == b"/metrics" and refused is not None:
                status = b"401 Unauthorized" if refused == errors.UNAUTHORIZED else b"403 Forbidden"
                body = errors.error_body(refused, "/metrics needs METRICS_KEY (or an admin key)")
                content_type = b"application/json"
            elif path.split(b"?")[0] == b"/metrics":
                try:
                    queued = (await service.store.stats()).pending
                except StoreError:
                    service.metrics.store_errors.labels("stats").inc()
                    queued = 0
                # Running: this worker's jobs; the gateway's figure is every worker's.
                readings = Readings(
                    queued, worker.running, 0, 0, **local_model_readings(service.runner.providers)
                )
                status, body = b"200 OK", service.metrics.render(readings)
                content_type = CONTENT_TYPE.encode()
            else:
                status = b"404 Not Found"
                body = errors.error_body(errors.NOT_FOUND, "only /metrics is served here")
                content_type = b"application/json"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type
                + b"\r\ncontent-length: " + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n" + body
            )  # fmt: skip
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(
        answer, settings.listen_address, settings.metrics_port, limit=16 * 1024
    )
    host, port = server.sockets[0].getsockname()[:2]
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server


def _bearer(request: bytes) -> str | None:
    """The ``Authorization: Bearer`` credential of a raw request's headers, if any."""
    for line in request.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip().decode("utf-8", "replace")
    return None
