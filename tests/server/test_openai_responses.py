"""OpenAI's Responses API over a real worker, driven by the official ``openai`` SDK
unchanged; the worker's ``openai`` provider is the loopback model server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import StartWorker
from tests.server.test_typed_events import OSLO, PARIS, agent_reply
from tests.support.openai_schema import errors as schema_errors
from tests.support.waiting import eventually

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
async def client(start_worker: StartWorker) -> AsyncOpenAI:
    worker = await start_worker()
    return AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="unused", max_retries=0)


EVENT_DEFINITIONS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.reasoning_summary_part.added": "ResponseReasoningSummaryPartAddedEvent",
    "response.reasoning_summary_text.delta": "ResponseReasoningSummaryTextDeltaEvent",
    "response.reasoning_summary_text.done": "ResponseReasoningSummaryTextDoneEvent",
    "response.reasoning_summary_part.done": "ResponseReasoningSummaryPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.completed": "ResponseCompletedEvent",
}
"""The definition of each event a stream sends, in OpenAI's schema."""


def invalid(definition: str, instance: Any) -> list[str]:
    return schema_errors(definition, instance, "openai_responses")


async def raw_events(client: AsyncOpenAI, response_id: str) -> list[dict[str, Any]]:
    """The stream of ``response_id`` as sent: each event's data, parsed."""
    async with (
        httpx.AsyncClient(base_url=str(client.base_url)) as http,
        http.stream("GET", f"responses/{response_id}", params={"stream": "true"}) as reply,
    ):
        assert reply.headers["content-type"].startswith("text/event-stream")
        return [
            json.loads(line.removeprefix("data: "))
            async for line in reply.aiter_lines()
            if line.startswith("data: ")
        ]


async def test_a_text_answer_is_a_completed_response(
    upstream: OpenAIServer, client: AsyncOpenAI
) -> None:
    response = await client.responses.create(
        model="gpt-test", input="Hello there", instructions="Be brief.", temperature=0.5
    )
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Echo: Hello there"
    assert response.usage is not None and response.usage.total_tokens > 0
    sent = upstream.chat_requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    assert sent["model"] == "gpt-test" and sent["temperature"] == 0.5


async def test_a_streamed_agent_turn_gives_reasoning_text_and_two_calls(
    upstream: OpenAIServer, client: AsyncOpenAI
) -> None:
    upstream.handler = lambda body: agent_reply()
    stream = await client.responses.create(
        model="gpt-test", input="Weather in Paris and Oslo?", tools=[WEATHER], stream=True
    )
    events = [event async for event in stream]
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(len(events)))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.function_call_arguments.delta") > 4  # fragments
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == "The user asks about two cities."
    final = events[-1].response
    assert final.output_text == "Checking both."
    calls = [
        (item.call_id, item.name, item.arguments)
        for item in final.output
        if item.type == "function_call"
    ]
    assert calls == [("call_paris", "get_weather", PARIS), ("call_oslo", "get_weather", OSLO)]
    assert final.usage is not None
    assert final.usage.input_tokens_details.cached_tokens == 2
    assert final.usage.output_tokens_details.reasoning_tokens == 3
    sent = upstream.chat_requests[-1].body
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {k: WEATHER[k] for k in ("name", "description", "parameters")},
        }
    ]


async def test_a_background_stream_resumes_after_any_event_each_event_once(
    upstream: OpenAIServer, client: AsyncOpenAI
) -> None:
    upstream.handler = lambda body: agent_reply()
    created = await client.responses.create(model="gpt-test", input="Go", background=True)
    assert created.status in ("queued", "in_progress")
    whole = [e async for e in await client.responses.retrieve(created.id, stream=True)]
    assert whole[-1].type == "response.completed"
    for n in (0, 5, len(whole) // 2, len(whole) - 2):
        resumed = [
            e
            async for e in await client.responses.retrieve(
                created.id, stream=True, starting_after=n
            )
        ]
        assert [e.model_dump() for e in resumed] == [e.model_dump() for e in whole[n + 1 :]]


async def test_cancel_stops_the_model_and_is_idempotent(
    upstream: OpenAIServer, client: AsyncOpenAI
) -> None:
    upstream.handler = lambda body: Reply(tokens=[f" t{i}" for i in range(200)], delay=0.05)
    created = await client.responses.create(model="gpt-test", input="Go", background=True)
    await eventually(lambda: upstream.chat_requests)
    cancelled = await client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    await eventually(lambda: upstream.chat_requests[-1].client_gone.is_set())
    again = await client.responses.cancel(created.id)
    assert again.status == "cancelled"
    assert (await client.responses.retrieve(created.id)).status == "cancelled"


async def test_previous_response_id_continues_the_conversation(
    upstream: OpenAIServer, client: AsyncOpenAI
) -> None:
    upstream.handler = lambda body: agent_reply()
    first = await client.responses.create(model="gpt-test", input="Weather?", tools=[WEATHER])
    upstream.handler = lambda body: Reply(tokens=["Sunny ", "and ", "cold."])
    results: list[Any] = [
        {"type": "function_call_output", "call_id": "call_paris", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_oslo", "output": "2C"},
    ]
    second = await client.responses.create(
        model="gpt-test", input=results, previous_response_id=first.id, tools=[WEATHER]
    )
    assert second.output_text == "Sunny and cold."
    sent = upstream.chat_requests[-1].body["messages"]
    assert sent[0] == {"role": "user", "content": "Weather?"}
    assert sent[1]["role"] == "assistant" and sent[1]["content"] == "Checking both."
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_paris", "call_oslo"]
    assert sent[2:] == [
        {"role": "tool", "tool_call_id": "call_paris", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_oslo", "content": "2C"},
    ]


async def test_input_items_and_delete(client: AsyncOpenAI) -> None:
    response = await client.responses.create(model="gpt-test", input="Hi")
    items = await client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    await client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)


async def test_input_items_page_as_the_sdk_asks(client: AsyncOpenAI) -> None:
    turns = [{"role": "user", "content": f"turn {n}"} for n in range(5)]
    response = await client.responses.create(model="gpt-test", input=turns)  # type: ignore[arg-type]
    first = await client.responses.input_items.list(response.id, limit=2, order="asc")
    assert [item.content[0].text for item in first.data] == ["turn 0", "turn 1"]  # type: ignore[union-attr]
    assert first.has_more
    # The SDK's own paging (after= the last id) walks the rest, newest first by default.
    every = [item async for item in client.responses.input_items.list(response.id, limit=2)]
    assert [item.content[0].text for item in every] == [f"turn {n}" for n in range(4, -1, -1)]  # type: ignore[union-attr]
    assert (await client.responses.input_items.list(response.id, after="in_x")).data == []
    for bad in ({"order": "up"}, {"limit": 0}, {"limit": 101}):
        with pytest.raises(openai.BadRequestError):
            await client.responses.input_items.list(response.id, **bad)  # type: ignore[arg-type]
    for query in ("stream=maybe", "starting_after=-2", "starting_after=x"):
        with pytest.raises(openai.BadRequestError):
            await client.get(f"/responses/{response.id}?{query}", cast_to=httpx.Response)


async def test_a_provider_not_ready_is_named_as_the_chat_door_names_it(
    upstream: OpenAIServer, client: AsyncOpenAI
) -> None:
    # anthropic has no key here: "anthropic/..." names it all the same (it was sent whole
    # to the default provider, as a model called "anthropic/claude-x").
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="anthropic/claude-x", input="Hi")
    assert "anthropic" in refused.value.message
    assert upstream.chat_requests == []


async def test_an_unsupported_field_is_refused_naming_it(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="gpt-test", input="Hi", truncation="auto")
    assert caught.value.body["param"] == "truncation"  # type: ignore[index]


async def test_responses_and_events_are_valid_under_openai_schema(
    upstream: OpenAIServer, client: AsyncOpenAI
) -> None:
    upstream.handler = lambda body: agent_reply()
    created = await client.responses.create(
        model="gpt-test", input="Weather?", tools=[WEATHER], background=True
    )
    events = await raw_events(client, created.id)
    assert {e["type"] for e in events} >= {
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.function_call_arguments.done",
        "response.reasoning_summary_text.delta",
        "response.output_item.done",
        "response.completed",
    }
    for event in events:
        assert invalid(EVENT_DEFINITIONS[event["type"]], event) == [], event
        assert invalid("ResponseStreamEvent", event) == [], event
    raw = await client.responses.with_raw_response.retrieve(created.id)
    assert invalid("Response", raw.http_response.json()) == []
    items = await client.responses.input_items.with_raw_response.list(created.id)
    assert invalid("ResponseItemList", items.http_response.json()) == []


async def test_a_length_stop_is_incomplete(upstream: OpenAIServer, client: AsyncOpenAI) -> None:
    upstream.handler = lambda body: Reply(tokens=["a", "b"], finish_reason="length")
    response = await client.responses.create(model="gpt-test", input="Hi", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert upstream.chat_requests[-1].body["max_tokens"] == 2


async def test_text_format_json_schema_reaches_the_model_as_response_format(
    upstream: OpenAIServer, client: AsyncOpenAI
) -> None:
    upstream.handler = lambda body: Reply(tokens=['{"city": ', '"Paris"}'])
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    response = await client.responses.create(
        model="gpt-test",
        input="Where?",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema}},
        reasoning={"effort": "low"},
    )
    assert json.loads(response.output_text) == {"city": "Paris"}
    sent = upstream.chat_requests[-1].body
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": schema},
    }
    assert sent["reasoning_effort"] == "low"


async def test_a_streaming_client_that_leaves_cancels_its_response(
    upstream: OpenAIServer, client: AsyncOpenAI
) -> None:
    upstream.handler = lambda body: Reply(tokens=[f" t{i}" for i in range(200)], delay=0.05)
    stream = await client.responses.create(model="gpt-test", input="Go", stream=True)
    response_id = ""
    async for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == "response.output_text.delta":
            break
    await stream.close()
    await eventually(lambda: upstream.chat_requests[-1].client_gone.is_set())
    assert (await client.responses.retrieve(response_id)).status == "cancelled"


async def test_a_client_leaving_a_waited_for_response_cancels_it(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    # As a stream left: the model stops (a background response is the way to leave).
    upstream.handler = lambda body: Reply(tokens=[f" t{i}" for i in range(40)], delay=0.02)
    worker = await start_worker()
    client = AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="unused", max_retries=0)
    async with client:
        asking = asyncio.create_task(client.responses.create(model="gpt-test", input="Hi"))
        await eventually(lambda: upstream.chat_requests, what="the model asked")
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asking
    request = upstream.chat_requests[0]
    await eventually(request.client_gone.is_set, what="the model's request cut")
    assert request.tokens_sent < 40
    async with httpx.AsyncClient(base_url=worker.http_url) as http:

        async def cancelled() -> bool:
            jobs = (await http.get("/v1/jobs")).json()["jobs"]
            return [job["state"] for job in jobs] == ["cancelled"]

        await eventually(cancelled, what="the job cancelled")
