"""A worker for the JavaScript client's tests, behind a proxy the tests can cut.

Starts, in this process and one event loop:

* a loopback OpenAI-compatible server whose reply depends on the user's query:
  ``slow:N`` is N tokens `` t0`` ... 0.05 s apart, ``tokens:N`` the same at once,
  ``fail`` an HTTP 400 from upstream (the job fails), ``tools`` (``tools:slow``: its
  chunks 0.05 s apart) some reasoning and two tool calls, ``get_weather`` and
  ``get_time`` (:data:`CALLS`), their arguments in chunks of 2 or 3 characters; a
  history ending with tool results, those results; anything else its own words,
  one token each (the job's text is then the query, trimmed);
* the worker (gateway and worker, ``memory://`` store), its ``openai`` provider
  pointed at that server;
* a TCP proxy in front of the worker (tests/support/tcp_proxy.py), and a control server:
  ``POST /cut`` aborts every connection through the proxy (answers ``{"cut": n}``),
  ``POST /block`` makes the proxy drop new connections at once, ``POST /unblock``
  undoes it, ``GET /stats`` answers ``{"accepted", "open", "dropped"}``.

When ready it prints one JSON line, ``{"url": proxy, "direct": worker, "control":
control}``, and runs until its stdin closes.

    .venv/bin/python tests/js/serve_for_js.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import threading
from pathlib import Path
from typing import Any

from llm_worker.testing.openai_server import OpenAIServer, Reply, ScriptedCall

# Run as a script (node spawns it): the repository's root holds the tests package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.servers import make_settings, serve
from tests.support.tcp_proxy import CuttingProxy

_WORD = re.compile(r"\s*\S+")
SLOW_TOKEN_SECONDS = 0.05
CALLS = [
    ScriptedCall("call_a", "get_weather", '{"city": "Paris", "unit": "celsius"}', piece=3),
    ScriptedCall("call_b", "get_time", '{"timezone": "Europe/Paris"}', piece=2),
]


def reply_for(body: dict[str, Any]) -> Reply:
    """The upstream's reply: to tool results, them; else chosen by the last user message
    (the job's query)."""
    messages = body.get("messages", [])
    if messages and messages[-1]["role"] == "tool":
        results = " ".join(m["content"] for m in messages if m["role"] == "tool")
        return Reply(tokens=_WORD.findall(results))
    query = next(
        (m.get("content", "") for m in reversed(messages) if m["role"] == "user"),
        "",
    )
    kind, _, count = query.partition(":")
    if kind == "slow" and count.isdigit():
        return Reply(tokens=[f" t{i}" for i in range(int(count))], delay=SLOW_TOKEN_SECONDS)
    if kind == "tokens" and count.isdigit():
        return Reply(tokens=[f" t{i}" for i in range(int(count))])
    if query == "fail":
        return Reply(status=400, error="told to fail")
    if kind == "tools":
        delay = SLOW_TOKEN_SECONDS if count == "slow" else 0.0
        return Reply(reasoning=["Two ", "tools."], tool_calls=CALLS, delay=delay)
    return Reply(tokens=_WORD.findall(query))


class Control:
    """A tiny HTTP server that orders the proxy about."""

    def __init__(self, proxy: CuttingProxy) -> None:
        self.proxy = proxy
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def answer(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        proxy = self.proxy
        if method == "POST" and path == "/cut":
            return 200, {"cut": proxy.cut()}
        if method == "POST" and path == "/block":
            proxy.block()
            return 200, {"blocked": True}
        if method == "POST" and path == "/unblock":
            proxy.unblock()
            return 200, {"blocked": False}
        if method == "GET" and path == "/stats":
            return 200, {
                "accepted": proxy.accepted,
                "open": proxy.open_connections,
                "dropped": proxy.dropped,
            }
        return 404, {"error": f"no {method} {path}"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path, _ = head.decode("latin-1").split("\r\n", 1)[0].split(" ", 2)
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length" and value.strip().isdigit():
                    await reader.readexactly(int(value.strip()))
            status, body = self.answer(method, path.partition("?")[0])
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                "connection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


def stdin_closed(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """An event set once stdin reaches its end (the test runner went away)."""
    closed = asyncio.Event()

    def wait() -> None:
        with contextlib.suppress(Exception):
            while sys.stdin.buffer.read(4096):
                pass
        loop.call_soon_threadsafe(closed.set)

    threading.Thread(target=wait, name="stdin-watch", daemon=True).start()
    return closed


async def main() -> None:
    closed = stdin_closed(asyncio.get_running_loop())
    async with (
        OpenAIServer(reply_for) as upstream,
        serve(make_settings(openai_api_key="sk-test", openai_base_url=upstream.base_url)) as worker,
        CuttingProxy(worker.port) as proxy,
    ):
        control = Control(proxy)
        await control.start()
        try:
            ready = {
                "url": f"http://127.0.0.1:{proxy.port}",
                "direct": f"http://127.0.0.1:{worker.port}",
                "control": f"http://127.0.0.1:{control.port}",
            }
            print(json.dumps(ready), flush=True)
            await closed.wait()
        finally:
            await control.close()


if __name__ == "__main__":
    asyncio.run(main())
