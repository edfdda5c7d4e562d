"""Typed events over a real server: tool calls, reasoning and refusals relayed to the
listeners that ask (``llm-worker.v3``, ``?events=typed``), and left out, byte for
byte, for those that do not (seed, v2); the next turn's history sent upstream as
OpenAI's own schema accepts it."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_worker.testing.openai_server import OpenAIServer, Reply, ScriptedCall
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.wire.dialects import TYPED_SUBPROTOCOL
from tests.conftest import ConnectClient, RunningWorker, StartWorker
from tests.support.openai_schema import errors as openai_schema_errors
from tests.support.sse import events
from tests.support.wsclient import WSClient, assistant

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
PARIS = json.dumps({"city": "Paris", "unit": "celsius", "days": [1, 2, 3]})
OSLO = json.dumps({"city": "Oslo", "unit": "celsius", "note": 'brace } and quote " inside'})


def agent_reply(delay: float = 0.0) -> Reply:
    """A model that thinks, says a few words, then calls two tools in parallel, the
    arguments of each in fragments of 3 characters."""
    return Reply(
        reasoning=["The user ", "asks about ", "two cities."],
        tokens=["Checking ", "both."],
        tool_calls=[
            ScriptedCall("call_paris", "get_weather", PARIS, piece=3),
            ScriptedCall("call_oslo", "get_weather", OSLO, piece=3),
        ],
        usage_details={
            "prompt_tokens_details": {"cached_tokens": 2},
            "completion_tokens_details": {"reasoning_tokens": 3},
        },
        delay=delay,
    )


def agent_template() -> dict[str, Any]:
    return assistant(tools=[WEATHER_TOOL], tool_choice="auto")


async def typed_client(connect: ConnectClient) -> WSClient:
    client = await connect(subprotocols=[TYPED_SUBPROTOCOL])
    assert client.ws.subprotocol == TYPED_SUBPROTOCOL
    return client


def calls_from_fragments(frames: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """The tool calls a client puts together from ``tool_call`` frames."""
    calls: dict[int, dict[str, str]] = {}
    for frame in frames:
        if frame["type"] != "tool_call":
            continue
        call = calls.setdefault(frame["index"], {"id": "", "name": "", "arguments": ""})
        call["id"] = frame.get("id", call["id"])
        call["name"] = frame.get("name", call["name"])
        call["arguments"] += frame["arguments"]
    return calls


async def test_an_agent_loop_runs_two_turns_over_typed_events(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: agent_reply()
    client = await typed_client(connect)
    _, frames = await client.run(query="Weather in Paris and Oslo?", assistant=agent_template())
    kinds = [frame["type"] for frame in frames]
    assert {"reasoning", "tool_call", "running", "done"} <= set(kinds), kinds
    reasoning = "".join(f["message"] for f in frames if f["type"] == "reasoning")
    assert reasoning == "The user asks about two cities."
    calls = calls_from_fragments(frames)
    assert calls == {
        0: {"id": "call_paris", "name": "get_weather", "arguments": PARIS},
        1: {"id": "call_oslo", "name": "get_weather", "arguments": OSLO},
    }
    done = frames[-1]
    assert done["finish_reason"] == "tool_calls"
    message = done["message"]
    assert message == {
        "role": "assistant",
        "content": "Checking both.",
        "tool_calls": [
            {
                "id": "call_paris",
                "type": "function",
                "function": {"name": "get_weather", "arguments": PARIS},
            },
            {
                "id": "call_oslo",
                "type": "function",
                "function": {"name": "get_weather", "arguments": OSLO},
            },
        ],
        "reasoning": "The user asks about two cities.",
    }
    assert done["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    assert done["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}
    first_request = upstream.chat_requests[-1].body
    assert first_request["tools"] == [WEATHER_TOOL]
    assert first_request["tool_choice"] == "auto"

    # The next turn: the message as done gave it, then each call's result.
    history = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        message,
        {"role": "tool", "tool_call_id": "call_paris", "content": '{"temp": 11}'},
        {"role": "tool", "tool_call_id": "call_oslo", "content": '{"temp": -3}'},
    ]
    upstream.handler = lambda body: Reply(tokens=["Paris 11°C, ", "Oslo -3°C."])
    second = assistant(
        {"role": "system", "content": "You are a helpful assistant."},
        {"insert": "history"},
        tools=[WEATHER_TOOL],
    )
    _, frames = await client.run(query="", history=history, assistant=second)
    assert frames[-1]["type"] == "done", frames[-1]
    assert frames[-1]["message"] == {"role": "assistant", "content": "Paris 11°C, Oslo -3°C."}
    sent = upstream.chat_requests[-1].body
    assert openai_schema_errors("CreateChatCompletionRequest", sent) == []
    assert sent["messages"][2] == {
        "role": "assistant",
        "content": "Checking both.",
        "tool_calls": message["tool_calls"],
    }
    assert [m.get("tool_call_id") for m in sent["messages"][3:]] == ["call_paris", "call_oslo"]


async def test_seed_and_v2_listeners_see_the_text_alone_byte_for_byte(
    upstream: OpenAIServer, connect: ConnectClient, worker: RunningWorker
) -> None:
    upstream.handler = lambda body: agent_reply()
    typed = await typed_client(connect)
    job_id, _ = await typed.run(assistant=agent_template())
    for client in (await connect(seed=True), await connect()):
        await client.send({"type": "listen", "job_id": job_id})
        raw = [await client.ws.recv() for _ in range(3)]
        frames = [json.loads(text) for text in raw]
        assert [f["type"] for f in frames] == ["running", "running", "done"], frames
        assert frames[1]["message"] == "Checking both."
        done = frames[2]
        assert set(done) == {"type", "job_id", "seq", "usage", "finish_reason", "providers"}
        assert set(done["usage"]) == {
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "streams",
        }
        assert set(done["usage"]["streams"][0]) == {
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        }
        assert done["finish_reason"] == "tool_calls"


async def test_a_seed_client_of_a_tool_call_only_reply_sees_an_empty_answer(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(
        tokens=[], tool_calls=[ScriptedCall("call_1", "get_weather", PARIS)]
    )
    seed = await connect(seed=True)
    _, frames = await seed.run(assistant=agent_template())
    assert [f["type"] for f in frames] == ["running", "done"], frames
    assert all(f.get("message", "") == "" for f in frames)


async def test_resuming_after_any_event_gives_each_call_exactly_once(
    upstream: OpenAIServer, connect: ConnectClient, worker: RunningWorker
) -> None:
    """A listener that had the log up to any event, mid-arguments included, and listens
    again after it: what it had and what it gets make each call exactly once."""
    upstream.handler = lambda body: agent_reply()
    client = await typed_client(connect)
    job_id, _ = await client.run(assistant=agent_template())
    log = await worker.app.state.store.read(job_id)
    fragments = [event for event in log if event.kind.value == "tool_call"]
    assert len(fragments) > 2 * 10  # arguments of ~50 characters in pieces of 3
    had: list[dict[str, Any]] = []
    for event in log[:-1]:
        if event.kind.value == "tool_call":
            had.append({"type": "tool_call", **json.loads(event.message)})
        await client.send({"type": "listen", "job_id": job_id, "after": event.seq})
        rest = await client.job_messages(job_id)
        calls = calls_from_fragments(had + rest)
        assert calls == {
            0: {"id": "call_paris", "name": "get_weather", "arguments": PARIS},
            1: {"id": "call_oslo", "name": "get_weather", "arguments": OSLO},
        }, event.seq


async def test_the_event_stream_and_status_are_typed_when_asked(
    upstream: OpenAIServer, connect: ConnectClient, worker: RunningWorker
) -> None:
    upstream.handler = lambda body: agent_reply()
    client = await typed_client(connect)
    job_id, _ = await client.run(assistant=agent_template())
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        typed = await http.get(f"/v1/jobs/{job_id}/events", params={"events": "typed"})
        plain = await http.get(f"/v1/jobs/{job_id}/events")
        status_typed = (await http.get(f"/v1/jobs/{job_id}", params={"events": "typed"})).json()
        status_plain = (await http.get(f"/v1/jobs/{job_id}")).json()
        refused = await http.get(f"/v1/jobs/{job_id}/events", params={"events": "all"})
    typed_types = [line[7:] for line in typed.text.splitlines() if line.startswith("event: ")]
    plain_types = [line[7:] for line in plain.text.splitlines() if line.startswith("event: ")]
    assert "tool_call" in typed_types and "reasoning" in typed_types
    assert plain_types == ["running", "running", "done"]
    assert status_typed["message"]["tool_calls"][1]["function"]["arguments"] == OSLO
    assert "message" not in status_plain
    assert status_plain["output"] == status_typed["output"] == "Checking both."
    assert refused.status_code == 400
    assert refused.json()["code"] == "bad_request"
    assert "events must be 'text' or 'typed'" in refused.json()["message"]


async def test_a_refusal_is_told_as_such(upstream: OpenAIServer, connect: ConnectClient) -> None:
    upstream.handler = lambda body: Reply(tokens=[], refusal=["I can't ", "help with that."])
    client = await typed_client(connect)
    _, frames = await client.run()
    refusals = [f for f in frames if f["type"] == "refusal"]
    assert "".join(f["message"] for f in refusals) == "I can't help with that."
    assert frames[-1]["message"] == {
        "role": "assistant",
        "content": "",
        "refusal": "I can't help with that.",
    }


IMAGE_URL = "https://example.com/cat.png"
DATA_URL = "data:image/png;base64," + "iVBORw0KGgo" * 50


async def test_images_reach_the_upstream_unchanged(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=["A cat."])
    history = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these? {query}"},
                {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": DATA_URL}},
            ],
        }
    ]
    client = await typed_client(connect)
    _, frames = await client.run(query="unused", history=history)
    assert frames[-1]["type"] == "done", frames[-1]
    sent = upstream.chat_requests[-1].body
    assert sent["messages"][1] == history[0]  # history is never rendered
    assert openai_schema_errors("CreateChatCompletionRequest", sent) == []


async def test_placeholders_render_in_a_templates_text_parts_only(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=["ok"])
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Describe {query}"},
            {"type": "image_url", "image_url": {"url": "https://example.com/{query}.png"}},
        ],
    }
    client = await typed_client(connect)
    _, frames = await client.run(query="the cat", assistant=assistant(message))
    assert frames[-1]["type"] == "done", frames[-1]
    assert upstream.chat_requests[-1].body["messages"][0]["content"] == [
        {"type": "text", "text": "Describe the cat"},
        {"type": "image_url", "image_url": {"url": "https://example.com/{query}.png"}},
    ]


@pytest.mark.parametrize(
    ("part", "named"),
    [
        (
            {"type": "image_url", "image_url": {"url": IMAGE_URL}},
            "history[0].content[1]: provider 'echo' takes text only, not 'image_url' parts",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            "history[0].content[1]: provider 'echo' takes text only, not 'input_audio' parts",
        ),
        (
            {"type": "video_url", "video_url": {"url": IMAGE_URL}},
            "field 'history[0]': content[1] is not a part of a known type",
        ),
    ],
)
async def test_a_part_a_provider_cannot_send_is_refused_naming_it(
    connect: ConnectClient, start_worker: StartWorker, part: dict[str, Any], named: str
) -> None:
    history = [{"role": "user", "content": [{"type": "text", "text": "see"}, part]}]
    worker = await start_worker(echo_provider="on")
    client = await connect(worker.ws_url, subprotocols=[TYPED_SUBPROTOCOL])
    await client.send(
        {
            "type": "add",
            "id": "a",
            "query": "q",
            "history": history,
            "assistant": assistant(provider="echo"),
        }
    )
    error = await client.expect("error")
    assert error["code"] == "invalid_job"
    assert named in error["message"], error["message"]


async def test_tool_calls_in_history_are_refused_by_a_provider_without_tools(
    connect: ConnectClient, start_worker: StartWorker
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    worker = await start_worker(echo_provider="on")
    client = await connect(worker.ws_url, subprotocols=[TYPED_SUBPROTOCOL])
    await client.send(
        {
            "type": "add",
            "id": "a",
            "query": "q",
            "history": history,
            "assistant": assistant(provider="echo"),
        }
    )
    error = await client.expect("error")
    assert "history[0].tool_calls: provider 'echo' cannot take tool calls" in error["message"]


async def test_a_worker_killed_mid_arguments_gives_each_call_once_after_the_reset(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    """kill -9 while a call's arguments stream: the typed stream resumed on the restarted
    worker says ``reset``, then the new attempt gives the whole call; a client that drops
    what it had on ``reset`` holds each argument exactly once, and done's message too."""
    upstream.handler = lambda body: Reply(
        tokens=[],
        tool_calls=[ScriptedCall("call_paris", "get_weather", PARIS, piece=2)],
        delay=0.05,
    )
    env = clean_env(
        LISTEN_PORT="0", STORE_URL="sqlite:///jobs.db", OPENAI_API_KEY="k",
        OPENAI_BASE_URL=upstream.base_url,
    )  # fmt: skip
    body = {"query": "q", "assistant": agent_template()}
    async with processes() as started:
        first = await WorkerProcess.start(env, tmp_path)
        started.append(first)
        before: list[dict[str, Any]] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.port}") as http:
            job_id = (await http.post("/v1/jobs", json=body)).json()["job_id"]
            with contextlib.suppress(httpx.HTTPError):
                async for event in events(http, job_id, events="typed"):
                    before.append(event)
                    if len(before) == 6:
                        first.kill()  # mid-arguments
        await first.process.wait()
        assert [e["data"]["type"] for e in before[1:6]] == ["tool_call"] * 5
        second = await WorkerProcess.start(env, tmp_path)
        started.append(second)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{second.port}") as http:
            headers = {"Last-Event-ID": before[-1]["id"]}
            rest = [e async for e in events(http, job_id, headers, events="typed")]
    frames = [e["data"] for e in before] + [e["data"] for e in rest]
    assert rest[0]["data"]["type"] == "reset"
    kept: list[dict[str, Any]] = []
    for frame in frames:  # as a client keeps them: a reset voids what the attempt sent
        kept = [] if frame["type"] == "reset" else [*kept, frame]
    calls = calls_from_fragments(kept)
    assert calls == {0: {"id": "call_paris", "name": "get_weather", "arguments": PARIS}}
    done = frames[-1]
    assert done["type"] == "done"
    assert done["message"]["tool_calls"][0]["function"]["arguments"] == PARIS
