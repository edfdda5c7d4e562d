"""Bad input gets a clear ``error`` to the one client concerned; nothing else is hurt."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import ConnectClient, RunningWorker, StartWorker
from tests.support.wsclient import WSClient, assistant, text_of

TOKENS = [f" w{i}" for i in range(25)]


async def assert_still_serving(client: WSClient) -> None:
    await client.send({"type": "ping", "id": "alive?"})
    assert await client.wait_for("pong") == {"type": "pong", "id": "alive?"}


BAD_FRAMES: list[tuple[str, str, Any]] = [
    ("hello", "not valid JSON", None),
    ('{"type": "add", ', "not valid JSON", None),
    ("[1, 2]", "a request must be a JSON object, not an array", None),
    ('"add"', "a request must be a JSON object, not a string", None),
    ("{}", "missing field 'type'", None),
    ('{"type": "frobnicate", "id": "r1"}', "unknown type 'frobnicate'", "r1"),
    ('{"type": 5}', "unknown type 5", None),
    ('{"type": "add", "id": "r2"}', "missing field 'query'", "r2"),
    ('{"type": "add", "id": "r3", "query": "q"}', "missing field 'assistant'", "r3"),
    (
        '{"type": "add", "id": "r4", "query": 42, "assistant": {"streams": []}}',
        "field 'query': Input should be a valid string",
        "r4",
    ),
    (
        '{"type": "add", "id": "r5", "query": "q", "assistant": {"streams": []}}',
        "field 'assistant.streams': List should have at least 1 item",
        "r5",
    ),
    (
        '{"type": "add", "id": "r6", "query": "q", "assistant": {"streams": '
        '[{"provider": "openai", "messages": [{"role": "wizard", "content": "x"}]}]}}',
        "field 'assistant.streams[0].messages[0].role'",
        "r6",
    ),
    (
        '{"type": "add", "id": "r7", "query": "q", "assistant": {"streams": '
        '[{"provider": "openai", "messages": [{"role": "user"}]}]}}',
        "missing field 'assistant.streams[0].messages[0].content'",
        "r7",
    ),
    (
        '{"type": "add", "id": "r8", "query": "q", "history": [{"role": "user"}], '
        '"assistant": {"streams": [{"pipeline": "echo"}]}}',
        "missing field 'history[0].content'",
        "r8",
    ),
    (
        '{"type": "add", "id": "r9", "query": "q", "variables": {"x": null}, '
        '"assistant": {"streams": [{"pipeline": "echo"}]}}',
        "field 'variables.x': must be a string, a number or a boolean",
        "r9",
    ),
    ('{"type": "listen"}', "missing field 'job_id'", None),
    ('{"type": "listen", "job_id": 5}', "field 'job_id': Input should be a valid string", 5),
    ('{"type": "listen", "job_id": "j", "after": -1}', "field 'after'", "j"),
    ('{"type": "listen", "job_id": "j", "after": "3"}', "field 'after'", "j"),
    ('{"type": "cancel"}', "missing field 'job_id'", None),
    ('{"type": "status", "job_id": ["x"]}', "field 'job_id'", None),
]


@pytest.mark.parametrize(("frame", "message", "ref"), BAD_FRAMES)
async def test_malformed_requests_get_an_error_and_the_connection_stays(
    client: WSClient, upstream: OpenAIServer, frame: str, message: str, ref: Any
) -> None:
    await client.send(frame)
    error = await client.recv()
    assert error["type"] == "error"
    assert message in error["message"]
    assert error.get("ref") == ref
    await assert_still_serving(client)
    assert upstream.chat_requests == []


@pytest.mark.parametrize(
    ("request_type", "extra"), [("listen", {}), ("cancel", {}), ("status", {})]
)
async def test_unknown_job_ids(client: WSClient, request_type: str, extra: dict[str, Any]) -> None:
    await client.send({"type": request_type, "job_id": "no-such-job", **extra})
    error = await client.recv()
    assert error == {
        "type": "error",
        "code": "job_not_found",
        "message": "unknown job_id 'no-such-job'",
        "ref": "no-such-job",
    }
    await assert_still_serving(client)


def stream_with(**stream: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "provider": "openai",
        "settings": {"model": "gpt-test"},
        "messages": [{"role": "user", "content": "{query}"}],
    }
    base.update(stream)
    return {"streams": [base]}


BAD_TEMPLATES: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    (stream_with(provider="nope"), {}, "unknown provider 'nope' (available: "),
    (
        stream_with(messages=[{"insert": "histroy"}]),
        {},
        "assistant.streams[0]: unknown insert 'histroy' (available: history, history_summary)",
    ),
    ({"streams": [{"pipeline": "nope"}]}, {}, "unknown pipeline 'nope' (available: echo"),
    (
        stream_with(messages=[{"role": "user", "content": "{qeury}"}]),
        {},
        "assistant.streams[0].messages[0].content: unknown placeholder {qeury} "
        "(known here: {query})",
    ),
    (
        stream_with(messages=[{"role": "user", "content": "{previous_stream_output}"}]),
        {},
        "unknown placeholder {previous_stream_output}",
    ),
    (
        stream_with(messages=[{"role": "user", "content": "{query.__class__}"}]),
        {},
        "invalid placeholder '{query.__class__}'",
    ),
    (
        stream_with(messages=[{"role": "user", "content": "{0}"}]),
        {},
        "invalid placeholder '{0}'",
    ),
    (
        stream_with(messages=[{"role": "user", "content": "a } b"}]),
        {},
        "unmatched '}' at character 2",
    ),
    (stream_with(settings={}), {}, "settings.model must name a model of provider 'openai'"),
    (
        stream_with(settings={"model": "m", "temperature": "hot"}),
        {},
        "settings.temperature must be a number, not 'hot'",
    ),
    (
        stream_with(settings={"model": "m", "stream": False}),
        {},
        "settings.stream is not allowed",
    ),
    (stream_with(settings={"model": "m", "n": 3}), {}, "settings.n must be 1"),
    (
        stream_with(settings={"model": "m", "max_tokens": 0}),
        {},
        "settings.max_tokens must be at least 1",
    ),
    (
        stream_with(messages=[{"insert": "history", "last": -2}]),
        {},
        "insert 'history' option 'last' must be a whole number >= 0",
    ),
    (
        stream_with(messages=[{"insert": "history_summary", "provider": "nope"}]),
        {},
        "insert 'history_summary' unknown provider 'nope'",
    ),
    (
        {"streams": [{"pipeline": "echo", "speed": 3}]},
        {},
        "pipeline 'echo' takes no options, got speed",
    ),
    (stream_with(), {"variables": {"query": "x"}}, "variables: 'query' is reserved"),
]


@pytest.mark.parametrize(("template", "extra", "message"), BAD_TEMPLATES)
async def test_bad_templates_are_refused_before_a_job_exists(
    worker: RunningWorker,
    upstream: OpenAIServer,
    client: WSClient,
    template: dict[str, Any],
    extra: dict[str, Any],
    message: str,
) -> None:
    await client.send({"type": "add", "id": "bad", "query": "q", "assistant": template, **extra})
    error = await client.recv()
    assert error["type"] == "error"
    assert error["ref"] == "bad"
    assert error["message"].startswith("invalid assistant template: ")
    assert message in error["message"]
    await assert_still_serving(client)
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        health = (await http.get("/healthz")).json()
    assert health["queued"] == 0
    assert health["running"] == 0
    assert upstream.chat_requests == []


async def test_queue_full_refuses_add_with_a_clear_error(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(worker_concurrency=1, queue_max=2)
    upstream.handler = lambda body: Reply(tokens=TOKENS[:5], delay=0.05)
    client = await connect(worker.ws_url)
    running = await client.add("a")
    await client.wait_for("running", running)
    await client.add("b")
    await client.add("c")
    await client.send({"type": "add", "id": "d", "query": "q", "assistant": assistant()})
    error = await client.wait_for("error")
    assert error["ref"] == "d"
    assert "the queue is full (2 jobs waiting, QUEUE_MAX)" in error["message"]
    # The jobs already accepted are untouched.
    assert (await client.job_messages(running))[-1]["type"] == "done"


async def test_oversized_frames(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(max_message_bytes=4096)
    client = await connect(worker.ws_url)
    big_query = "x" * 5000
    await client.send({"type": "add", "id": "big", "query": big_query, "assistant": assistant()})
    error = await client.recv()
    assert error["type"] == "error"
    assert "message too large" in error["message"]
    assert "the limit is 4096 (MAX_MESSAGE_BYTES)" in error["message"]
    await assert_still_serving(client)

    # Multi-byte text counts in bytes, not characters.
    await client.send(json.dumps({"type": "ping", "pad": "é" * 2500}, ensure_ascii=False))
    assert "message too large" in (await client.recv())["message"]

    # Beyond the transport's hard limit the connection is closed with 1009.
    await client.send("y" * (4 * 4096 + 1))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_binary_frames_are_refused(client: WSClient) -> None:
    await client.send(b'{"type": "ping"}')
    error = await client.recv()
    assert error == {
        "type": "error",
        "code": "bad_request",
        "message": "binary frames are not accepted: send JSON as text",
    }
    await assert_still_serving(client)


async def test_bad_input_does_not_disturb_other_clients(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=TOKENS, delay=0.01)
    good = await connect()
    job_id = await good.add()
    bad = await connect()
    for frame, _, _ in BAD_FRAMES:
        await bad.send(frame)
    for template, extra, _ in BAD_TEMPLATES:
        await bad.send({"type": "add", "query": "q", "assistant": template, **extra})
    await bad.send({"type": "listen", "job_id": "missing"})
    errors = [await bad.recv() for _ in range(len(BAD_FRAMES) + len(BAD_TEMPLATES) + 1)]
    assert all(e["type"] == "error" for e in errors)
    await bad.ws.close()  # and a dropped connection on top

    messages = await good.job_messages(job_id)
    assert messages[-1]["type"] == "done"
    assert text_of(messages) == "".join(TOKENS)
    await assert_still_serving(good)


async def test_abrupt_disconnects_mid_stream_leave_the_job_running(
    upstream: OpenAIServer, connect: ConnectClient, worker: RunningWorker
) -> None:
    upstream.handler = lambda body: Reply(tokens=TOKENS, delay=0.01)
    doomed = await connect()
    job_id = await doomed.add()
    await doomed.wait_for("running", job_id)
    doomed.ws.transport.abort()  # no closing handshake, as when a network drops
    await asyncio.sleep(0.05)
    survivor = await connect()
    await survivor.send({"type": "listen", "job_id": job_id})
    messages = await survivor.job_messages(job_id)
    assert messages[-1]["type"] == "done"
    assert text_of(messages) == "".join(TOKENS)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_a_template_nested_too_deep_is_refused_and_never_runs(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    deep = assistant(model="m", extra=nested(300))
    client = await connect()
    await client.send({"type": "add", "id": "deep", "query": "never asked", "assistant": deep})
    assert await client.recv() == {
        "type": "error",
        "code": "invalid_job",
        "message": "invalid 'add' request: field 'assistant' is nested more than 64 levels deep",
        "ref": "deep",
    }
    seed = await connect(seed=True)
    await seed.send({"type": "add", "id": "deep", "query": "never asked", "assistant": deep})
    job_id = (await seed.expect("resp_add"))["job_id"]
    assert "nested more than 64 levels" in (await seed.wait_for("failed", job_id))["message"]
    # Deeper than Python's recursion limit, and deeper than the JSON parser goes:
    # built as text, as a hostile client would (json.dumps cannot write them).
    for depth, refusal in [
        (1000, "field 'assistant' is nested more than 64 levels deep"),
        (100_000, "depth limit exceeded"),
    ]:
        settings = '{"model": "m", "deep": ' + '{"a": ' * depth + "{}" + "}" * depth + "}"
        frame = json.dumps({"type": "add", "id": "deeper", "query": "q", "assistant": deep})
        hostile = frame.replace(json.dumps(deep["streams"][0]["settings"]), settings)
        assert len(hostile) > len(frame)
        await client.send(hostile)
        reply = await client.recv()
        assert reply["type"] == "error" and refusal in reply["message"], reply
    # Settings nested as deep as real ones are (a JSON schema, say) are fine.
    _, messages = await client.run(
        request_id="ok", assistant=assistant(model="m", extra=nested(20))
    )
    assert messages[-1]["type"] == "done"
    assert [r.body["messages"][-1]["content"] for r in upstream.chat_requests] == ["Hello there"]
