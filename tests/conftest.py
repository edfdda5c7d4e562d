"""Fixtures: a real worker on an ephemeral port, a loopback OpenAI-compatible server,
and WebSocket clients talking to them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from llm_worker.config import Settings
from llm_worker.server.app import create_app
from llm_worker.server.serving import make_server
from llm_worker.testing.openai_server import OpenAIServer
from llm_worker.testing.redis_server import unique_prefix
from tests.wsclient import WSClient

pytest_plugins = ["tests.stores"]


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


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIServer]:
    """A loopback OpenAI-compatible server; set ``upstream.handler`` to script it."""
    async with OpenAIServer() as server:
        yield server


StartWorker = Callable[..., Awaitable[RunningWorker]]


@pytest.fixture
def store_kind() -> str:
    """The store the workers of a test use; a module overrides this to try them all."""
    return "memory"


NewStore = Callable[[], dict[str, Any]]


@pytest.fixture
def new_store(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> NewStore:
    """Makes the settings of a new, empty store of the kind this test uses."""
    count = itertools.count(1)

    def make() -> dict[str, Any]:
        if store_kind == "sqlite":
            return {"store_url": f"sqlite:///{tmp_path}/jobs-{next(count)}.db"}
        if store_kind == "redis":
            server = request.getfixturevalue("redis_server")
            return {"store_url": server.url, "redis_prefix": unique_prefix()}
        return {"store_url": "memory://"}

    return make


@pytest.fixture
async def start_worker(upstream: OpenAIServer, new_store: NewStore) -> AsyncIterator[StartWorker]:
    """Starts workers whose ``openai`` provider is the loopback server, each with a
    store of its own unless ``store_url`` is given."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> RunningWorker:
            values = {"openai_api_key": "sk-test", "openai_base_url": upstream.base_url}
            if "store_url" not in overrides:
                values.update(new_store())
            values.update(overrides)
            return await stack.enter_async_context(serve(make_settings(**values)))

        yield start


@pytest.fixture
def default_worker(start_worker: StartWorker) -> Callable[[], Awaitable[RunningWorker]]:
    """The test's worker with default settings, started on first use."""
    started: list[RunningWorker] = []

    async def get() -> RunningWorker:
        if not started:
            started.append(await start_worker())
        return started[0]

    return get


@pytest.fixture
async def worker(default_worker: Callable[[], Awaitable[RunningWorker]]) -> RunningWorker:
    return await default_worker()


ConnectClient = Callable[..., Awaitable[WSClient]]


@pytest.fixture
async def connect(
    default_worker: Callable[[], Awaitable[RunningWorker]],
) -> AsyncIterator[ConnectClient]:
    """Opens WebSocket clients to the URL given, or to the test's default worker."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_client(url: str | None = None, **kwargs: Any) -> WSClient:
            url = url or (await default_worker()).ws_url
            return await stack.enter_async_context(WSClient(url, **kwargs))

        yield open_client


@pytest.fixture
async def client(connect: ConnectClient) -> WSClient:
    return await connect()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llm_worker.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of model, but its tokenizer has no chat template."""
    from llm_worker.testing.tiny_model import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "plain-llama", chat_template=False, seed=1
    )
