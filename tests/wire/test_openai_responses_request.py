"""The Responses door's reading of a request without a network: every field checked
as the OpenAPI document describes it (refused naming the field, never dropped), null
taken as not given, the input items made a chat history."""

from __future__ import annotations

from typing import Any

import pytest

from llm_worker.jobs.messages import ChatMessage
from llm_worker.wire.openai import InvalidParam
from llm_worker.wire.openai.responses import check_fields, history, input_items, settings

BASE: dict[str, Any] = {"model": "m", "input": "Hi"}
TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"truncation": "auto"}, "truncation"),
        ({"stream": "yes"}, "stream"),
        ({"background": 1}, "background"),
        ({"store": "no"}, "store"),
        ({"parallel_tool_calls": "true"}, "parallel_tool_calls"),
        ({"instructions": 5}, "instructions"),
        ({"previous_response_id": 5}, "previous_response_id"),
        ({"user": ["u"]}, "user"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"tools": 5}, "tools"),
        ({"tools": [1]}, "tools[0]"),
        ({"tools": [{**TOOL, "name": 7}]}, "tools[0].name"),
        ({"tools": [{**TOOL, "parameters": "x"}]}, "tools[0].parameters"),
        ({"tools": [{**TOOL, "extra": 1}]}, "tools[0].extra"),
        ({"tool_choice": "any"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": ""}}, "tool_choice"),
        ({"text": "json"}, "text"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema"),
        ({"text": {"format": {"type": "text", "x": 1}}}, "text.format"),
        ({"reasoning": "high"}, "reasoning"),
        ({"reasoning": {"effort": 3}}, "reasoning.effort"),
        ({"reasoning": {"budget": 3}}, "reasoning.budget"),
        ({"input": 5}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": ""}]}]},
         "input[0].content[0].text"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": ""}]}]},
         "input[0].content[0].image_url"),
        ({"input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://x/a.png", "detail": "max"}]}]},
         "input[0].content[0].detail"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
         "input[0].arguments"),
        ({"input": [{"type": "function_call_output", "call_id": "", "output": "x"}]},
         "input[0].call_id"),
        ({"input": [{"type": "web_search_call"}]}, "input[0]"),
    ],
)  # fmt: skip
def test_what_is_not_taken_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParam) as refused:
        check_fields({**BASE, **fields})
    assert refused.value.param == param


def test_null_is_a_field_not_given() -> None:
    nulls = dict.fromkeys(("temperature", "top_p", "tools", "tool_choice", "user", "text"))
    nulls |= dict.fromkeys(("max_output_tokens", "reasoning", "instructions", "stream", "store"))
    nulls["parallel_tool_calls"] = None
    body = check_fields({**BASE, **nulls})
    assert settings(body) == {}
    assert settings(check_fields({**BASE, "text": {"format": None}, "reasoning": {}})) == {}


def test_settings_in_chat_names() -> None:
    body = check_fields(
        {
            **BASE,
            "tools": [TOOL],
            "tool_choice": {"type": "function", "name": "f"},
            "max_output_tokens": 9,
            "reasoning": {"effort": "low", "summary": "auto"},
            "text": {"format": {"type": "json_schema", "name": "n", "schema": {}, "strict": None}},
            "user": "",
            "store": True,
            "metadata": {"k": "v"},
        }
    )
    assert settings(body) == {
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": TOOL["parameters"]}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "max_tokens": 9,
        "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {}}},
        "user": "",
        "metadata": {"k": "v"},
    }


def test_the_items_make_chat_messages() -> None:
    items = input_items(
        [
            {"role": "user", "content": [{"type": "input_text", "text": "Look"},
                                         {"type": "input_image", "image_url": "https://x/a.png",
                                          "detail": "low"}]},
            {"type": "reasoning", "summary": []},
            {"role": "assistant", "content": "Checking."},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g"},
            {"type": "function_call_output", "call_id": "c1", "output": "1"},
        ]
    )  # fmt: skip
    messages = history("Be brief.", items)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "https://x/a.png", "detail": "low"},
    }
    assert [call["id"] for call in messages[2]["tool_calls"]] == ["c1", "c2"]
    assert messages[2]["tool_calls"][1]["function"]["arguments"] == ""
    for message in messages:  # what the job is made of: each a valid chat message
        ChatMessage.model_validate(message)
