"""``POST /v1/chat/completions`` driven by the official ``openai`` SDK, unchanged, its
``base_url`` at a real worker whose ``openai`` provider is the loopback model server:
replies streamed and not, tool calls put together by the SDK's own stream helpers,
usage, images reaching the model, errors as the SDK's exception classes, and a
client's leaving cancelling the job (or not, when asked)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import RunningWorker, StartWorker
from tests.server.test_typed_events import OSLO, PARIS, WEATHER_TOOL, agent_reply
from tests.support.openai_schema import errors as schema_errors
from tests.support.waiting import eventually

USER: Any = [{"role": "user", "content": "Weather in Paris and Oslo?"}]


@contextlib.asynccontextmanager
async def sdk(worker: RunningWorker, key: str = "none") -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=worker.http_url + "/v1", api_key=key, max_retries=0)
    async with client:
        yield client


async def test_a_reply_waited_for(start_worker: StartWorker, upstream: OpenAIServer) -> None:
    worker = await start_worker()
    async with sdk(worker) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=[{"role": "user", "content": "hello there"}]
        )
    reply = raw.parse()
    job_id = raw.headers["x-llm-worker-job-id"]
    assert reply.id == f"chatcmpl-{job_id}"
    assert reply.model == "gpt-test"
    assert reply.choices[0].message.content == "Echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens > 0
    assert schema_errors("CreateChatCompletionResponse", json.loads(raw.content)) == []
    assert upstream.chat_requests[0].body["model"] == "gpt-test"
    # The request is a job like any other.
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        status = (await http.get(f"/v1/jobs/{job_id}")).json()
    assert status["state"] == "done"
    assert status["output"] == "Echo: hello there"


async def test_tool_calls_streamed_and_put_together_by_the_sdk(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = lambda body: agent_reply()
    worker = await start_worker()
    chunks: list[dict[str, Any]] = []
    async with (
        sdk(worker) as client,
        client.chat.completions.stream(
            model="openai/gpt-test",
            messages=USER,
            tools=[WEATHER_TOOL],
            tool_choice="auto",
            parallel_tool_calls=True,
            temperature=0.5,
            stream_options={"include_usage": True},
        ) as stream,
    ):
        async for event in stream:
            if event.type == "chunk":
                chunks.append(event.chunk.model_dump(exclude_unset=True))
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Checking both."
    assert message.model_extra == {"reasoning_content": "The user asks about two cities."}
    assert message.tool_calls is not None
    calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls]
    assert calls == [("call_paris", "get_weather", PARIS), ("call_oslo", "get_weather", OSLO)]
    assert final.choices[0].finish_reason == "tool_calls"
    # The arguments came in fragments, as the model sent them.
    fragments = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    assert len(fragments) > 10
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # The last chunk has no choices and the usage, with its details.
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 2}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 3}
    assert final.usage is not None and final.usage.total_tokens == usage["total_tokens"]
    for chunk in chunks:
        assert schema_errors("CreateChatCompletionStreamResponse", chunk) == [], chunk
    sent = upstream.chat_requests[0].body
    assert sent["model"] == "gpt-test"
    assert sent["tools"] == [WEATHER_TOOL]
    assert (sent["tool_choice"], sent["parallel_tool_calls"], sent["temperature"]) == (
        "auto",
        True,
        0.5,
    )


async def test_raw_stream_bytes(start_worker: StartWorker, upstream: OpenAIServer) -> None:
    upstream.handler = lambda body: Reply(tokens=["Hel", "lo"], refusal=["no"])
    worker = await start_worker()
    async with (
        httpx.AsyncClient(base_url=worker.http_url) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "messages": USER, "stream": True},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        job_id = response.headers["x-llm-worker-job-id"]
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(chunk["id"] == f"chatcmpl-{job_id}" for chunk in chunks)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert "".join(d.get("content") or "" for d in deltas) == "Hello"
    assert "".join(d.get("refusal") or "" for d in deltas) == "no"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in chunks[-1]  # not asked for


async def test_an_image_part_reaches_the_model(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    worker = await start_worker()
    content: Any = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    async with sdk(worker) as client:
        await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": content}]
        )
    assert upstream.chat_requests[0].body["messages"] == [{"role": "user", "content": content}]


async def test_refusals_raise_the_sdks_exceptions(start_worker: StartWorker) -> None:
    worker = await start_worker()
    async with sdk(worker) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="gpt-test", messages=USER, n=2)
        assert refused.value.param == "n"
        # The anthropic provider has no key here: refused when added.
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="anthropic/claude-x", messages=USER)
        assert "anthropic" in refused.value.message
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="gpt-test", messages=USER, logprobs=True)
        assert refused.value.param == "logprobs"
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "nobody", "content": "x"}]
            )
        assert refused.value.param == "messages"


async def test_keys_are_asked_for(start_worker: StartWorker) -> None:
    worker = await start_worker(api_keys="sk-alice")
    async with sdk(worker, "sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.chat.completions.create(model="gpt-test", messages=USER)
    assert refused.value.body is not None
    assert refused.value.status_code == 401
    async with sdk(worker, "sk-alice") as client:
        reply = await client.chat.completions.create(model="gpt-test", messages=USER)
    assert reply.choices[0].message.content


async def test_a_failed_job(start_worker: StartWorker, upstream: OpenAIServer) -> None:
    upstream.handler = lambda body: Reply(status=400, error="context too long")
    worker = await start_worker()
    async with sdk(worker) as client:
        with pytest.raises(openai.InternalServerError) as failed:
            await client.chat.completions.create(model="gpt-test", messages=USER)
        assert "context too long" in failed.value.message
        stream = await client.chat.completions.create(model="gpt-test", messages=USER, stream=True)
        with pytest.raises(openai.APIError) as failed_stream:
            await read_all(stream)
        assert "context too long" in failed_stream.value.message


async def read_all(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


async def job_states(worker: RunningWorker) -> list[str]:
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        return [job["state"] for job in (await http.get("/v1/jobs")).json()["jobs"]]


def states_are(worker: RunningWorker, expected: list[str]) -> Any:
    async def check() -> bool:
        return await job_states(worker) == expected

    return check


async def leave_early(
    client: openai.AsyncOpenAI, upstream: OpenAIServer, streaming: bool, **extra: Any
) -> None:
    """Ask, then hang up once the model is answering: streamed, after the first text;
    waited for, as soon as the model has the request."""
    if streaming:
        stream = await client.chat.completions.create(
            model="gpt-test", messages=USER, stream=True, **extra
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()
        return
    asking = asyncio.create_task(
        client.chat.completions.create(model="gpt-test", messages=USER, **extra)
    )
    await eventually(lambda: upstream.chat_requests, what="the model asked")
    asking.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asking


@pytest.mark.parametrize("keep_running", [False, True])
@pytest.mark.parametrize("streaming", [True, False])
async def test_a_client_leaving_cancels_the_job_unless_asked_not_to(
    start_worker: StartWorker, upstream: OpenAIServer, streaming: bool, keep_running: bool
) -> None:
    upstream.handler = lambda body: Reply(tokens=[f" t{i}" for i in range(40)], delay=0.02)
    worker = await start_worker()
    headers = {"x-llm-worker-keep-running": "true"} if keep_running else {}
    async with sdk(worker) as client:
        await leave_early(client, upstream, streaming, extra_headers=headers)
    request = upstream.chat_requests[0]
    if keep_running:
        assert await job_states(worker) == ["running"]
        await eventually(states_are(worker, ["done"]), what="the job done")
        assert not request.client_gone.is_set()
        assert request.tokens_sent == 40
    else:
        await eventually(request.client_gone.is_set, what="the model's request cut")
        assert request.tokens_sent < 40
        await eventually(states_are(worker, ["cancelled"]), what="the job cancelled")
