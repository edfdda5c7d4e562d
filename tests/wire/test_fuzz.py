"""The real server, fed generated and mutated frames of every request type in both
dialects: every frame answered, memory bounded, and the server healthy afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from llm_worker.testing.openai_server import OpenAIServer
from llm_worker.wire.dialects import SUBPROTOCOL
from tests.support.servers import make_settings, serve

REQUEST_TYPES = ["add", "listen", "cancel", "status", "ping"]
FIELDS = ["id", "job_id", "query", "assistant", "history", "variables", "after", "type"]
VALID_ADD: dict[str, Any] = {
    "type": "add",
    "id": "ok",
    "query": "hello",
    "assistant": {
        "streams": [
            {
                "provider": "openai",
                "settings": {"model": "m"},
                "messages": [
                    {"role": "system", "content": "Be brief {tone}."},
                    {"insert": "history", "last": 2},
                    {"role": "user", "content": "{query}"},
                ],
            }
        ]
    },
    "history": [{"role": "user", "content": "earlier"}],
    "variables": {"tone": "dry"},
}

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def mutated_add(draw: st.DrawFn) -> dict[str, Any]:
    """The valid add with one place in it replaced by anything."""
    frame = json.loads(json.dumps(VALID_ADD))
    node: Any = frame
    path = draw(st.lists(st.integers(0, 5), min_size=1, max_size=5))
    for step in path[:-1]:
        children = list(node) if isinstance(node, dict) else range(len(node))
        if not children or not isinstance(node, dict | list):
            break
        key = list(children)[step % len(children)]
        if not isinstance(node[key], dict | list) or not node[key]:
            break
        node = node[key]
    if isinstance(node, dict) and node:
        keys = list(node)
        node[keys[path[-1] % len(keys)]] = draw(json_values)
    elif isinstance(node, list) and node:
        node[path[-1] % len(node)] = draw(json_values)
    return frame


@st.composite
def generated_request(draw: st.DrawFn) -> dict[str, Any]:
    frame = {
        name: draw(json_values)
        for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True))
    }
    frame["type"] = draw(st.sampled_from(REQUEST_TYPES) | st.text(max_size=8))
    return frame


frames = (
    generated_request().map(json.dumps)
    | mutated_add().map(json.dumps)
    | st.text(max_size=200)
    | mutated_add().map(lambda f: json.dumps(f)[: len(json.dumps(f)) // 2])
    | st.binary(max_size=50)
)


def rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if "VmRSS" in line) / 1024


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """A real worker in a thread of its own (hypothesis drives its tests synchronously)."""
    loop = asyncio.new_event_loop()
    ready: asyncio.Future[int] = loop.create_future()
    stop = asyncio.Event()

    async def run() -> None:
        async with OpenAIServer() as upstream:
            worker_settings = make_settings(
                openai_api_key="k", openai_base_url=upstream.base_url, log_level="WARNING"
            )
            async with serve(worker_settings) as worker:
                ready.set_result(worker.port)
                await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(_wait(ready), loop).result(30)
    yield port
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)


async def _wait(future: asyncio.Future[int]) -> int:
    return await future


@contextlib.contextmanager
def client(port: int, full: bool) -> Iterator[ClientConnection]:
    with connect(
        f"ws://127.0.0.1:{port}/ws/",
        subprotocols=[SUBPROTOCOL] if full else None,  # type: ignore[list-item]
        max_size=None,
        open_timeout=10,
    ) as ws:
        yield ws


counter = iter(range(10**9))


def answered(ws: ClientConnection, frame: str | bytes) -> list[dict[str, Any]]:
    """What the server says to ``frame`` before the ping sent right after it."""
    marker = f"after-{next(counter)}"
    ws.send(frame)
    ws.send(json.dumps({"type": "ping", "id": marker}))
    replies = []
    while True:
        message = json.loads(ws.recv(timeout=10))
        if message == {"type": "pong", "id": marker}:
            return replies
        replies.append(message)


@pytest.mark.parametrize("full", [True, False], ids=["full", "seed"])
def test_every_frame_is_answered_and_nothing_grows(server: int, full: bool) -> None:
    seed_types = {"resp_add", "running", "done", "failed", "error", "pong", "status", "cancelled"}
    before = rss_mib()
    with client(server, full) as ws:

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(frame=frames)
        def fed(frame: str | bytes) -> None:
            replies = answered(ws, frame)
            assert replies, frame
            if not full:
                # Unasked, a seed client is sent its own types only.
                assert {m["type"] for m in replies} <= seed_types, replies

        fed()
    assert rss_mib() - before < 100
    # Healthy afterwards: health answers, and a job runs to its end.
    with urllib.request.urlopen(f"http://127.0.0.1:{server}/healthz", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"
    with client(server, full=True) as ws:
        ws.send(json.dumps(VALID_ADD))
        while (message := json.loads(ws.recv(timeout=20)))["type"] not in ("done", "failed"):
            pass
        assert message["type"] == "done"
