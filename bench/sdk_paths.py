"""What one streamed chat completion costs the caller, by the way the ``openai`` SDK
is used: ``chat.completions.create()`` iterated chunk by chunk (the SDK builds a model
per chunk), or the SDK's generic ``client.post()`` with the SSE read by us with
orjson (what the provider does); each over the SDK's default transport and over
its aiohttp one. Interleaved rounds against the loopback server in its own process.

    python bench/sdk_paths.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx2
import openai
import orjson

from llm_worker.testing.redis_server import free_port

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "How tall is the Eiffel Tower?"},
]


async def create_and_iterate(client: openai.AsyncOpenAI, model: str) -> int:
    stream = await client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    tokens = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            tokens += 1
    return tokens


async def post_and_parse(client: openai.AsyncOpenAI, model: str) -> int:
    response = await client.post(
        "/chat/completions",
        body={"model": model, "messages": MESSAGES, "stream": True},
        cast_to=httpx2.Response,
        stream=True,
        stream_cls=openai.AsyncStream[httpx2.Response],
    )
    tokens = 0
    try:
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = orjson.loads(line[6:]).get("choices")
                if choices and choices[0].get("delta", {}).get("content"):
                    tokens += 1
    finally:
        await response.aclose()
    return tokens


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(  # noqa: ASYNC220 - before any measurement
        [sys.executable, "-m", "llm_worker.testing.openai_server", "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    server.stdout.readline()
    base_url = f"http://127.0.0.1:{port}/v1"
    clients = {
        "default transport": openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0),
        "aiohttp transport": openai.AsyncOpenAI(
            base_url=base_url, api_key="k", max_retries=0, http_client=openai.DefaultAioHttpClient()
        ),
    }
    ways: dict[str, Callable[[openai.AsyncOpenAI, str], Awaitable[int]]] = {
        "create() + chunks": create_and_iterate,
        "post() + orjson": post_and_parse,
    }
    try:
        for tokens in (5, 200):
            model = f"fake:tokens={tokens}"
            combos = [(c, w) for c in clients for w in ways]
            times: dict[tuple[str, str], list[float]] = {combo: [] for combo in combos}
            for client_name, way in combos:
                for _ in range(20):  # warm-up
                    await ways[way](clients[client_name], model)
            for _ in range(args.rounds):
                for client_name, way in combos:
                    started = time.perf_counter()
                    got = await ways[way](clients[client_name], model)
                    times[(client_name, way)].append(time.perf_counter() - started)
                    assert got == tokens
            print(f"\n{tokens} tokens, median of {args.rounds} interleaved calls")
            baseline = statistics.median(times[("default transport", "create() + chunks")])
            for (client_name, way), values in times.items():
                median = statistics.median(values)
                print(
                    f"  {client_name:18} {way:20} {median * 1e3:7.3f} ms  {baseline / median:5.1f}x"
                )
    finally:
        for client in clients.values():
            await client.close()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    asyncio.run(main())
