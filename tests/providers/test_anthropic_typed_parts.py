"""The ``anthropic`` provider's typed parts: its reader of the Messages API's events,
pure (thinking with its signature, redacted thinking, tool calls numbered in order,
their argument fragments, stop reasons, cached tokens, error codes), and the real
provider over HTTP against the loopback server: a two-turn agent loop with thinking
and two tool calls, images and documents as blocks, errors with their codes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.parts import Answer, Part, Reasoning, ToolCallDelta
from llm_worker.providers.anthropic import AnthropicClients, AnthropicProvider, MessageEvents
from llm_worker.providers.base import CallEnd, ProviderError
from llm_worker.providers.http_replies import ReplyProblem
from llm_worker.testing.anthropic_server import (
    AnthropicServer,
    RedactedThinking,
    Reply,
    Thinking,
    ToolUse,
)

KEY = "test-anthropic-key-typed"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
AGENT_SETTINGS = {
    "model": "claude-test",
    "max_tokens": 4096,
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "tools": [WEATHER],
    "tool_choice": "auto",
}


def event(kind: str, **fields: Any) -> str:
    return orjson.dumps({"type": kind, **fields}).decode()


def read_all(reader: MessageEvents, events: Sequence[str]) -> list[Part]:
    """Every part the events make, text as ``str``, in order."""
    parts: list[Part] = []
    for data in events:
        said = reader.read(data)
        if isinstance(said, str):
            parts.append(said)
        elif said:
            parts.extend(said)
    return parts


def assembled(parts: Sequence[Part]) -> dict[str, Any]:
    """The assistant message the parts make, as the worker puts it together."""
    answer = Answer()
    for part in parts:
        answer.add(part)
    return answer.message()


# -- the reader, pure -----------------------------------------------------------------


def start(index: int, **block: Any) -> str:
    return event("content_block_start", index=index, content_block=block)


def delta(index: int, **fields: Any) -> str:
    return event("content_block_delta", index=index, delta=fields)


def stop(index: int) -> str:
    return event("content_block_stop", index=index)


def test_every_block_and_delta_becomes_its_part() -> None:
    usage = {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 80}
    events = [
        event("message_start", message={"usage": usage}),
        start(0, type="thinking", thinking="", signature=""),
        delta(0, type="thinking_delta", thinking="Two cities, "),
        delta(0, type="thinking_delta", thinking="two calls."),
        delta(0, type="signature_delta", signature="sig-1"),
        stop(0),
        start(1, type="redacted_thinking", data="opaque=="),
        stop(1),
        start(2, type="text", text=""),
        delta(2, type="text_delta", text="Looking"),
        delta(2, type="citations_delta", citation={}),  # not text
        stop(2),
        start(3, type="tool_use", id="toolu_a", name="get_weather", input={}),
        delta(3, type="input_json_delta", partial_json=""),
        delta(3, type="input_json_delta", partial_json='{"city": '),
        delta(3, type="input_json_delta", partial_json='"Paris"}'),
        stop(3),
        start(4, type="tool_use", id="toolu_b", name="now", input={}),
        stop(4),  # no input deltas: the call takes no arguments
        event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 42}),
        event("message_stop"),
    ]
    reader = MessageEvents()
    parts = read_all(reader, events)
    assert parts == [
        Reasoning("Two cities, "),
        Reasoning("two calls."),
        Reasoning(signature="sig-1"),
        Reasoning(redacted="opaque=="),
        "Looking",
        # Numbered by the order calls come, not by the block's index (3, 4).
        ToolCallDelta(0, "toolu_a", "get_weather", ""),
        ToolCallDelta(0, arguments='{"city": '),
        ToolCallDelta(0, arguments='"Paris"}'),
        ToolCallDelta(1, "toolu_b", "now", ""),
        ToolCallDelta(1, arguments="{}"),
    ]
    assert reader.finished and reader.whole
    # The prompt's tokens count those written to the cache and read from it.
    assert reader.end() == CallEnd("tool_calls", 95, 42, cached_tokens=80)
    assert assembled(parts) == {
        "role": "assistant",
        "content": "Looking",
        "tool_calls": [
            {"id": "toolu_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_b", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ],
        "reasoning": "Two cities, two calls.",
        "reasoning_details": [
            {"type": "thinking", "thinking": "Two cities, two calls.", "signature": "sig-1"},
            {"type": "redacted_thinking", "data": "opaque=="},
        ],
    }  # fmt: skip


def test_a_tool_use_whose_start_carries_its_input_needs_no_deltas() -> None:
    parts = read_all(
        MessageEvents(),
        [start(0, type="tool_use", id="t", name="f", input={"a": 1}), stop(0)],
    )
    assert parts == [ToolCallDelta(0, "t", "f", '{"a":1}')]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("pause_turn", "pause_turn"),  # none of OpenAI's words means it: as it is
    ],
)
def test_stop_reasons_in_the_words_of_the_worker(stop_reason: str, finish_reason: str) -> None:
    reader = MessageEvents()
    read_all(reader, [event("message_delta", delta={"stop_reason": stop_reason})])
    assert reader.end().finish_reason == finish_reason


@pytest.mark.parametrize(
    ("error", "said", "code", "retryable"),
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, "Overloaded", "overloaded_error",
         True),
        ({"type": "invalid_request_error", "message": "bad"}, "bad", "invalid_request_error",
         False),
        ({"message": "odd"}, "odd", None, False),
        ({}, "no details given", None, False),
    ],
)  # fmt: skip
def test_an_error_event_keeps_its_type_as_the_code(
    error: dict[str, str], said: str, code: str | None, retryable: bool
) -> None:
    with pytest.raises(ReplyProblem) as raised:
        MessageEvents().read(event("error", error=error))
    problem = raised.value
    assert problem.said == f"reported an error during the reply: {said}"
    assert (problem.code, problem.retryable) == (code, retryable)


# -- the provider over HTTP ---------------------------------------------------------


@pytest.fixture
async def api() -> AsyncIterator[AnthropicServer]:
    async with AnthropicServer() as server:
        yield server


@pytest.fixture
async def provider(api: AnthropicServer) -> AsyncIterator[AnthropicProvider]:
    clients = AnthropicClients(timeout=5, connect_timeout=5, max_connections=2)
    yield AnthropicProvider("claude", clients=clients, base_url=api.base_url, api_key=KEY)
    await clients.aclose()


async def call(
    provider: AnthropicProvider, messages: list[ChatMessage], settings: dict[str, Any]
) -> tuple[list[Part], CallEnd]:
    """Check the messages and settings as at add, then stream: the parts and the end."""
    provider.check_settings(settings)
    for number, message in enumerate(messages):
        provider.check_message(message, f"history[{number}]", provider.name)
    parts: list[Part] = []
    end = None
    async for item in provider.stream(messages, settings):
        if isinstance(item, CallEnd):
            end = item
        else:
            parts.append(item)  # type: ignore[arg-type]
    assert end is not None
    return parts, end


def user(content: Any) -> ChatMessage:
    return ChatMessage(role="user", content=content)


async def test_an_agent_loop_of_two_turns_with_thinking_and_two_tool_calls(
    api: AnthropicServer, provider: AnthropicProvider
) -> None:
    api.handler = lambda body: Reply(
        blocks=[
            Thinking(["The user asks for ", "two cities."], signature="sig-42"),
            ToolUse("toolu_paris", "get_weather", ['{"ci', 'ty": "Pa', 'ris"}']),
            ToolUse("toolu_oslo", "get_weather", ["{", '"city"', ': "Oslo"', "}"]),
        ],
        tokens=["Checking", " both."],
        stop_reason="tool_use",
    )
    history = [user("Weather in Paris and Oslo?")]
    parts, end = await call(provider, history, AGENT_SETTINGS)
    assert end.finish_reason == "tool_calls"
    said = assembled(parts)
    assert [call["function"]["arguments"] for call in said["tool_calls"]] == [
        '{"city": "Paris"}',
        '{"city": "Oslo"}',
    ]
    first = api.message_requests[0].body
    assert first["thinking"] == AGENT_SETTINGS["thinking"]
    assert first["tools"] == [{"name": "get_weather",
                               "input_schema": WEATHER["function"]["parameters"]}]  # fmt: skip
    assert first["tool_choice"] == {"type": "auto"}

    # Turn 2: the answer and the tools' results appended, as a client would.
    history += [
        ChatMessage.model_validate(said),
        ChatMessage(role="tool", tool_call_id="toolu_paris", content="18 C, sunny"),
        ChatMessage(role="tool", tool_call_id="toolu_oslo", content="-2 C, snow"),
    ]
    api.handler = lambda body: Reply(tokens=["Paris", " is", " warmer."])
    parts, end = await call(provider, history, AGENT_SETTINGS)
    assert (parts, end.finish_reason) == (["Paris", " is", " warmer."], "stop")
    sent = api.message_requests[1].body["messages"]
    assert sent == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "The user asks for two cities.",
                 "signature": "sig-42"},
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "toolu_paris", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_oslo", "name": "get_weather",
                 "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_paris", "content": "18 C, sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_oslo", "content": "-2 C, snow"},
            ],
        },
    ]  # fmt: skip


async def test_the_loopback_api_refuses_a_turn_that_lost_its_thinking_or_a_result(
    api: AnthropicServer, provider: AnthropicProvider
) -> None:
    """What makes the agent loop's test worth passing: the server refuses, as the API
    does, a second turn without the signed thinking or without a tool's result."""
    asked = ChatMessage.model_validate(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "toolu_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"}}],
        }
    )  # fmt: skip
    answered = ChatMessage(role="tool", tool_call_id="toolu_1", content="18 C")
    cases = [
        ([user("Weather?"), asked, answered], "must start with a thinking block"),
        ([user("Weather?"), asked, user("well?")], "`tool_use` ids were found without"),
    ]
    for history, problem in cases:
        with pytest.raises(ProviderError) as raised:
            await call(provider, history, AGENT_SETTINGS)
        assert problem in raised.value.message
        assert raised.value.code == "invalid_request_error"


async def test_redacted_thinking_goes_back_as_it_came(
    api: AnthropicServer, provider: AnthropicProvider
) -> None:
    api.handler = lambda body: Reply(
        blocks=[RedactedThinking("EmwKAhgB=="), ToolUse("toolu_t", "now")],
        stop_reason="tool_use",
    )
    parts, _ = await call(provider, [user("Time?")], AGENT_SETTINGS)
    assert parts == [
        Reasoning(redacted="EmwKAhgB=="),
        ToolCallDelta(0, "toolu_t", "now", ""),
        ToolCallDelta(0, arguments="{}"),
    ]
    history = [
        user("Time?"),
        ChatMessage.model_validate(assembled(parts)),
        ChatMessage(role="tool", tool_call_id="toolu_t", content="noon"),
    ]
    api.handler = lambda body: Reply(tokens=["Noon."])
    await call(provider, history, AGENT_SETTINGS)
    assistant = api.message_requests[1].body["messages"][1]
    assert assistant["content"] == [
        {"type": "redacted_thinking", "data": "EmwKAhgB=="},
        {"type": "tool_use", "id": "toolu_t", "name": "now", "input": {}},
    ]


async def test_images_and_documents_reach_the_api_as_blocks(
    api: AnthropicServer, provider: AnthropicProvider
) -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
    pdf = "JVBERi0xLjQKJcfsj6IK"
    question = user(
        [
            {"type": "text", "text": "Compare these."},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{pdf}"}},
        ]
    )
    await call(provider, [question], {"model": "claude-test"})
    (request,) = api.message_requests
    assert request.body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare these."},
                {"type": "image",
                 "source": {"type": "base64", "media_type": "image/png", "data": png}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "document",
                 "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}},
            ],
        }
    ]  # fmt: skip


async def test_a_refusal_ends_as_content_filter(
    api: AnthropicServer, provider: AnthropicProvider
) -> None:
    api.handler = lambda body: Reply(tokens=["I can't"], stop_reason="refusal")
    parts, end = await call(provider, [user("Something bad")], {"model": "claude-test"})
    assert (parts, end.finish_reason) == (["I can't"], "content_filter")


async def test_errors_carry_the_api_error_type_as_their_code(
    api: AnthropicServer, provider: AnthropicProvider
) -> None:
    overloaded = {"type": "overloaded_error", "message": "Overloaded"}
    api.handler = lambda body: Reply(tokens=["a", "b"], stream_error=overloaded, error_after=1)
    with pytest.raises(ProviderError) as raised:
        await call(provider, [user("hi")], {"model": "claude-test"})
    assert raised.value.code == "overloaded_error"
    assert raised.value.message == (
        f"provider 'claude' at {api.base_url} reported an error during the reply: "
        "Overloaded (code overloaded_error)"
    )
    api.handler = lambda body: Reply(status=429, error_type="rate_limit_error", error="Slow down")
    with pytest.raises(ProviderError) as raised:
        await call(provider, [user("hi")], {"model": "claude-test"})
    assert (raised.value.code, raised.value.kind) == ("rate_limit_error", "rate_limited")
    assert raised.value.message.endswith("answered HTTP 429: Slow down (code rate_limit_error)")


async def test_a_cut_in_the_middle_of_a_tool_call_fails_as_cut(
    api: AnthropicServer, provider: AnthropicProvider
) -> None:
    api.handler = lambda body: Reply(
        blocks=[ToolUse("toolu_a", "get_weather", ['{"city"', ': "Paris"}'])],
        cut_after=1,
        cut_mode="clean",
    )
    parts: list[Any] = []

    async def read() -> None:
        async for part in provider.stream([user("hi")], AGENT_SETTINGS):
            parts.append(part)

    with pytest.raises(ProviderError) as raised:
        await read()
    assert raised.value.kind == "cut"
    assert parts == [ToolCallDelta(0, "toolu_a", "get_weather", ""),
                     ToolCallDelta(0, arguments='{"city"')]  # fmt: skip
    assert api.message_requests[0].tokens_sent == 1
