"""Typed events end to end: a real worker, its ``openai`` provider pointed at the loopback
server streaming reasoning and tool calls, and the Python client and the command line
in front. An agent loop runs two turns; a connection cut in the middle of the arguments
loses and repeats nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from llm_worker.client import (
    Client,
    Done,
    Event,
    Reasoning,
    Started,
    SyncClient,
    TextDelta,
    ToolCallDelta,
)
from llm_worker.testing.openai_server import OpenAIServer, Reply, ScriptedCall
from llm_worker.wire.dialects import SUBPROTOCOL
from tests.client.test_cli_client import cli
from tests.conftest import RunningWorker
from tests.support import openai_schema
from tests.support.tcp_proxy import CuttingProxy

WEATHER = '{"city": "Paris", "unit": "celsius"}'
TIME = '{"timezone": "Europe/Paris"}'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} of a place",
            "parameters": {"type": "object", "properties": {key: {"type": "string"}}},
        },
    }
    for name, key in [("get_weather", "city"), ("get_time", "timezone")]
]
AGENT = {
    "streams": [
        {
            "provider": "openai",
            "settings": {"model": "gpt-test", "tools": TOOLS},
            "messages": [{"role": "system", "content": "You are an agent."}, {"insert": "history"}],
        }
    ]
}
CALLS = [
    {"id": "call_a", "type": "function",
     "function": {"name": "get_weather", "arguments": WEATHER}},
    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": TIME}},
]  # fmt: skip
TOOL_RESULTS = {"get_weather": "18 C, sunny", "get_time": "12:00"}


def model(delay: float = 0.0) -> Any:
    """The model of the loop: two parallel calls, their arguments in many small chunks,
    after some reasoning; once it has their results, the answer."""

    def reply(body: dict[str, Any]) -> Reply:
        if any(message["role"] == "tool" for message in body["messages"]):
            return Reply(tokens=["Sunny,", " and noon."])
        return Reply(
            reasoning=["Two questions: ", "two tools."],
            tool_calls=[
                ScriptedCall("call_a", "get_weather", WEATHER, piece=3),
                ScriptedCall("call_b", "get_time", TIME, piece=2),
            ],
            delay=delay,
        )

    return reply


def arguments_by_call(events: list[Event]) -> dict[int, str]:
    joined: dict[int, str] = {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            joined[event.index] = joined.get(event.index, "") + event.arguments
    return joined


async def test_an_agent_loop_runs_two_turns(worker: RunningWorker, upstream: OpenAIServer) -> None:
    upstream.handler = model(delay=0.005)
    history: list[dict[str, Any]] = [{"role": "user", "content": "Weather and time in Paris?"}]
    async with Client(worker.ws_url) as client:
        assert client.protocol == "llm-worker.v3"
        job = await client.submit("", AGENT, history)
        events = [event async for event in job]
        result = await job.result()
        # Typed events, in the model's order: reasoning, then each call's fragments.
        assert isinstance(events[0], Started) and isinstance(events[-1], Done)
        thoughts = "".join(e.text for e in events if isinstance(e, Reasoning))
        assert thoughts == "Two questions: two tools."
        fragments = [e for e in events if isinstance(e, ToolCallDelta)]
        assert len(fragments) > 4, fragments  # the arguments came in many frames
        starts = [(e.index, e.id, e.name) for e in fragments if e.id is not None]
        assert starts == [(0, "call_a", "get_weather"), (1, "call_b", "get_time")]
        assert arguments_by_call(events) == {0: WEATHER, 1: TIME}
        assert not any(isinstance(e, TextDelta) for e in events)
        # The message done carries, and the one the client put together, are one.
        assert result.message == events[-1].message
        assert result.message == {
            "role": "assistant",
            "content": None,
            "tool_calls": CALLS,
            "reasoning": "Two questions: two tools.",
        }
        assert (result.tool_calls, result.finish_reason, result.text) == (CALLS, "tool_calls", "")

        history.append(result.message)
        for call in result.tool_calls:
            output = TOOL_RESULTS[call["function"]["name"]]
            history.append({"role": "tool", "tool_call_id": call["id"], "content": output})
        answer = await (await client.submit("", AGENT, history)).result()
    assert answer.text == "Sunny, and noon." and answer.tool_calls == []
    assert answer.message == {"role": "assistant", "content": "Sunny, and noon."}

    first, second = (request.body for request in upstream.chat_requests)
    assert first["tools"] == TOOLS
    # The history the model gets back is one the real OpenAI API accepts: the calls
    # with their whole arguments, each answered by its tool_call_id.
    assert openai_schema.errors("CreateChatCompletionRequest", second) == []
    sent_back = second["messages"][2]
    assert (sent_back["content"], sent_back["tool_calls"]) == (None, CALLS)
    assert [(m["role"], m.get("tool_call_id")) for m in second["messages"][3:]] == [
        ("tool", "call_a"),
        ("tool", "call_b"),
    ]


async def test_a_cut_in_the_middle_of_the_arguments_gives_them_once(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = model(delay=0.02)
    history = [{"role": "user", "content": "Weather and time in Paris?"}]
    async with CuttingProxy(worker.port) as proxy, Client(proxy.url) as client:
        job = await client.submit("", AGENT, history)
        events: list[Event] = []
        cuts = 0
        async for event in job:
            events.append(event)
            arguments = job.tool_calls[-1]["function"]["arguments"] if job.tool_calls else ""
            # Once in the first call's arguments, once in the second's.
            if isinstance(event, ToolCallDelta) and event.index == cuts and arguments:
                assert proxy.cut() == 1
                cuts += 1
        assert cuts == 2 and proxy.accepted >= 3
    assert arguments_by_call(events) == {0: WEATHER, 1: TIME}
    assert job.tool_calls == CALLS


async def test_the_sync_client_gives_the_result(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = model()
    history = [{"role": "user", "content": "Weather and time in Paris?"}]

    def use_it() -> tuple[list[dict[str, Any]], Any]:
        with SyncClient(worker.http_url) as client:
            job = client.submit("", AGENT, history)
            next(iter(job))
            return job.tool_calls, job.result()

    early, result = await asyncio.to_thread(use_it)
    assert early == []  # read the first event only: no call yet
    assert result.tool_calls == CALLS


async def test_the_command_line_shows_reasoning_and_tool_calls(
    worker: RunningWorker, upstream: OpenAIServer, tmp_path: Any
) -> None:
    upstream.handler = model()
    template = tmp_path / "agent.json"
    template.write_text(json.dumps(AGENT))
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"role": "user", "content": "Weather and time in Paris?"}]))
    files = ("--assistant", str(template), "--history", str(history))
    plain = await cli(worker, "submit", "", *files)
    assert plain.code == 0, plain
    assert plain.stdout == ""
    assert plain.stderr.splitlines()[1:] == [
        "reasoning: Two questions: two tools.",
        f"tool call get_weather({WEATHER})",
        f"tool call get_time({TIME})",
    ]
    as_json = await cli(worker, "submit", "", *files, "--json")
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    kinds = {line["type"] for line in lines}
    assert {"submitted", "started", "reasoning", "tool_call", "done"} == kinds
    assert lines[-1]["message"]["tool_calls"] == CALLS


async def test_a_service_that_speaks_only_v2_is_spoken_to_in_v2() -> None:
    """An older service takes ``llm-worker.v2`` of what the client offers: text only,
    ``done`` without a message; the client puts the message together from the text."""

    async def older_service(ws: ServerConnection) -> None:
        add = json.loads(await ws.recv())
        for frame in [
            {"type": "resp_add", "id": add["id"], "job_id": "j1"},
            {"type": "running", "job_id": "j1", "message": "", "seq": 1},
            {"type": "running", "job_id": "j1", "message": "Bonjour", "seq": 2},
            {"type": "done", "job_id": "j1", "seq": 3, "finish_reason": "stop"},
        ]:
            await ws.send(json.dumps(frame))
        await ws.wait_closed()

    async with serve(older_service, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
        port = server.sockets[0].getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}/ws/") as client:
            assert client.protocol == "llm-worker.v2"
            job = await client.submit("hi", AGENT)
            events = [event async for event in job]
    assert events[-1] == Done(3, finish_reason="stop")
    assert not any(isinstance(e, Reasoning | ToolCallDelta) for e in events)
    assert job.message == {"role": "assistant", "content": "Bonjour"}
