"""An agent loop through a real worker on the ``anthropic`` provider, against the
loopback Messages API: the model thinks and calls two tools, the client gets typed
events and the finished message (signed thinking included), appends it and the tools'
results, and the next turn reaches the API as it wants it. And each part or setting
a client sends either reaches the API or is refused at add, naming itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from llm_worker.testing.anthropic_server import AnthropicServer, Reply, Thinking, ToolUse
from llm_worker.wire.dialects import TYPED_SUBPROTOCOL
from tests.conftest import ConnectClient, StartWorker
from tests.providers.test_anthropic_typed_parts import AGENT_SETTINGS, WEATHER
from tests.support.wsclient import WSClient, assistant

KEY = "test-anthropic-key-agent"
THINKING = AGENT_SETTINGS["thinking"]
PNG = "iVBORw0KGgo="
PDF = "JVBERi0xLjQ="


def claude(*messages: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return assistant(*messages, provider="anthropic", **{"model": "claude-test", **settings})


@pytest.fixture
async def api() -> AsyncIterator[AnthropicServer]:
    async with AnthropicServer() as server:
        yield server


async def client_of(
    start_worker: StartWorker, connect: ConnectClient, api: AnthropicServer, **kwargs: Any
) -> WSClient:
    worker = await start_worker(anthropic_api_key=KEY, anthropic_base_url=api.base_url)
    return await connect(worker.ws_url, **kwargs)


async def test_an_agent_loop_with_thinking_and_two_tool_calls_through_the_worker(
    start_worker: StartWorker, connect: ConnectClient, api: AnthropicServer
) -> None:
    api.handler = lambda body: Reply(
        blocks=[
            Thinking(["Two cities, ", "two calls."], signature="sig-7"),
            ToolUse("toolu_paris", "get_weather", ['{"ci', 'ty": ', '"Paris"}']),
            ToolUse("toolu_oslo", "get_weather", ['{"city": "O', 'slo"}']),
        ],
        tokens=["Checking."],
        stop_reason="tool_use",
    )
    client = await client_of(start_worker, connect, api, subprotocols=[TYPED_SUBPROTOCOL])
    settings = {"max_tokens": 4096, "thinking": THINKING, "tools": [WEATHER]}
    _, frames = await client.run(query="Weather in Paris and Oslo?", assistant=claude(**settings))
    reasoning = "".join(f["message"] for f in frames if f["type"] == "reasoning")
    assert reasoning == "Two cities, two calls."
    calls = [f for f in frames if f["type"] == "tool_call"]
    assert [(f["index"], f.get("id")) for f in calls if "id" in f] == [
        (0, "toolu_paris"),
        (1, "toolu_oslo"),
    ]
    done = frames[-1]
    assert (done["type"], done["finish_reason"]) == ("done", "tool_calls")
    message = done["message"]
    assert message["reasoning_details"] == [
        {"type": "thinking", "thinking": "Two cities, two calls.", "signature": "sig-7"}
    ]
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == [
        '{"city": "Paris"}',
        '{"city": "Oslo"}',
    ]

    history = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        message,
        {"role": "tool", "tool_call_id": "toolu_paris", "content": "11 C"},
        {"role": "tool", "tool_call_id": "toolu_oslo", "content": "-3 C"},
    ]
    api.handler = lambda body: Reply(tokens=["Paris ", "is ", "warmer."])
    second = claude({"insert": "history"}, **settings)
    _, frames = await client.run(query="", history=history, assistant=second)
    assert frames[-1]["type"] == "done", frames[-1]
    assert frames[-1]["message"] == {"role": "assistant", "content": "Paris is warmer."}
    sent = api.message_requests[-1].body["messages"]
    assert sent[1]["content"][0] == message["reasoning_details"][0]
    assert [b["id"] for b in sent[1]["content"] if b["type"] == "tool_use"] == [
        "toolu_paris",
        "toolu_oslo",
    ]
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_paris", "content": "11 C"},
        {"type": "tool_result", "tool_use_id": "toolu_oslo", "content": "-3 C"},
    ]


async def test_parts_the_api_takes_reach_it_as_blocks(
    start_worker: StartWorker, connect: ConnectClient, api: AnthropicServer
) -> None:
    client = await client_of(start_worker, connect, api)
    history = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "See these."},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}"}},
            ],
        }
    ]
    _, frames = await client.run(query="Well?", history=history, assistant=claude())
    assert frames[-1]["type"] == "done", frames[-1]
    (request,) = api.message_requests
    assert request.body["messages"][0]["content"] == [
        {"type": "text", "text": "See these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
        },
        {"type": "text", "text": "Well?"},
    ]


@pytest.mark.parametrize(
    ("part", "named"),
    [
        ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
         "history[0].content[1]: provider 'anthropic' cannot take 'input_audio' parts"),
        ({"type": "file", "file": {"file_id": "file-abc"}},
         "history[0].content[1].file.file_id: provider 'anthropic' cannot take file ids"),
        ({"type": "file", "file": {"file_data": "data:text/csv;base64,YQ=="}},
         "history[0].content[1].file.file_data: provider 'anthropic' cannot take 'text/csv'"),
        ({"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}},
         "history[0].content[1].image_url.detail: provider 'anthropic' cannot take 'low'"),
    ],
)  # fmt: skip
async def test_a_part_the_api_cannot_take_is_refused_at_add_naming_it(
    start_worker: StartWorker,
    connect: ConnectClient,
    api: AnthropicServer,
    part: dict[str, Any],
    named: str,
) -> None:
    client = await client_of(start_worker, connect, api)
    history = [{"role": "user", "content": [{"type": "text", "text": "see"}, part]}]
    await client.send(
        {"type": "add", "id": "a", "query": "q", "history": history, "assistant": claude()}
    )
    error = await client.expect("error")
    assert error["code"] == "invalid_job"
    assert named in error["message"], error["message"]
    assert api.message_requests == []


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"tool_choice": "sometimes"}, "settings.tool_choice must be 'auto', 'required'"),
        ({"tools": [{"type": "function", "function": {"name": "f", "examples": []}}]},
         "settings.tools[0].function.examples: the API has no place for it"),
        ({"thinking": THINKING}, "settings.thinking.budget_tokens must be at least 1024 and "
                                 "less than max_tokens (1024)"),
        ({"response_format": {"type": "json_object"}},
         "settings.response_format is not a setting of provider 'anthropic'"),
    ],
)  # fmt: skip
async def test_a_setting_the_api_cannot_take_is_refused_at_add_naming_it(
    start_worker: StartWorker,
    connect: ConnectClient,
    api: AnthropicServer,
    settings: dict[str, Any],
    named: str,
) -> None:
    client = await client_of(start_worker, connect, api)
    await client.send({"type": "add", "id": "a", "query": "q", "assistant": claude(**settings)})
    error = await client.expect("error")
    assert named in error["message"], error["message"]
    assert api.message_requests == []
