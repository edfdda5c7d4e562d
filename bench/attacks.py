"""What single hostile or careless clients can do to a worker, measured.

Starts a worker (``llm-worker serve``, SQLite store, defaults but for the key
settings each scenario names) against a loopback model server in this
process, then tries, one after the other, what one client could send to hurt
it, and prints what happened as a Markdown table: the worker's memory (RSS),
whether it refused, how long it took to recover. docs/security.md (Measured)
quotes this table.

    python bench/attacks.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

from llm_worker.testing.openai_server import OpenAIServer, Reply, echo_reply
from llm_worker.testing.processes import WorkerProcess, clean_env
from percentiles import percentile

SUBPROTOCOL = "llm-worker.v2"


def assistant(content: str = "{query}", streams: int = 1) -> dict[str, Any]:
    stream = {
        "provider": "openai",
        "settings": {"model": "m"},
        "messages": [{"insert": "history"}, {"role": "user", "content": content}],
    }
    return {"streams": [stream] * streams}


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if "VmRSS" in line) / 1024


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def until_files_below(pid: int, limit: int, deadline: float) -> float:
    """The moment ``pid`` holds fewer than ``limit`` files (or ``deadline`` s have passed)."""
    give_up = time.perf_counter() + deadline
    while time.perf_counter() < give_up:
        if open_files(pid) < limit:
            break
        await asyncio.sleep(0.25)
    return time.perf_counter()


async def ask(url: str, frame: dict[str, Any]) -> list[dict[str, Any]]:
    """Send one frame on a new connection; the messages until a reply ends the request."""
    async with websockets.connect(url, subprotocols=[SUBPROTOCOL], max_size=None) as ws:
        await ws.send(json.dumps(frame))
        received = []
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 60))
            received.append(message)
            if message["type"] in ("error", "done", "failed", "cancelled"):
                return received


class Target:
    """The worker under attack, and the model server behind it."""

    def __init__(self, worker: WorkerProcess, upstream: OpenAIServer) -> None:
        self.worker = worker
        self.upstream = upstream

    @property
    def url(self) -> str:
        return self.worker.ws_url

    @property
    def pid(self) -> int:
        return self.worker.process.pid

    async def alive(self) -> float:
        """Milliseconds a ping takes on a new connection (it fails if the worker is down)."""
        started = time.perf_counter()
        async with websockets.connect(self.url, open_timeout=10) as ws:
            await ws.send('{"type": "ping"}')
            await asyncio.wait_for(ws.recv(), 10)
        return (time.perf_counter() - started) * 1000


Scenario = Callable[[Target], Awaitable[str]]


async def non_reading_listeners(target: Target, connections: int = 100) -> str:
    target.upstream.handler = lambda body: Reply(tokens=[f" token{i}" for i in range(20_000)])
    job_id = (
        await ask(target.url, {"type": "add", "id": 1, "query": "q", "assistant": assistant()})
    )[0]["job_id"]
    await asyncio.sleep(1)
    before = rss_mib(target.pid)
    clients = []
    for _ in range(connections):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", target.worker.port or 0))
        ws = await websockets.connect(target.url, sock=sock, max_queue=1, max_size=None)
        for after in range(50):
            await ws.send(json.dumps({"type": "listen", "job_id": job_id, "after": after}))
        clients.append(ws)
    await asyncio.sleep(3)
    during = rss_mib(target.pid)
    for ws in clients:
        ws.transport.abort()
    await asyncio.sleep(2)
    after = rss_mib(target.pid)
    return (
        f"+{(during - before) / connections * 1024:.0f} KiB RSS per connection "
        f"({during - before:+.0f} MiB for {connections}); "
        f"{after - before:+.0f} MiB once they closed"
    )


async def half_open_sockets(target: Target, count: int = 15_000) -> str:
    target.upstream.handler = lambda body: Reply(tokens=[" a"] * 200, delay=0.05)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    count = min(count, hard - 200)
    job = asyncio.create_task(
        ask(target.url, {"type": "add", "id": 1, "query": "q", "assistant": assistant()})
    )
    writers = []
    refused = 0
    for _ in range(count):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", target.worker.port)
        except OSError:
            refused += 1
            continue
        writer.write(b"GET /ws/ HTTP/1.1\r\nHost: x\r\n")
        writers.append(writer)
    peak_files = open_files(target.pid)
    try:
        meanwhile = f"served (ping {await target.alive():.0f} ms)"
    except websockets.InvalidStatus as exc:
        meanwhile = f"answered {exc.response.status_code}"
    started = time.perf_counter()
    cleared = await until_files_below(target.pid, 200, deadline=30) - started
    ping_ms = await target.alive()
    outcome = (await job)[-1]["type"]
    for writer in writers:
        writer.close()
    return (
        f"{count:,} sockets: the worker held {peak_files:,} files at most (MAX_CONNECTIONS "
        f"10,000; the rest answered 503); a new client meanwhile was {meanwhile}; all were "
        f"closed {cleared:.0f} s later (HANDSHAKE_TIMEOUT_SECONDS 10), then a ping took "
        f"{ping_ms:.0f} ms; the running job: {outcome}"
    )


async def big_adds(target: Target, count: int = 300) -> str:
    target.upstream.handler = lambda body: Reply(tokens=[" a"], first_delay=600)
    history = [{"role": "user", "content": "h" * 1000}] * 1000  # ~1 MiB, the most allowed
    ws = await websockets.connect(target.url, subprotocols=[SUBPROTOCOL], max_size=None)
    # Keep the workers busy, so the adds queue.
    for index in range(16):
        await ws.send(
            json.dumps({"type": "add", "id": f"b{index}", "query": "q", "assistant": assistant()})
        )
    await asyncio.sleep(1)
    before = rss_mib(target.pid)
    queued = refused = 0
    for index in range(count):
        frame = {
            "type": "add",
            "id": index,
            "query": "q",
            "assistant": assistant(),
            "history": history,
        }
        await ws.send(json.dumps(frame))
    while queued + refused < count:
        message = json.loads(await asyncio.wait_for(ws.recv(), 60))
        queued += message["type"] == "resp_add" and isinstance(message["id"], int)
        refused += message["type"] == "error"
    grown = rss_mib(target.pid) - before
    await ws.close()
    return (
        f"{queued} queued, {refused} refused (QUEUE_MAX_BYTES 256 MiB): "
        f"{grown / max(queued, 1):.1f} MiB RSS per queued job; 36k-message histories are "
        "refused (MAX_HISTORY_MESSAGES 1,000)"
    )


async def amplified_request(target: Target) -> str:
    target.upstream.handler = echo_reply
    frame = {
        "type": "add",
        "id": 1,
        "query": "q",
        "assistant": assistant("{a}" * 10_000),
        "variables": {"a": "x" * 50_000},
    }
    before = len(target.upstream.chat_requests)
    reply = (await ask(target.url, frame))[-1]
    sent = len(target.upstream.chat_requests) - before
    return f"refused at add ({reply['message'][:90]}...); {sent} requests upstream"


async def distinct_templates(target: Target, count: int = 40) -> str:
    target.upstream.handler = echo_reply
    before = rss_mib(target.pid)
    for index in range(count):
        template = assistant(f"{index} " + "x" * 990_000 + " {query}")
        await ask(target.url, {"type": "add", "id": index, "query": "q", "assistant": template})
    await asyncio.sleep(1)
    return f"{(rss_mib(target.pid) - before) / count:+.2f} MiB RSS per template"


async def many_streams(target: Target) -> str:
    before = len(target.upstream.chat_requests)
    reply = (
        await ask(
            target.url, {"type": "add", "id": 1, "query": "q", "assistant": assistant(streams=5000)}
        )
    )[-1]
    sent = len(target.upstream.chat_requests) - before
    return f"refused at add ({reply['message']}); {sent} model calls"


async def drain(target: Target, jobs: int, follow: bool) -> tuple[float, list[float]]:
    """Seconds for ``jobs`` queued jobs to finish, their adder following them or gone,
    and the pings (ms) a new client measured meanwhile.

    The model server holds every request until the last job is queued, so the
    clock starts with the whole queue waiting.
    """
    gate = asyncio.Event()

    async def held(body: dict[str, Any]) -> Reply:
        await gate.wait()
        return Reply(tokens=[" a", " b"])

    target.upstream.handler = held
    ws = await websockets.connect(target.url, subprotocols=[SUBPROTOCOL], max_size=None)
    ids = []
    for index in range(jobs):
        await ws.send(
            json.dumps({"type": "add", "id": index, "query": "q", "assistant": assistant()})
        )
    while len(ids) < jobs:
        message = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if message["type"] == "resp_add":
            ids.append(message["job_id"])
        elif message["type"] == "error":
            raise RuntimeError(message["message"])
    if not follow:
        await ws.close()
    pings: list[float] = []

    async def ping_now_and_then() -> None:
        while True:
            pings.append(await target.alive())
            await asyncio.sleep(0.2)

    async with websockets.connect(target.url, subprotocols=[SUBPROTOCOL], max_size=None) as watcher:
        await watcher.send(json.dumps({"type": "listen", "job_id": ids[-1]}))
        started = time.perf_counter()
        gate.set()
        pinger = asyncio.create_task(ping_now_and_then())
        while json.loads(await asyncio.wait_for(watcher.recv(), 600))["type"] != "done":
            pass
        elapsed = time.perf_counter() - started
    pinger.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pinger
    if follow:
        # Its pending updates arrived meanwhile; the connection must still be there.
        await ws.send('{"type": "ping"}')
        await ws.close()
    return elapsed, pings


async def queued_followed(target: Target, jobs: int = 10_000) -> str:
    alone, _ = await drain(target, jobs, follow=False)
    followed, pings = await drain(target, jobs, follow=True)
    p99 = percentile(pings, 99)
    return (
        f"{jobs:,} jobs drained in {followed:.1f} s with their adder following them, "
        f"{alone:.1f} s with it gone ({followed / alone:.2f}x); ping p99 {p99:.0f} ms meanwhile "
        "(limits lifted for the measurement: by default one tenant queues 1,000 jobs and "
        "one connection follows 1,000)"
    )


async def leaky_provider(target: Target) -> str:
    key = PROVIDER_KEY  # the deployment's own key, as a provider's 401 quotes it
    target.upstream.handler = lambda body: Reply(
        status=401, error=f"Incorrect API key provided: {key}"
    )
    reply = (
        await ask(target.url, {"type": "add", "id": 1, "query": "q", "assistant": assistant()})
    )[-1]
    return f"`{reply['message']}`" if key not in reply["message"] else "LEAKED"


async def leaky_base_url(target: Target) -> str:
    target.upstream.handler = lambda body: Reply(status=500, error="upstream broke")
    reply = (
        await ask(target.url, {"type": "add", "id": 1, "query": "q", "assistant": assistant()})
    )[-1]
    return f"`{reply['message']}`" if URL_KEY not in reply["message"] else "LEAKED"


async def deep_settings(target: Target) -> str:
    depth = 1000
    template = json.dumps(assistant())
    # Built as text: json.dumps itself cannot write a value this deep.
    deep = '{"a": ' * depth + "{}" + "}" * depth
    frame = template.replace('{"model": "m"}', '{"model": "m", "deep": ' + deep + "}")
    add = '{"type": "add", "id": 1, "query": "q", "assistant": ' + frame + "}"
    async with websockets.connect(target.url, subprotocols=[SUBPROTOCOL]) as ws:
        await ws.send(add)
        reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
    return f"`{reply['type']}`: `{reply['message']}`"


URL_KEY = "azure-key-0123456789"
PROVIDER_KEY = "sk-bench-0123456789"

LIFTED = {  # what one client needs to queue and follow 10,000 jobs
    "TENANT_MAX_QUEUED_JOBS": "20000",
    "TENANT_ADDS_PER_MINUTE": "100000",
    "MAX_FOLLOWED_JOBS": "20000",
}


@dataclass(frozen=True)
class Attack:
    title: str  # what one client sends
    run: Scenario
    env: dict[str, str] = field(default_factory=dict)  # settings beyond the defaults
    base_url_query: str = ""  # appended to the provider's base URL


ATTACKS = [
    Attack(
        "non-reading connections, each sending 50 `listen` for a finished 20k-token job",
        non_reading_listeners,
    ),
    Attack(
        "15,000 sockets sending a request line and one header, never finishing",
        half_open_sockets,
    ),
    Attack("300 `add`s of 1 MiB (1,000 history messages of 1 KB)", big_adds),
    Attack(
        "a 56 KB request: variable of 50,000 characters, content `{a}` repeated 10,000 times",
        amplified_request,
    ),
    Attack("40 different 990 KB templates", distinct_templates),
    Attack("one template with 5,000 streams", many_streams),
    Attack("10,000 queued jobs while the adder follows them", queued_followed, LIFTED),
    Attack("a provider answering 401 with the key in its message", leaky_provider),
    Attack(
        "a base URL carrying `?api-key=...`, the provider failing",
        leaky_base_url,
        base_url_query=f"?api-key={URL_KEY}",
    ),
    Attack("a `settings` value nested 1,000 levels deep", deep_settings),
]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller numbers, for a smoke run")
    args = parser.parse_args()
    rows = []
    async with OpenAIServer() as upstream:
        for attack in ATTACKS:
            scenario = attack.run
            with tempfile.TemporaryDirectory() as workdir:
                env = clean_env(
                    LISTEN_PORT="0",
                    OPENAI_API_KEY=PROVIDER_KEY,
                    OPENAI_BASE_URL=upstream.base_url + attack.base_url_query,
                    QUEUE_MAX="20000",
                    **attack.env,
                )
                worker = await WorkerProcess.start(env, Path(workdir))
                target = Target(worker, upstream)
                try:
                    if args.quick and scenario is queued_followed:
                        outcome = await queued_followed(target, jobs=500)
                    elif args.quick and scenario is half_open_sockets:
                        outcome = await half_open_sockets(target, count=500)
                    else:
                        outcome = await scenario(target)
                    await target.alive()  # the worker is still there
                except Exception as exc:
                    outcome = f"FAILED: {exc!r}"
                finally:
                    await worker.stop(timeout=60)
            print(f"| {attack.title} | {outcome} |", flush=True)
            rows.append(outcome)
    if any(outcome.startswith(("FAILED", "LEAKED")) for outcome in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
