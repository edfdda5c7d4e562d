"""What the ``anthropic`` provider sends, pure: the chat in OpenAI's shape translated
into the Messages API's (system, content blocks, thinking, tool uses and their
results), its tool settings translated, and each part or setting it cannot send
refused at add with a message naming it."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import TemplateError
from llm_worker.providers.anthropic import AnthropicClients, AnthropicProvider
from llm_worker.providers.anthropic_messages import to_anthropic

PNG = "data:image/png;base64,iVBORw0KGgo="
PDF = "data:application/pdf;base64,JVBERi0xLjQ="
SIGNED = {"type": "thinking", "thinking": "Two cities: two calls.", "signature": "sig-1"}
REDACTED = {"type": "redacted_thinking", "data": "opaque=="}


def message(**fields: Any) -> ChatMessage:
    return ChatMessage.model_validate(fields)


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.fixture
def provider() -> AnthropicProvider:
    clients = AnthropicClients(timeout=5, connect_timeout=5, max_connections=1)
    return AnthropicProvider("claude", clients=clients, base_url="http://h", api_key="k")


# -- messages -----------------------------------------------------------------------


def test_content_parts_become_blocks_and_system_messages_the_system() -> None:
    system, turns = to_anthropic(
        [
            message(role="system", content="Be brief."),
            message(role="developer", content=[{"type": "text", "text": "Cite pages."}]),
            message(
                role="user",
                content=[
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                    {"type": "image_url", "image_url": {"url": PNG, "detail": "auto"}},
                    {"type": "file", "file": {"file_data": PDF, "filename": "report.pdf"}},
                    {"type": "text", "text": "Cached.", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "  "},  # empty: the API refuses such a block
                ],
            ),
        ]
    )
    assert system == "Be brief.\n\nCite pages."
    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    assert turns == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": png},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                {"type": "image", "source": png},
                {
                    "type": "document",
                    "source": {
                        "type": "base64",
                        "media_type": "application/pdf",
                        "data": "JVBERi0xLjQ=",
                    },
                    "title": "report.pdf",
                },
                {"type": "text", "text": "Cached.", "cache_control": {"type": "ephemeral"}},
            ],
        }
    ]


def test_tool_calls_thinking_and_tool_results_become_blocks() -> None:
    _, turns = to_anthropic(
        [
            message(role="user", content="Weather in Paris and Oslo?"),
            message(
                role="assistant",
                content="Looking.",
                reasoning="Two cities: two calls.",  # the unsigned copy: not sent
                reasoning_details=[SIGNED, REDACTED],
                tool_calls=[
                    call("toolu_a", "get_weather", '{"city": "Paris"}'),
                    call("toolu_b", "get_weather", ""),  # no arguments: {}
                ],
            ),
            message(role="tool", tool_call_id="toolu_a", content="18 C"),
            message(
                role="tool",
                tool_call_id="toolu_b",
                content=[
                    {"type": "text", "text": "-2 C"},
                    {"type": "image_url", "image_url": {"url": "https://x.test/oslo.png"}},
                ],
            ),
            message(role="user", content="And tomorrow?"),
        ]
    )
    assert turns[1] == {
        "role": "assistant",
        "content": [
            SIGNED,
            REDACTED,
            {"type": "text", "text": "Looking."},
            {
                "type": "tool_use",
                "id": "toolu_a",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {}},
        ],
    }
    oslo = [
        {"type": "text", "text": "-2 C"},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/oslo.png"}},
    ]
    # Consecutive tool results and the user's next words: one user turn, results first.
    assert turns[2:] == [
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18 C"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": oslo},
                {"type": "text", "text": "And tomorrow?"},
            ],
        }
    ]


def test_an_assistant_turn_of_only_tool_calls_and_one_that_refused() -> None:
    _, turns = to_anthropic(
        [
            message(role="user", content="Do it."),
            message(role="assistant", content=None, tool_calls=[call("t1", "run", "{}")]),
            message(role="tool", tool_call_id="t1", content=""),
            message(role="assistant", content="", refusal="I cannot help with that."),
        ]
    )
    run = {"type": "tool_use", "id": "t1", "name": "run", "input": {}}
    assert turns[1:] == [
        {"role": "assistant", "content": [run]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        {"role": "assistant", "content": "I cannot help with that."},
    ]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"role": "user", "content": [{"type": "input_audio",
                                       "input_audio": {"data": "UklGRg==", "format": "wav"}}]},
         "history[2].content[0]: provider 'claude' cannot take 'input_audio' parts"),
        ({"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]},
         "history[2].content[0].file.file_id: provider 'claude' cannot take file ids"),
        ({"role": "user", "content": [{"type": "file",
                                       "file": {"file_data": "data:text/csv;base64,YQ=="}}]},
         "history[2].content[0].file.file_data: provider 'claude' cannot take 'text/csv' files"),
        ({"role": "user", "content": [{"type": "file", "file": {"filename": "a.pdf"}}]},
         "history[2].content[0].file.file_data: provider 'claude' needs the file's data"),
        ({"role": "user", "content": [{"type": "file", "file": {"file_data": PDF, "x": 1}}]},
         "history[2].content[0].file.x: provider 'claude' cannot take it"),
        ({"role": "user", "content": [{"type": "image_url",
                                       "image_url": {"url": PNG, "detail": "high"}}]},
         "history[2].content[0].image_url.detail: provider 'claude' cannot take 'high'"),
        ({"role": "user", "content": [{"type": "image_url",
                                       "image_url": {"url": "data:image/bmp;base64,Qk0="}}]},
         "history[2].content[0].image_url.url: provider 'claude' cannot take 'image/bmp' images"),
        ({"role": "user", "content": [{"type": "image_url",
                                       "image_url": {"url": "data:image/png,raw"}}]},
         "history[2].content[0].image_url.url: provider 'claude' takes an http(s) URL or a "
         "base64 data URL"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/a"}}]},
         "history[2].content[0].image_url.url: provider 'claude' takes an http(s) URL"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG, "y": 2}}]},
         "history[2].content[0].image_url.y: provider 'claude' cannot take it"),
        ({"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": PNG}}]},
         "history[2].content[0]: provider 'claude' cannot take 'image_url' parts in an "
         "assistant message"),
        ({"role": "system", "content": [{"type": "file", "file": {"file_data": PDF}}]},
         "history[2].content[0]: provider 'claude' cannot take 'file' parts in the system text"),
        ({"role": "assistant", "content": None, "tool_calls": [call("t", "f", "[1, 2]")]},
         "history[2].tool_calls[0].function.arguments: provider 'claude' takes a tool call's "
         "arguments as a JSON object, not '[1, 2]'"),
        ({"role": "assistant", "content": None, "tool_calls": [call("t", "f", "{'a'")]},
         "history[2].tool_calls[0].function.arguments: provider 'claude' takes"),
        ({"role": "assistant", "content": "x",
          "reasoning_details": [{"type": "reasoning.text", "text": "hm"}]},
         "history[2].reasoning_details[0]: provider 'claude' takes back only Anthropic's "
         "thinking blocks"),
        ({"role": "assistant", "content": "x",
          "reasoning_details": [{"type": "thinking", "thinking": "hm"}]},
         "history[2].reasoning_details[0]: provider 'claude' takes back only"),
        ({"role": "user", "content": "x", "reasoning_details": [SIGNED]},
         "history[2].reasoning_details: only an assistant message has reasoning_details"),
    ],
)  # fmt: skip
def test_each_part_the_api_cannot_take_is_refused_naming_it(
    provider: AnthropicProvider, fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(TemplateError) as raised:
        provider.check_message(message(**fields), "history[2]", "claude")
    assert str(raised.value).startswith(problem)


@pytest.mark.parametrize(
    "fields",
    [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]},
        {"role": "user", "content": [{"type": "file", "file": {"file_data": PDF}}]},
        {"role": "assistant", "content": None, "tool_calls": [call("t", "f", '{"a": 1}')],
         "reasoning_details": [SIGNED, REDACTED]},
        {"role": "tool", "tool_call_id": "t", "content": [{"type": "file",
                                                          "file": {"file_data": PDF}}]},
    ],
)  # fmt: skip
def test_what_the_api_takes_passes_the_check(
    provider: AnthropicProvider, fields: dict[str, Any]
) -> None:
    provider.check_message(message(**fields), "history[0]", "claude")


# -- settings -----------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
BASH = {"type": "bash_20250124", "name": "bash"}  # Anthropic's own form


def body(provider: AnthropicProvider, **settings: Any) -> dict[str, Any]:
    provider.check_settings({"model": "claude-test", **settings})
    messages = [message(role="user", content="hi")]
    return provider.request_body(messages, {"model": "claude-test", **settings})


def test_tools_are_translated_and_anthropic_ones_taken_as_they_are(
    provider: AnthropicProvider,
) -> None:
    sent = body(provider, tools=[WEATHER, BASH, {"type": "function", "function": {"name": "x"}}])
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
        },
        BASH,
        {"name": "x", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in sent


@pytest.mark.parametrize(
    ("settings", "choice"),
    [
        ({"tool_choice": "auto"}, {"type": "auto"}),
        ({"tool_choice": "required"}, {"type": "any"}),
        ({"tool_choice": "none"}, {"type": "none"}),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
         {"type": "tool", "name": "get_weather"}),
        ({"tool_choice": {"type": "any"}}, {"type": "any"}),
        ({"tool_choice": {"type": "tool", "name": "bash"}}, {"type": "tool", "name": "bash"}),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        ({"tool_choice": "required", "parallel_tool_calls": False},
         {"type": "any", "disable_parallel_tool_use": True}),
        ({"tool_choice": "none", "parallel_tool_calls": False}, {"type": "none"}),
        ({"parallel_tool_calls": True}, None),
    ],
)  # fmt: skip
def test_tool_choice_is_translated(
    provider: AnthropicProvider, settings: dict[str, Any], choice: dict[str, Any] | None
) -> None:
    assert body(provider, tools=[WEATHER], **settings).get("tool_choice") == choice


def test_thinking_is_forwarded(provider: AnthropicProvider) -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    sent = body(provider, thinking=thinking, max_tokens=4096)
    assert (sent["thinking"], sent["max_tokens"]) == (thinking, 4096)
    assert body(provider, thinking={"type": "adaptive"})["thinking"] == {"type": "adaptive"}
    # Without tools, parallel_tool_calls says nothing: no tool_choice is invented.
    assert "tool_choice" not in body(provider, parallel_tool_calls=False)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"tools": {"get_weather": {}}}, "settings.tools must be a list of tools"),
        ({"tools": ["get_weather"]}, "settings.tools[0] must be an object"),
        ({"tools": [{"type": "function", "function": {"name": "f", "x": 1}}]},
         "settings.tools[0].function.x: the API has no place for it"),
        ({"tools": [{"type": "function", "function": {"description": "d"}}]},
         "settings.tools[0].function.name: a tool needs a name"),
        ({"tools": [{"type": "function", "function": {"name": "f"}, "extra": 1}]},
         "settings.tools[0].extra: a function tool has only a 'function' object"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
         "settings.tools[0].function.parameters must be a JSON Schema object"),
        ({"tools": [WEATHER, {"input_schema": {}}]}, "settings.tools[1].name: a tool needs"),
        ({"tool_choice": "always"}, "settings.tool_choice must be 'auto', 'required', 'none'"),
        ({"tool_choice": {"type": "function"}}, "settings.tool_choice.function.name must name"),
        ({"parallel_tool_calls": "no"}, "settings.parallel_tool_calls must be true or false"),
        ({"thinking": True}, "settings.thinking must be an object"),
        ({"thinking": {"type": "enabled"}}, "settings.thinking.budget_tokens must be an integer"),
        ({"thinking": {"type": "enabled", "budget_tokens": 512}, "max_tokens": 4096},
         "settings.thinking.budget_tokens must be at least 1024 and less than max_tokens "
         "(4096), not 512"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}},
         "less than max_tokens (1024), not 2048"),
        ({"response_format": {"type": "json_object"}},
         "settings.response_format is not a setting of provider 'claude'"),
    ],
)  # fmt: skip
def test_each_setting_the_api_cannot_take_is_refused_naming_it(
    provider: AnthropicProvider, settings: dict[str, Any], problem: str
) -> None:
    with pytest.raises(TemplateError) as raised:
        provider.check_settings({"model": "claude-test", **settings})
    assert problem in str(raised.value)


def test_the_settings_schema_describes_the_new_settings(provider: AnthropicProvider) -> None:
    schema = provider.settings_schema()
    good = {
        "model": "claude-test",
        "tools": [WEATHER, BASH],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    jsonschema.validate(good, schema)
    for bad in ({"tool_choice": "always"}, {"parallel_tool_calls": "no"}, {"thinking": {}},
                {"tools": "x"}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"model": "claude-test", **bad}, schema)
