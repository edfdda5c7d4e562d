"""The load generator: runs one benchmark scenario in a process of its own.

    python bench/loadgen.py '{"scenario": "ttft", ...}'

prints one JSON object with the measurements. Scenarios:

``ttft``        time to first token through the worker (``add`` sent -> first
                non-empty ``running``) and straight through the ``openai`` SDK,
                in interleaved rounds of ``concurrency`` jobs.
``throughput``  tokens per second delivered with ``concurrency`` jobs at once,
                through the worker and through the SDK, interleaved; and the
                upstream's own ceiling, read with a bare HTTP client.
``scale``       ``idle`` open WebSocket connections, then ``jobs`` jobs streaming
                at once on some of them; the worker's RSS at each step.
``fanout``      one job followed by ``listeners`` connections.
``peer``        an OpenAI-compatible proxy (LiteLLM) against the same server.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
import orjson

from llm_worker.providers.http_replies import sse_data
from percentiles import percentile

TERMINAL = {"done", "failed", "cancelled"}


def model(tokens: int, delay: float = 0.0, first_delay: float = 0.0) -> str:
    return f"fake:tokens={tokens},delay={delay},first_delay={first_delay}"


def assistant(model_name: str) -> dict[str, Any]:
    return {
        "streams": [
            {
                "provider": "openai",
                "settings": {"model": model_name},
                "messages": [{"role": "user", "content": "{query}"}],
            }
        ]
    }


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))


_session: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    """One aiohttp session for every client of this process: its WebSocket frames
    are read by C code, so the load generator costs little per frame."""
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    return _session


class WS:
    """The few WebSocket calls the scenarios make, over aiohttp.

    A task reads every connection all the time, as a browser does, so that the
    server's keepalive pings get their pongs even while a connection is idle
    between rounds.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._inbox: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self._ws.receive()  # answers pings on the way
            self._inbox.put_nowait(message)
            if message.type is not aiohttp.WSMsgType.TEXT:
                return

    async def send(self, text: str) -> None:
        await self._ws.send_str(text)

    async def recv(self) -> str:
        message = await self._inbox.get()
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"the connection ended: {message.type.name} {message.data!r}")
        return message.data

    async def close(self) -> None:
        self._reader.cancel()
        await self._ws.close()


class Connection:
    """One WebSocket client; runs jobs one after the other."""

    def __init__(self, ws: WS) -> None:
        self.ws = ws
        self.next_id = 0

    @classmethod
    async def open(cls, url: str) -> Connection:
        ws = await session().ws_connect(url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(60))
        return cls(WS(ws))

    async def job(self, model_name: str) -> tuple[float | None, int, float]:
        """Add a job and read it to the end: (seconds to first token, tokens, seconds)."""
        self.next_id += 1
        request = {
            "type": "add",
            "id": self.next_id,
            "query": "benchmark",
            "assistant": assistant(model_name),
        }
        started = time.perf_counter()
        await self.ws.send(orjson.dumps(request).decode())
        first: float | None = None
        tokens = 0
        while True:
            message = orjson.loads(await self.ws.recv())
            kind = message["type"]
            if kind == "running" and message["message"]:
                if first is None:
                    first = time.perf_counter() - started
                # A client that fell behind gets several deltas in one frame.
                tokens += message["message"].count(" t")
            elif kind in TERMINAL or kind == "error":
                if kind != "done":
                    raise RuntimeError(f"job did not finish: {message}")
                return first, tokens, time.perf_counter() - started

    async def close(self) -> None:
        await self.ws.close()


def sdk_client(base_url: str, concurrency: int, *, lean: bool = False) -> openai.AsyncOpenAI:
    """The SDK as applications make it; ``lean``: over the aiohttp transport the
    worker uses."""
    limits = httpx2.Limits(
        max_connections=concurrency + 10, max_keepalive_connections=concurrency + 10
    )
    transport = openai.DefaultAioHttpClient if lean else openai.DefaultAsyncHttpxClient
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key="bench",
        max_retries=0,
        http_client=transport(limits=limits, timeout=120),
    )


async def sdk_job(client: openai.AsyncOpenAI, model_name: str) -> tuple[float | None, int, float]:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "benchmark"}], stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - started
            tokens += 1
    return first, tokens, time.perf_counter() - started


async def lean_job(client: openai.AsyncOpenAI, model_name: str) -> tuple[float | None, int, float]:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    response = await client.post(
        "/chat/completions",
        body={
            "model": model_name,
            "messages": [{"role": "user", "content": "benchmark"}],
            "stream": True,
        },
        cast_to=httpx2.Response,
        stream=True,
        stream_cls=openai.AsyncStream[httpx2.Response],
    )
    try:
        async for data in sse_data(response):  # the provider's own SSE reading
            if data == "[DONE]":
                break
            choices = orjson.loads(data).get("choices")
            if choices and choices[0].get("delta", {}).get("content"):
                if first is None:
                    first = time.perf_counter() - started
                tokens += 1
    finally:
        await response.aclose()
    return first, tokens, time.perf_counter() - started


async def raw_job(host: str, port: int, model_name: str) -> int:
    """The upstream's reply read with no client library: counts SSE events."""
    reader, writer = await asyncio.open_connection(host, port)
    body = orjson.dumps(
        {"model": model_name, "messages": [{"role": "user", "content": "x"}], "stream": True}
    )
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    events = 0
    tail = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        events += (tail + data).count(b"data: ")
        tail = data[-5:]
        if b"[DONE]" in data or data.endswith(b"0\r\n\r\n"):
            break
    writer.close()
    return max(events - 3, 0)  # minus the role chunk, the finish chunk and [DONE]


async def ttft(spec: dict[str, Any]) -> dict[str, Any]:
    concurrency = spec["concurrency"]
    name = model(spec.get("tokens", 5))
    connections = await open_many(spec["ws_url"], concurrency)
    sdk = sdk_client(spec["base_url"], concurrency)
    lean = sdk_client(spec["base_url"], concurrency, lean=True)
    sides = {
        "worker": lambda: asyncio.gather(*(c.job(name) for c in connections)),
        "direct": lambda: asyncio.gather(*(sdk_job(sdk, name) for _ in range(concurrency))),
        "lean": lambda: asyncio.gather(*(lean_job(lean, name) for _ in range(concurrency))),
    }
    samples: dict[str, list[float]] = {side: [] for side in sides}
    try:
        for run in sides.values():  # warm-up: connections, caches, pools
            await run()
        for round_index in range(spec["rounds"]):
            order = list(sides)
            order = order[round_index % 3 :] + order[: round_index % 3]
            for side in order:
                results = await sides[side]()
                samples[side] += [r[0] for r in results if r[0] is not None]
    finally:
        await sdk.close()
        await lean.close()
        await asyncio.gather(*(c.close() for c in connections))
    return {
        f"{side}_ms": {q: percentile(values, p) * 1e3 for q, p in (("p50", 50), ("p99", 99))}
        for side, values in samples.items()
    } | {"samples": len(samples["worker"])}


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    concurrency = spec["concurrency"]
    tokens = spec["tokens"]
    name = model(tokens)
    connections = await open_many(spec["ws_url"], concurrency)
    client = sdk_client(spec["base_url"], concurrency)
    lean = sdk_client(spec["base_url"], concurrency, lean=True)
    host, port = spec["upstream_host"], spec["upstream_port"]
    rates: dict[str, list[float]] = {"worker": [], "direct": [], "lean": [], "upstream": []}

    async def timed(side: str) -> float:
        started = time.perf_counter()
        if side == "worker":
            results = await asyncio.gather(*(c.job(name) for c in connections))
            delivered = sum(r[1] for r in results)
        elif side == "direct":
            results = await asyncio.gather(*(sdk_job(client, name) for _ in range(concurrency)))
            delivered = sum(r[1] for r in results)
        elif side == "lean":
            results = await asyncio.gather(*(lean_job(lean, name) for _ in range(concurrency)))
            delivered = sum(r[1] for r in results)
        else:
            counts = await asyncio.gather(*(raw_job(host, port, name) for _ in range(concurrency)))
            delivered = sum(counts)
        elapsed = time.perf_counter() - started
        if delivered != concurrency * tokens:
            raise RuntimeError(f"{side}: {delivered} tokens of {concurrency * tokens}")
        return delivered / elapsed

    try:
        for side in ("worker", "direct", "lean"):
            await timed(side)  # warm-up
        for round_index in range(spec["rounds"]):
            sides = spec.get("sides", ["worker", "direct", "lean", "upstream"])
            sides = sides[round_index % len(sides) :] + sides[: round_index % len(sides)]
            for side in sides:
                rates[side].append(await timed(side))
    finally:
        await client.close()
        await lean.close()
        await asyncio.gather(*(c.close() for c in connections))
    return {side: sorted(v)[len(v) // 2] for side, v in rates.items() if v} | {"rounds": rates}


async def open_many(url: str, count: int, batch: int = 200) -> list[Connection]:
    connections: list[Connection] = []
    for start in range(0, count, batch):
        connections += await asyncio.gather(
            *(Connection.open(url) for _ in range(min(batch, count - start)))
        )
    return connections


async def scale(spec: dict[str, Any]) -> dict[str, Any]:
    pid = spec["worker_pid"]
    before = rss_kib(pid)
    connections = await open_many(spec["ws_url"], spec["idle"])
    for connection in connections:  # each one accepted and answering
        await connection.ws.send('{"type":"ping"}')
    for connection in connections:
        assert orjson.loads(await connection.ws.recv())["type"] == "pong"
    await asyncio.sleep(0.5)
    idle = rss_kib(pid)

    jobs = spec["jobs"]
    name = model(spec["tokens"], delay=spec["delay"])
    peak = idle
    streaming = asyncio.gather(*(c.job(name) for c in connections[:jobs]))
    while not streaming.done():
        peak = max(peak, rss_kib(pid))
        await asyncio.sleep(0.05)
    results = await streaming
    errors = sum(1 for r in results if r[1] != spec["tokens"])
    after = rss_kib(pid)
    await asyncio.gather(*(c.close() for c in connections))
    return {
        "rss_before_kib": before,
        "rss_idle_kib": idle,
        "rss_streaming_peak_kib": peak,
        "rss_after_kib": after,
        "per_idle_connection_kib": (idle - before) / spec["idle"],
        "per_running_job_kib": (peak - idle) / jobs,
        "errors": errors,
        "jobs_seconds": max(r[2] for r in results),
    }


async def fanout(spec: dict[str, Any]) -> dict[str, Any]:
    tokens = spec["tokens"]
    adder = await Connection.open(spec["ws_url"])
    listeners = await open_many(spec["ws_url"], spec["listeners"])
    # Queued behind a slow first token so every listener is in place before it streams.
    request = {
        "type": "add",
        "id": 1,
        "query": "fan-out",
        "assistant": assistant(model(tokens, first_delay=0.5)),
    }
    await adder.ws.send(orjson.dumps(request).decode())
    job_id = orjson.loads(await adder.ws.recv())["job_id"]

    async def listen(connection: Connection) -> tuple[float, float, int]:
        await connection.ws.send(orjson.dumps({"type": "listen", "job_id": job_id}).decode())
        first = 0.0
        received = 0
        while True:
            message = orjson.loads(await connection.ws.recv())
            if message["type"] == "running" and message["message"]:
                if not first:
                    first = time.perf_counter()
                # A listener that fell behind may get several deltas in one frame.
                received += message["message"].count(" t")
            elif message["type"] in TERMINAL:
                return first, time.perf_counter(), received

    results = await asyncio.gather(*(listen(c) for c in listeners))
    started = min(r[0] for r in results)
    ended = max(r[1] for r in results)
    delivered = sum(r[2] for r in results)
    await asyncio.gather(adder.close(), *(c.close() for c in listeners))
    if delivered != tokens * spec["listeners"]:
        raise RuntimeError(f"fan-out delivered {delivered} of {tokens * spec['listeners']}")
    return {"tokens_per_second": delivered / (ended - started), "seconds": ended - started}


async def peer(spec: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-compatible proxy (LiteLLM) in front of the same server, called by the SDK,
    interleaved with the SDK calling the server directly."""
    concurrency = spec["concurrency"]
    direct = sdk_client(spec["base_url"], concurrency)
    proxied = openai.AsyncOpenAI(
        base_url=spec["peer_base_url"],
        api_key=spec["peer_key"],
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(
            limits=httpx2.Limits(max_connections=concurrency + 10), timeout=120
        ),
    )
    ttft_samples: dict[str, list[float]] = {"direct": [], "peer": []}
    rates: dict[str, list[float]] = {"direct": [], "peer": []}
    short = {"direct": model(5), "peer": spec["peer_models"]["ttft"]}
    long = {"direct": model(spec["tokens"]), "peer": spec["peer_models"]["throughput"]}
    clients = {"direct": direct, "peer": proxied}
    try:
        for side in clients:  # warm-up
            await asyncio.gather(*(sdk_job(clients[side], short[side]) for _ in range(concurrency)))
        for round_index in range(spec["rounds"]):
            for side in ("direct", "peer") if round_index % 2 == 0 else ("peer", "direct"):
                results = await asyncio.gather(
                    *(sdk_job(clients[side], short[side]) for _ in range(concurrency))
                )
                ttft_samples[side] += [r[0] for r in results if r[0] is not None]
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(sdk_job(clients[side], long[side]) for _ in range(concurrency))
                )
                rates[side].append(sum(r[1] for r in results) / (time.perf_counter() - started))
    finally:
        await direct.close()
        await proxied.close()
    return {
        side: {
            "p50": percentile(ttft_samples[side], 50) * 1e3,
            "p99": percentile(ttft_samples[side], 99) * 1e3,
            "throughput": sorted(rates[side])[len(rates[side]) // 2],
        }
        for side in clients
    }


SCENARIOS = {
    "ttft": ttft,
    "throughput": throughput,
    "scale": scale,
    "fanout": fanout,
    "peer": peer,
}


async def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = await SCENARIOS[spec["scenario"]](spec)
    finally:
        if _session is not None:
            await _session.close()
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
