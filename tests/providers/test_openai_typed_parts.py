"""The OpenAI-compatible provider over HTTP against the loopback server, with what
models send beside text: reasoning, refusals, parallel tool calls in fragments, a
second choice, usage details and error codes; and what it sends: a history with tool
calls, tool results and images, as OpenAI's own schema takes it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import orjson
import pytest

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.parts import Answer, Part, Reasoning, Refusal, ToolCallDelta
from llm_worker.jobs.usage import CallEnd
from llm_worker.providers.base import Notice, ProviderError
from llm_worker.providers.openai_compatible import ClientPool, OpenAICompatibleProvider
from llm_worker.testing.openai_server import OpenAIServer, Reply, ScriptedCall
from tests.support.openai_schema import errors

WEATHER = ScriptedCall("call_weather", "get_weather", '{"city": "Paris", "unit": "celsius"}', 3)
TIME = ScriptedCall("call_time", "get_time", '{"timezone": "Europe/Paris"}', 2)
HELLO = [ChatMessage(role="user", content="What is the weather and the time in Paris?")]
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
    "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture
async def provider(upstream: OpenAIServer) -> AsyncIterator[OpenAICompatibleProvider]:
    pool = ClientPool(timeout=5, connect_timeout=5, max_connections=2)
    yield OpenAICompatibleProvider(
        "openai", clients=pool, base_url=upstream.base_url, api_key="sk-test"
    )
    await pool.aclose()


async def stream(
    provider: OpenAICompatibleProvider,
    messages: list[ChatMessage] = HELLO,
    settings: dict[str, Any] | None = None,
) -> list[Part | Notice | CallEnd]:
    return [part async for part in provider.stream(messages, settings or {"model": "m"})]


async def drain(parts: AsyncIterator[Any], seen: list[Any]) -> None:
    async for part in parts:
        seen.append(part)


def fragments(index: int, call: ScriptedCall) -> list[ToolCallDelta]:
    step = call.piece
    pieces = [call.arguments[i : i + step] for i in range(0, len(call.arguments), step)]
    return [ToolCallDelta(index, call.id, call.name, "")] + [
        ToolCallDelta(index, None, None, piece) for piece in pieces
    ]


@pytest.mark.parametrize("reasoning_key", ["reasoning_content", "reasoning"])
async def test_reasoning_text_and_two_parallel_calls_arrive_typed_and_in_order(
    upstream: OpenAIServer, provider: OpenAICompatibleProvider, reasoning_key: str
) -> None:
    upstream.handler = lambda body: Reply(
        reasoning=["The user wants", " two things."],
        reasoning_key=reasoning_key,
        tokens=["Let me", " look."],
        tool_calls=[WEATHER, TIME],
        usage_details={
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    )
    parts = await stream(provider)
    calls = fragments(0, WEATHER) + fragments(1, TIME)
    assert len(calls) > 20  # arguments in many chunks
    prompt = len(HELLO[0].text.split())
    assert parts == [
        Reasoning("The user wants"),
        Reasoning(" two things."),
        "Let me",
        " look.",
        *calls,
        CallEnd("tool_calls", prompt, 4, cached_tokens=4, reasoning_tokens=2),
    ]
    answer = Answer()
    for part in parts[:-1]:
        answer.add(part)  # type: ignore[arg-type]
    assert answer.message() == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {"id": "call_weather", "type": "function",
             "function": {"name": "get_weather", "arguments": WEATHER.arguments}},
            {"id": "call_time", "type": "function",
             "function": {"name": "get_time", "arguments": TIME.arguments}},
        ],
        "reasoning": "The user wants two things.",
    }  # fmt: skip


async def test_a_refusal_arrives_as_a_refusal(
    upstream: OpenAIServer, provider: OpenAICompatibleProvider
) -> None:
    upstream.handler = lambda body: Reply(refusal=["I can't", " help with that."])
    parts = await stream(provider)
    assert parts[:-1] == [Refusal("I can't"), Refusal(" help with that.")]
    assert isinstance(parts[-1], CallEnd) and parts[-1].finish_reason == "stop"


async def test_the_chunks_of_a_second_choice_are_not_the_reply(
    upstream: OpenAIServer, provider: OpenAICompatibleProvider
) -> None:
    upstream.handler = lambda body: Reply(
        tokens=[" one", " two", " three"], second_choice=[" uno", " dos", " tres", " cuatro"]
    )
    parts = await stream(provider)
    assert parts[:-1] == [" one", " two", " three"]
    assert upstream.chat_requests[-1].tokens_sent == 7  # they were sent, and ignored


async def test_without_usage_details_they_stay_unknown(
    upstream: OpenAIServer, provider: OpenAICompatibleProvider
) -> None:
    upstream.handler = lambda body: Reply(tokens=["a"])
    parts = await stream(provider)
    assert parts[-1] == CallEnd("stop", len(HELLO[0].text.split()), 1)


async def test_an_error_in_the_stream_names_its_code(
    upstream: OpenAIServer, provider: OpenAICompatibleProvider
) -> None:
    upstream.handler = lambda body: Reply(
        tokens=["partial"],
        stream_error={"message": "The server had an error", "type": "server_error",
                      "code": "server_overloaded"},
    )  # fmt: skip
    seen: list[Any] = []
    with pytest.raises(ProviderError) as raised:
        await drain(provider.stream(HELLO, {"model": "m"}), seen)
    assert seen == ["partial"]
    assert raised.value.code == "server_overloaded"
    assert raised.value.message == (
        f"provider 'openai' at {upstream.base_url} reported an error: "
        "The server had an error (code server_overloaded)"
    )


async def test_an_error_answer_names_its_code(
    upstream: OpenAIServer, provider: OpenAICompatibleProvider
) -> None:
    said = "This model's maximum context length is 8192 tokens."
    upstream.handler = lambda body: Reply(
        status=400,
        error_body={"error": {"message": said, "type": "invalid_request_error",
                              "param": "messages", "code": "context_length_exceeded"}},
    )  # fmt: skip
    with pytest.raises(ProviderError) as raised:
        await stream(provider)
    error = raised.value
    assert (error.code, error.kind, error.retryable) == (
        "context_length_exceeded",
        "http_4xx",
        False,
    )
    assert error.message == (
        f"provider 'openai' at {upstream.base_url} answered HTTP 400: {said} "
        "(code context_length_exceeded)"
    )
    # A number for a code (vLLM's, this server's by default) repeats the status: no code.
    upstream.handler = lambda body: Reply(status=400, error="bad")
    with pytest.raises(ProviderError) as raised:
        await stream(provider)
    assert raised.value.code is None
    assert raised.value.message.endswith("answered HTTP 400: bad")


# A second turn of an agent, as a client sends it: images, audio and a file in, two
# tool calls out, their results back.
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": [
        {"type": "text", "text": "What is in these pictures, and the weather there?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/paris.jpg",
                                            "detail": "high"}},
        {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=",
                                  "filename": "notes.pdf"}},
    ]},
    {"role": "assistant", "content": None, "reasoning": "Two calls.", "tool_calls": [
        {"id": "call_weather", "type": "function",
         "function": {"name": "get_weather", "arguments": WEATHER.arguments}},
        {"id": "call_time", "type": "function",
         "function": {"name": "get_time", "arguments": TIME.arguments}},
    ]},
    {"role": "tool", "tool_call_id": "call_weather", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "call_time", "content": [{"type": "text", "text": "14:05"}]},
]  # fmt: skip


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
            "strict": False,
        },
    }
]


async def test_a_history_with_tool_calls_and_images_is_sent_as_openai_takes_it(
    upstream: OpenAIServer, provider: OpenAICompatibleProvider
) -> None:
    history = [ChatMessage.model_validate(message) for message in HISTORY]
    for number, message in enumerate(history):
        provider.check_message(message, f"history[{number}]", "openai")  # takes them all
    settings = {
        "model": "gpt-4o",
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": True,
        "response_format": {"type": "json_object"},
    }
    provider.check_settings(settings)
    upstream.handler = lambda body: Reply(tokens=["It is 21 degrees."])
    parts = await stream(provider, history, settings)
    assert parts[0] == "It is 21 degrees."

    body = upstream.chat_requests[-1].body
    assert errors("CreateChatCompletionRequest", body) == []
    for key, value in settings.items():
        assert body[key] == value, key
    sent = body["messages"]
    assert sent[1] == HISTORY[1]  # images (by URL and data URL), audio and file unchanged
    assert sent[2] == {k: v for k, v in HISTORY[2].items() if k != "reasoning"}
    assert sent[3:] == HISTORY[3:]


async def test_the_loopback_server_streams_what_openai_defines(upstream: OpenAIServer) -> None:
    """What the tests above rest on: the loopback server's chunks (but the reasoning,
    which is not OpenAI's) are valid under OpenAI's own schema, and the official SDK
    reads them to the same calls."""
    upstream.handler = lambda body: Reply(
        tokens=["Hi"], refusal=["no"], tool_calls=[WEATHER, TIME], second_choice=["x"],
        usage_details={"prompt_tokens_details": {"cached_tokens": 1}},
    )  # fmt: skip
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
               "stream_options": {"include_usage": True}}  # fmt: skip
    async with httpx2.AsyncClient() as http:
        response = await http.post(f"{upstream.base_url}/chat/completions", json=request)
    chunks = [
        orjson.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")
    ]
    assert len(chunks) > 20
    for chunk in chunks:
        assert errors("CreateChatCompletionStreamResponse", chunk) == [], chunk

    sdk = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0)
    async with sdk:
        events = await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        arguments: dict[int, str] = {}
        async for event in events:
            for choice in event.choices:
                for call in (choice.delta.tool_calls or []) if choice.index == 0 else []:
                    arguments[call.index] = arguments.get(call.index, "") + (
                        call.function.arguments or ""  # type: ignore[union-attr]
                    )
    assert arguments == {0: WEATHER.arguments, 1: TIME.arguments}
