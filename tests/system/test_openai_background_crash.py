"""A background response outlives its worker: the worker is killed (kill -9) while the
model streams, a new one starts on the same SQLite file, and the client, with the
official ``openai`` SDK unchanged, resumes the response's event stream after the last
event it had (``retrieve(id, stream=True, starting_after=n)``) to the complete answer."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import openai
from openai import AsyncOpenAI

from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes

TOKENS = [f" w{i}" for i in range(40)]


def sdk(port: int) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)


async def test_a_background_response_resumes_to_its_whole_answer_after_kill_9(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    upstream.handler = lambda body: Reply(tokens=TOKENS, delay=0.05)
    env = clean_env(
        LISTEN_PORT="0", STORE_URL="sqlite:///jobs.db", OPENAI_API_KEY="k",
        OPENAI_BASE_URL=upstream.base_url,
    )  # fmt: skip
    async with processes() as started:
        first = await WorkerProcess.start(env, tmp_path)
        started.append(first)
        client = sdk(first.port)
        created = await client.responses.create(model="gpt-test", input="Count.", background=True)
        assert created.status in ("queued", "in_progress")
        seen: list[int] = []
        text = ""
        with contextlib.suppress(openai.APIError, httpx.HTTPError):
            stream = await client.responses.retrieve(created.id, stream=True)
            async for event in stream:
                seen.append(event.sequence_number)
                if event.type == "response.output_text.delta":
                    text += event.delta
                if len(text) > 10:
                    first.kill()  # mid-answer: the stream breaks off
        await first.process.wait()
        assert text and text != "".join(TOKENS)
        second = await WorkerProcess.start(env, tmp_path)
        started.append(second)
        client = sdk(second.port)
        rest = await client.responses.retrieve(created.id, stream=True, starting_after=seen[-1])
        events = [event async for event in rest]
        again = await client.responses.retrieve(created.id)
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(seen[-1] + 1, seen[-1] + 1 + len(numbers)))  # each once
    assert events[-1].type == "response.completed"
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == "completed"
    assert final.output_text == "".join(TOKENS)  # the new attempt's whole answer
    assert again.output_text == "".join(TOKENS)
