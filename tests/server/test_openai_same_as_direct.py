"""An OpenAI client pointed at the worker gets what it gets pointed at the model server
itself: the same text, tool calls, finish reason and usage (the official ``openai``
SDK, unchanged, on both; streamed, as the loopback model server always answers, and
waited for whole from the worker)."""

from __future__ import annotations

from typing import Any

import openai

from llm_worker.testing.openai_server import OpenAIServer, Reply, ScriptedCall
from tests.conftest import StartWorker
from tests.server.test_typed_events import OSLO, PARIS, WEATHER_TOOL

MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Oslo?"},
]


def calls_reply(body: dict[str, Any]) -> Reply:
    return Reply(
        tokens=["Checking ", "both."],
        tool_calls=[
            ScriptedCall("call_paris", "get_weather", PARIS, piece=3),
            ScriptedCall("call_oslo", "get_weather", OSLO, piece=3),
        ],
        usage_details={"prompt_tokens_details": {"cached_tokens": 2}},
    )


def essentials(completion: Any) -> dict[str, Any]:
    choice = completion.choices[0]
    return {
        "content": choice.message.content,
        "tool_calls": [
            (call.id, call.type, call.function.name, call.function.arguments)
            for call in choice.message.tool_calls or []
        ],
        "finish_reason": choice.finish_reason,
        "usage": (
            completion.usage.prompt_tokens,
            completion.usage.completion_tokens,
            completion.usage.prompt_tokens_details.cached_tokens,
        ),
    }


async def test_the_worker_answers_as_the_model_server_does(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = calls_reply
    worker = await start_worker()
    results = []
    for base_url in (upstream.base_url, worker.http_url + "/v1"):
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
        async with client.chat.completions.stream(
            model="gpt-test",
            messages=MESSAGES,
            tools=[WEATHER_TOOL],
            stream_options={"include_usage": True},
        ) as stream:
            results.append(essentials(await stream.get_final_completion()))
        await client.close()
    direct, through_worker = results
    assert through_worker == direct
    assert direct["content"] == "Checking both."
    assert direct["tool_calls"][1] == ("call_oslo", "function", "get_weather", OSLO)
    assert direct["usage"][2] == 2
    # Waited for whole (the loopback server only streams), the worker says the same.
    client = openai.AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="x", max_retries=0)
    whole = await client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, tools=[WEATHER_TOOL]
    )
    assert essentials(whole) == direct
    # What reached the model from the worker is what the client sent it directly.
    bodies = [request.body for request in upstream.chat_requests]
    assert bodies[1]["messages"] == bodies[0]["messages"] == MESSAGES
    assert bodies[1]["tools"] == bodies[0]["tools"] == [WEATHER_TOOL]
