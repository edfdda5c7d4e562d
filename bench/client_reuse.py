"""What a fresh ``AsyncOpenAI`` client per job would cost, against a shared one.

Streams the same short reply from the loopback OpenAI-compatible server, alternating
between a client shared by every call and a client built (and closed) per call,
and reports the median and p90 time to the end of the stream for each.

    python bench/client_reuse.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import openai

from llm_worker.testing.openai_server import OpenAIServer, Reply
from percentiles import percentile

MESSAGES = [{"role": "user", "content": "hi"}]


async def one_call(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    async for _ in stream:
        pass


async def main(rounds: int) -> None:
    async with OpenAIServer(lambda body: Reply(tokens=["a", "b", "c"])) as server:
        shared = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        await one_call(shared)  # warm up: import paths, first connection
        reused: list[float] = []
        fresh: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            await one_call(shared)
            reused.append(time.perf_counter() - started)

            started = time.perf_counter()
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
            await one_call(client)
            await client.close()
            fresh.append(time.perf_counter() - started)
        await shared.close()

    print(f"{rounds} calls each, interleaved, loopback server, 3-token reply")
    print(f"{'':24}{'median':>10}{'p90':>10}")
    for name, values in (("shared client", reused), ("client per call", fresh)):
        print(
            f"{name:24}{statistics.median(values) * 1e3:>8.2f}ms"
            f"{percentile(values, 90) * 1e3:>8.2f}ms"
        )
    ratio = statistics.median(fresh) / statistics.median(reused)
    extra = (statistics.median(fresh) - statistics.median(reused)) * 1e3
    print(f"a client per call costs {extra:.2f} ms more per call ({ratio:.1f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    asyncio.run(main(parser.parse_args().rounds))
