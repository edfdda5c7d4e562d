"""A response's request outlives the process that took it: another gateway, or the
same worker after a kill -9 and a restart, serves its input items, its echoed fields
and a next turn's ``previous_response_id`` (the store keeps the request of a response
made with ``store`` true). Driven by the official ``openai`` SDK unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from openai.types.responses import Response

from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.testing.redis_server import RedisServer, unique_prefix
from tests.conftest import StartWorker
from tests.server.test_openai_responses import WEATHER
from tests.server.test_typed_events import agent_reply

RESULTS: list[Any] = [
    {"type": "function_call_output", "call_id": "call_paris", "output": "18C"},
    {"type": "function_call_output", "call_id": "call_oslo", "output": "2C"},
]


def sdk(base_url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


async def first_turn(upstream: OpenAIServer, client: AsyncOpenAI) -> tuple[Response, Response]:
    """A turn asking for two tools, kept (``store`` by default), and one made with
    ``store`` false."""
    upstream.handler = lambda body: agent_reply()
    kept = await client.responses.create(
        model="gpt-test",
        input="Weather?",
        instructions="Be brief.",
        metadata={"user": "ada"},
        tools=[WEATHER],
    )
    assert kept.status == "completed"
    unkept = await client.responses.create(model="gpt-test", input="Hi", store=False)
    return kept, unkept


async def served_elsewhere(
    upstream: OpenAIServer, client: AsyncOpenAI, kept: Response, unkept: Response
) -> None:
    """What another process serves of ``first_turn``'s responses."""
    items = await client.responses.input_items.list(kept.id)
    assert [(item.type, item.role) for item in items.data] == [("message", "user")]  # type: ignore[union-attr]
    assert items.data[0].content[0].text == "Weather?"  # type: ignore[union-attr]
    again = await client.responses.retrieve(kept.id)
    assert (again.instructions, again.metadata, again.model) == (
        "Be brief.",
        {"user": "ada"},
        "gpt-test",
    )
    assert [tool.name for tool in again.tools] == ["get_weather"]  # type: ignore[union-attr]
    assert [item.type for item in again.output] == [item.type for item in kept.output]

    upstream.handler = lambda body: Reply(tokens=["Sunny ", "and ", "cold."])
    second = await client.responses.create(
        model="gpt-test", input=RESULTS, previous_response_id=kept.id, tools=[WEATHER]
    )
    assert second.output_text == "Sunny and cold."
    sent = upstream.chat_requests[-1].body["messages"]
    assert sent[:2] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
    ]
    assert [call["id"] for call in sent[2]["tool_calls"]] == ["call_paris", "call_oslo"]
    assert [message["role"] for message in sent[3:]] == ["tool", "tool"]

    # A response made with store false keeps no request: its status and output only.
    assert (await client.responses.retrieve(unkept.id)).output_text == unkept.output_text
    with pytest.raises(openai.NotFoundError):  # as OpenAI answers for one not stored
        await client.responses.input_items.list(unkept.id)
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(
            model="gpt-test", input="Go on", previous_response_id=unkept.id
        )


async def test_a_response_outlives_a_kill_9_and_a_restart_on_sqlite(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    env = clean_env(LISTEN_PORT="0", STORE_URL="sqlite:///jobs.db", OPENAI_API_KEY="k")
    env["OPENAI_BASE_URL"] = upstream.base_url
    async with processes() as started:

        async def worker_process() -> tuple[WorkerProcess, AsyncOpenAI]:
            started.append(await WorkerProcess.start(env, tmp_path))
            return started[-1], sdk(f"http://127.0.0.1:{started[-1].port}")

        first, client = await worker_process()
        kept, unkept = await first_turn(upstream, client)
        first.kill()  # its store's file is all that is left of it
        await first.process.wait()
        _, client = await worker_process()
        await served_elsewhere(upstream, client, kept, unkept)


async def test_a_response_made_on_one_gateway_is_served_by_another_on_redis(
    upstream: OpenAIServer, start_worker: StartWorker, redis_server: RedisServer
) -> None:
    shared = {"store_url": redis_server.url, "redis_prefix": unique_prefix()}
    one = await start_worker(**shared)
    other = await start_worker(**shared)
    kept, unkept = await first_turn(upstream, sdk(one.http_url))
    await served_elsewhere(upstream, sdk(other.http_url), kept, unkept)
