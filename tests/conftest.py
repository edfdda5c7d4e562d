"""Fixtures: a real worker on an ephemeral port, a loopback OpenAI-compatible server,
and WebSocket clients talking to them."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from llm_worker.testing.openai_server import OpenAIServer
from llm_worker.testing.redis_server import unique_prefix
from tests.support.servers import RunningWorker, make_settings, serve
from tests.support.wsclient import WSClient

pytest_plugins = ["tests.support.stores"]


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
