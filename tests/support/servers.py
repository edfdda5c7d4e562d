"""A worker as ``llm-worker serve`` runs it, on a free port of the test's event loop,
with settings fit for tests: what the fixtures and ``tests/js/serve_for_js.py`` start."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette

from llm_worker.config import Settings
from llm_worker.server.app import create_app
from llm_worker.server.serving import make_server


def make_settings(**overrides: Any) -> Settings:
    """Settings from the arguments alone: no .env, defaults fit for tests."""
    values: dict[str, Any] = {
        "listen_address": "127.0.0.1",
        "listen_port": 0,
        "log_level": "DEBUG",
        "provider_retry_base_seconds": 0.01,
        "shutdown_grace_seconds": 1.0,
        "store_url": "memory://",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class RunningWorker:
    app: Starlette
    settings: Settings
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[RunningWorker]:
    """The worker as ``llm-worker serve`` runs it, on a free port of this loop."""
    app = create_app(settings)
    server = make_server(app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.005)
        yield RunningWorker(app, settings, port)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()
