"""Puts the pieces together: one ASGI application from the settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from llm_worker.config import Settings
from llm_worker.gateway import Gateway
from llm_worker.inserts import builtin_inserts
from llm_worker.pipelines import builtin_pipelines
from llm_worker.providers.catalog import build_providers
from llm_worker.providers.openai_compatible import ClientPool
from llm_worker.runner import RetryPolicy, Runner
from llm_worker.store import open_store
from llm_worker.worker import Worker


def build_runner(settings: Settings, clients: ClientPool) -> Runner:
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
    )


def create_app(settings: Settings | None = None) -> Starlette:
    """The gateway and a worker sharing one store, started and stopped with the app.

    Configuration errors (a bad providers file, a plugin that does not
    import) are raised here, before anything listens.
    """
    settings = settings or Settings()
    clients = ClientPool(
        timeout=settings.provider_timeout_seconds,
        connect_timeout=settings.provider_connect_timeout_seconds,
    )
    runner = build_runner(settings, clients)
    store = open_store(settings)
    gateway = Gateway(store, runner, max_message_bytes=settings.max_message_bytes)
    worker = Worker(
        store,
        runner,
        concurrency=settings.worker_concurrency,
        max_attempts=settings.job_max_attempts,
        shutdown_grace=settings.shutdown_grace_seconds,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.start()
        worker.start()
        try:
            yield
        finally:
            await worker.stop()
            for _, provider in runner.providers.items():
                await provider.aclose()
            await clients.aclose()
            await store.close()

    app = Starlette(
        routes=[
            WebSocketRoute("/ws/", gateway.websocket_endpoint),
            WebSocketRoute("/ws", gateway.websocket_endpoint),
            Route("/healthz", gateway.healthz),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.worker = worker
    app.state.gateway = gateway
    return app


def _event_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def server_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    """How uvicorn serves the app: the same for the command and for the tests."""
    return uvicorn.Config(
        app,
        host=settings.listen_address,
        port=settings.listen_port,
        loop=_event_loop(),
        http="httptools",
        # Writes each frame in one call, which the gateway relies on (see Connection.send).
        ws="websockets-sansio",
        ws_max_size=settings.ws_max_frame_bytes,
        # Token frames are tiny; compressing them costs CPU and ~100 KiB per connection.
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
