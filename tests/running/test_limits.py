"""No client can exhaust the worker: every limit, tried as a hostile or careless client
would, over real connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import websockets

from llm_worker.jobs import templates
from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.wire.dialects import SUBPROTOCOL
from llm_worker.wire.events import MAX_FRAME_TEXT
from tests.conftest import ConnectClient, StartWorker
from tests.support.wsclient import WSClient, assistant, text_of


def rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return kib / 1024


# -- connections -----------------------------------------------------------------


async def test_connections_beyond_max_connections_are_refused(start_worker: StartWorker) -> None:
    worker = await start_worker(max_connections=4)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(WSClient(worker.ws_url)) for _ in range(4)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(worker.ws_url)
        assert refused.value.response.status_code == 503
        assert b"too many connections" in refused.value.response.body
        await clients[0].ws.close()
        await asyncio.sleep(0.1)
        async with WSClient(worker.ws_url) as again:  # room again
            await again.send({"type": "ping"})
            assert await again.recv() == {"type": "pong"}


async def test_half_open_connections_are_closed_within_the_handshake_timeout(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(handshake_timeout_seconds=0.5, max_connections=50)
    stalled = []
    for _ in range(50):
        reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
        writer.write(b"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        stalled.append((reader, writer))
    started = asyncio.get_running_loop().time()
    for reader, _ in stalled:
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408")
    assert asyncio.get_running_loop().time() - started < 3
    for _, writer in stalled:
        writer.close()
    # Their places are free again for real clients.
    async with WSClient(worker.ws_url) as client:
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}


async def test_a_listener_that_reads_nothing_is_closed_and_resumes_losing_nothing(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    # Far more than every buffer between the two can hold: 6 MB of text.
    tokens = [f" {i:04d}" + "x" * 995 for i in range(6000)]
    upstream.handler = lambda body: Reply(tokens=tokens)
    worker = await start_worker(slow_listener_seconds=1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", worker.port))
    # max_queue=1: once a frame waits unread, the client stops reading its socket.
    ws = await websockets.connect(
        worker.ws_url, sock=sock, subprotocols=[SUBPROTOCOL], max_queue=1, max_size=None
    )
    add = {"type": "add", "id": "big", "query": "q", "assistant": assistant()}
    await ws.send(json.dumps(add))
    await asyncio.sleep(4)  # it reads nothing meanwhile
    received, close = await read_until_closed(ws)
    assert close is not None and close.code == 1013
    assert "too slow" in close.reason
    assert "resume with listen and after" in close.reason
    job_id = received[0]["job_id"]
    seen = [m for m in received if m.get("job_id") == job_id and "seq" in m]
    assert seen and seen[-1]["type"] == "running"
    async with WSClient(worker.ws_url) as again:
        await again.send({"type": "listen", "job_id": job_id, "after": seen[-1]["seq"]})
        rest = await again.job_messages(job_id, timeout=30)
    assert rest[-1]["type"] == "done"
    assert text_of(seen) + text_of(rest) == "".join(tokens)


async def read_until_closed(ws: Any) -> tuple[list[dict[str, Any]], Any]:
    """Every message until the server closed the connection, and its close frame."""
    received = []
    try:
        while True:
            received.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    except websockets.ConnectionClosed as closed:
        return received, closed.rcvd


async def test_non_reading_listeners_of_a_long_finished_job_cost_bounded_memory(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    # What one attacker did: connections that never read, each listening again and
    # again to a finished job of 20,000 tokens.
    upstream.handler = lambda body: Reply(tokens=[f" token{i}" for i in range(20_000)])
    worker = await start_worker(slow_listener_seconds=2)
    async with WSClient(worker.ws_url) as client:
        job_id, messages = await client.run()
        assert messages[-1]["type"] == "done"
    before = rss_mib()
    socks = []
    for _ in range(20):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", worker.port))
        ws = await websockets.connect(worker.ws_url, sock=sock, max_queue=1, max_size=None)
        for after in range(50):
            await ws.send(f'{{"type": "listen", "job_id": "{job_id}", "after": {after}}}')
        socks.append(ws)
    await asyncio.sleep(1)
    grown = rss_mib() - before
    # It was 42 MiB per connection: 840 MiB for these.
    assert grown < 60, f"{grown:.0f} MiB for 20 connections"
    # What each holds unsent is bounded by the transport's high-water mark and a frame.
    gateway = worker.app.state.gateway
    unsent = [connection._transport.unsent() for connection in gateway.connections]
    assert len(unsent) == 20
    assert max(unsent) < 64 * 1024 + 4 * MAX_FRAME_TEXT + 1024, unsent
    for ws in socks:
        ws.transport.abort()


async def test_a_connection_follows_at_most_max_followed_jobs(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=[" a"], delay=2)
    worker = await start_worker(max_followed_jobs=3)
    client = await connect(worker.ws_url)
    jobs = [await client.add(f"j{i}") for i in range(3)]
    await client.send({"type": "add", "id": "fourth", "query": "q", "assistant": assistant()})
    error = await client.wait_for("error")
    assert (error["ref"], error["code"]) == ("fourth", "too_many_followed_jobs")
    assert "follows 3 jobs, its limit (MAX_FOLLOWED_JOBS)" in error["message"]
    other = await connect(worker.ws_url)
    spare = await other.add("spare")
    await client.send({"type": "listen", "job_id": spare})
    error = await client.wait_for("error")
    assert (error["ref"], error["code"]) == (spare, "too_many_followed_jobs")
    # Listening again to one it follows is no new follow.
    await client.send({"type": "listen", "job_id": jobs[0], "after": 0})
    await client.send({"type": "ping", "id": "p"})
    assert (await client.wait_for("pong"))["id"] == "p"
    assert all(m["type"] != "error" for m in client.backlog)


# -- requests ----------------------------------------------------------------------


async def add_refused(client: WSClient, **fields: Any) -> str:
    await client.send({"type": "add", "id": "r", "query": "q", **fields})
    error = await client.wait_for("error")
    assert error["ref"] == "r"
    return str(error["message"])


async def test_a_template_of_too_many_streams_is_refused(
    upstream: OpenAIServer, client: WSClient
) -> None:
    stream = assistant()["streams"][0]
    for count in (17, 5000):
        message = await add_refused(client, assistant={"streams": [stream] * count})
        assert message == f"the template has {count} streams; at most 16 (MAX_STREAMS)"
    assert upstream.chat_requests == []


async def test_a_history_too_long_is_refused(upstream: OpenAIServer, client: WSClient) -> None:
    history = [{"role": "user", "content": "hi"}] * 1001
    message = await add_refused(client, assistant=assistant(), history=history)
    assert message == "the history has 1001 messages; at most 1000 (MAX_HISTORY_MESSAGES)"


async def test_a_request_that_would_render_too_large_is_refused_at_add(
    upstream: OpenAIServer, client: WSClient
) -> None:
    # 56 KB that asked for a 500 MB request upstream.
    template = assistant({"role": "user", "content": "{a}" * 10_000})
    message = await add_refused(client, assistant=template, variables={"a": "x" * 50_000})
    assert message == (
        "assistant.streams[0]: its request to the model would be at least 500,000,000 "
        "characters; at most 4,000,000 (MAX_MODEL_REQUEST_CHARS)"
    )
    assert upstream.chat_requests == []


async def test_a_request_that_grows_too_large_while_running_fails_unsent(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(max_model_request_chars=100_000)
    client = await connect(worker.ws_url)
    template = {
        "streams": [
            {"pipeline": "echo"},  # the query, 5,000 characters: unknown size at add
            {
                "provider": "openai",
                "settings": {"model": "m"},
                "messages": [{"role": "user", "content": "{previous_stream_output}" * 100}],
            },
        ]
    }
    _, messages = await client.run(query="y" * 5000, assistant=template)
    assert messages[-1]["message"] == (
        "assistant.streams[1]: its request to provider 'openai' would be at least 500,000 "
        "characters; at most 100,000 (MAX_MODEL_REQUEST_CHARS)"
    )
    assert upstream.chat_requests == []


async def test_the_queue_is_bounded_in_bytes(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=[" a"], delay=5)
    worker = await start_worker(worker_concurrency=1, queue_max_bytes=300_000)
    client = await connect(worker.ws_url)
    history = [{"role": "user", "content": "h" * 1000}] * 100  # ~110 KB a request
    await client.add("running", history=history)
    await client.wait_for("running")
    await client.add("one", history=history)
    await client.add("two", history=history)
    message = await add_refused(client, assistant=assistant(), history=history)
    assert "MiB of requests waiting, QUEUE_MAX_BYTES" in message


def test_the_template_cache_is_bounded() -> None:
    for index in range(40):  # 40 different 990 KB templates: none kept
        templates.compile_text(f"{index} {{query}} " + "x" * 990_000)
    assert templates._cached_chars <= templates.CACHE_CHARS
    for index in range(2000):  # many different smaller ones: the oldest forgotten
        templates.compile_text(f"{index} {{query}} " + "y" * 9000)
    assert templates._cached_chars <= templates.CACHE_CHARS
    assert len(templates._cache) < 2000


async def test_pending_updates_cost_o_1_per_queue_move(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=[" a"])
    worker = await start_worker(worker_concurrency=1)
    client = await connect(worker.ws_url)
    jobs = 300
    for index in range(jobs):
        await client.send({"type": "add", "id": index, "query": "q", "assistant": assistant()})
    ended = 0
    pending = 0
    while ended < jobs:
        message = await client.recv(timeout=30)
        pending += message["type"] == "pending"
        ended += message["type"] == "done"
    # A frame for each job that waited, and a few per move: not one per job per move
    # (which was 300 * 299 / 2 = 44,850).
    assert pending <= jobs + 8 * jobs, pending
