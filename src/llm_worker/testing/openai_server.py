"""A loopback OpenAI-compatible server that streams chat completions.

For tests and benchmarks: it speaks HTTP/1.1 with keep-alive and the
chat-completions SSE format, records every request, and does what a
:class:`Reply` says -- answer slowly, fail with a status, or cut the stream.
It also counts TCP connections and notices clients that hang up mid-reply,
which is how tests see connection reuse and cancellation from the outside.

Run it by hand to try the worker without an API key::

    python -m llm_worker.testing.openai_server --port 8100 --delay 0.05

then point a provider at ``http://127.0.0.1:8100/v1``. A model named like
``fake:tokens=100,delay=0.01,first_delay=0.2`` gets exactly that reply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import inspect
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

_WORD = re.compile(r"\s*\S+")

LineEnd = Literal["\n", "\r\n", "\r"]


@dataclass
class Reply:
    """What the server does with one chat-completions request."""

    tokens: list[str] = field(default_factory=list)
    """The content deltas, one SSE event each."""
    status: int = 200
    error: str = "simulated failure"
    """The error message of a non-200 reply."""
    error_body: Any = None
    """The JSON body of a non-200 reply, instead of OpenAI's shape around ``error``."""
    empty: bool = False
    """A 200 reply whose stream ends without a single event (llama.cpp's server
    does this when the prompt is longer than its context)."""
    headers: dict[str, str] = field(default_factory=dict)
    first_delay: float = 0.0
    """Seconds before the response head (time to first byte)."""
    delay: float = 0.0
    """Seconds before each token."""
    cut_after: int | None = None
    """Stop after this many tokens, without a finish marker."""
    cut_mode: Literal["abort", "clean"] = "abort"
    """``abort``: drop the connection mid-body. ``clean``: end the body properly,
    but with neither ``finish_reason`` nor ``[DONE]``."""
    finish_reason: str = "stop"
    usage: bool = True
    """Whether to say what the reply took (a last chunk with ``usage``) when the request
    asks (``stream_options.include_usage``), as OpenAI does; some servers never do."""
    line_end: LineEnd = "\n"
    """How the event stream's lines end, of the three ways the SSE standard allows:
    LF, CRLF or CR (``"\\n"``, ``"\\r\\n"``, ``"\\r"``)."""
    write_size: int | None = None
    """Send the event stream in HTTP chunks of this many bytes, each written and drained
    on its own, so that a client reads it split everywhere (``1``: a byte per read);
    ``None``: a chunk per event."""


def directed_reply(body: dict[str, Any]) -> Reply | None:
    """A reply described by the model name: ``fake:tokens=100,delay=0.01,first_delay=0.2``.

    Lets one server process answer every scenario of a benchmark; ``None`` for
    any other model name.
    """
    model = str(body.get("model", ""))
    if not model.startswith("fake:"):
        return None
    options = dict(item.split("=", 1) for item in model[5:].split(",") if "=" in item)
    count = int(options.get("tokens", 20))
    return Reply(
        tokens=[f" t{i}" for i in range(count)],
        delay=float(options.get("delay", 0)),
        first_delay=float(options.get("first_delay", 0)),
    )


def echo_reply(body: dict[str, Any]) -> Reply:
    """The default: ``Echo: <last user message>``, a word per token."""
    last_user = next(
        (m.get("content", "") for m in reversed(body.get("messages", [])) if m["role"] == "user"),
        "",
    )
    return Reply(tokens=_WORD.findall(f"Echo: {last_user}"))


Handler = Callable[[dict[str, Any]], "Reply | Awaitable[Reply]"]


@dataclass
class RecordedRequest:
    """A request the server received, and what became of its reply."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float
    tokens_sent: int = 0
    completed: bool = False
    """The whole reply, finish marker included, was written."""
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the client hung up before the reply was complete."""
    ended_at: float | None = None
    """When the reply ended, complete or not (``time.monotonic()``)."""


class OpenAIServer:
    """``async with OpenAIServer() as server:`` serves at ``server.base_url``."""

    def __init__(
        self, handler: Handler | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.handler: Handler = handler or echo_reply
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self.port, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for handler in list(self._handlers):
                handler.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> OpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.partition("?")[0].endswith("/chat/completions")]

    # -- HTTP ---------------------------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        self._writers.add(writer)
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                keep_alive = await self._respond(request, reader, writer)
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # close() cancels handlers mid-reply; ending quietly keeps Python 3.11's
            # start_server from printing each one's traceback (fixed in 3.12).
            return
        finally:
            self._handlers.discard(handler)
            self._writers.discard(writer)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> RecordedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        raw = await reader.readexactly(length) if length else b""
        body = orjson.loads(raw) if raw else {}
        recorded = RecordedRequest(method, path, headers, body, time.monotonic())
        self.requests.append(recorded)
        return recorded

    async def _respond(
        self, request: RecordedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        path = request.path.partition("?")[0]
        if request.method == "GET" and path.rstrip("/").endswith("/models"):
            self._write_json(writer, 200, {"object": "list", "data": []}, {})
            return True
        if request.method != "POST" or not path.endswith("/chat/completions"):
            self._write_json(writer, 404, {"error": {"message": "not found"}}, {})
            return True
        reply = self.handler(request.body)
        if inspect.isawaitable(reply):
            reply = await reply
        if reply.first_delay:
            await asyncio.sleep(reply.first_delay)
        if reply.status != 200:
            error = reply.error_body
            if error is None:
                error = {
                    "error": {"message": reply.error, "type": "simulated", "code": reply.status}
                }
            self._write_json(writer, reply.status, error, reply.headers)
            return True
        return await self._stream(request, reply, reader, writer)

    @staticmethod
    def _write_json(
        writer: asyncio.StreamWriter, status: int, body: Any, headers: dict[str, str]
    ) -> None:
        payload = orjson.dumps(body)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
            f"{extra}\r\n".encode()
            + payload
        )

    async def _stream(
        self,
        request: RecordedRequest,
        reply: Reply,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        model = request.body.get("model", "fake")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        if reply.empty:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        # A hang-up shows as EOF on the read side while we write.
        watcher = asyncio.create_task(_wait_for_eof(reader, request.client_gone))
        # Lines ended or pieces sized otherwise than by default take the slow road.
        reshaped = reply.line_end != "\n" or reply.write_size is not None
        try:
            opening = _event(model, {"role": "assistant", "content": ""}, None)
            await write_events(writer, opening, reply.line_end, reply.write_size)
            for index, token in enumerate(reply.tokens):
                if reply.cut_after is not None and index >= reply.cut_after:
                    if reply.cut_mode == "abort":
                        writer.transport.abort()
                        return False
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return True
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                elif index % 32 == 31:
                    await asyncio.sleep(0)  # a burst must not starve other replies
                if request.client_gone.is_set():
                    return False
                if reshaped:
                    content = _event(model, {"content": token}, None)
                    await write_events(writer, content, reply.line_end, reply.write_size)
                else:
                    writer.write(_content_chunk(model, token))
                request.tokens_sent += 1
                # Wait for the client only when it falls behind, not after every token.
                if writer.transport.get_write_buffer_size() > _HIGH_WATER:
                    await writer.drain()
            # Stop watching before the reply ends: the client's next request may follow it.
            await _stop(watcher)
            if request.client_gone.is_set():
                return False
            await _finish(writer, request, reply, model)
            return True
        except ConnectionError:
            request.client_gone.set()
            return False
        finally:
            await _stop(watcher)
            request.ended_at = time.monotonic()


async def _finish(
    writer: asyncio.StreamWriter, request: RecordedRequest, reply: Reply, model: str
) -> None:
    """A reply's end: its finish reason, its usage when asked for, ``[DONE]``."""
    endings = [_event(model, {}, reply.finish_reason)]
    options = request.body.get("stream_options")
    if reply.usage and isinstance(options, dict) and options.get("include_usage"):
        endings.append(_usage_event(model, request.body, len(reply.tokens)))
    endings.append(b"data: [DONE]\n\n")
    for ending in endings:
        await write_events(writer, ending, reply.line_end, reply.write_size)
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    request.completed = True


async def write_events(
    writer: asyncio.StreamWriter, events: bytes, line_end: LineEnd, write_size: int | None
) -> None:
    """Write ``events`` (server-sent events whose lines end in LF) in the HTTP chunks of
    a chunked body, their lines ended by ``line_end``, ``write_size`` bytes a chunk."""
    if line_end != "\n":
        # The JSON of an event holds no raw LF or CR: every one is a line end.
        events = events.replace(b"\n", line_end.encode())
    if write_size is None:
        writer.write(_chunk(events))
        return
    for start in range(0, len(events), write_size):
        writer.write(_chunk(events[start : start + write_size]))
        await writer.drain()


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _wait_for_eof(reader: asyncio.StreamReader, gone: asyncio.Event) -> None:
    with contextlib.suppress(ConnectionError):
        # Mid-reply the client sends nothing more, so a read that returns means
        # the connection closed.
        await reader.read(1)
    gone.set()


def prompt_tokens(body: dict[str, Any]) -> int:
    """What this server counts as a request's prompt tokens: its messages' words."""
    return sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))


def _usage_event(model: str, body: dict[str, Any], completion: int) -> bytes:
    prompt = prompt_tokens(body)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion}  # fmt: skip
    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
             "model": model, "choices": [], "usage": usage}  # fmt: skip
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _event(model: str, delta: dict[str, Any], finish_reason: str | None) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


@functools.lru_cache(maxsize=65536)
def _content_chunk(model: str, token: str) -> bytes:
    return _chunk(_event(model, {"content": token}, None))


_HIGH_WATER = 64 * 1024


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each token")
    parser.add_argument(
        "--tokens", type=int, default=0, help="reply with this many tokens instead of an echo"
    )
    args = parser.parse_args()
    fixed = [f" t{i}" for i in range(args.tokens)]

    def handler(body: dict[str, Any]) -> Reply:
        directed = directed_reply(body)
        if directed is not None:
            return directed
        reply = Reply(tokens=fixed) if fixed else echo_reply(body)
        reply.delay = args.delay
        return reply

    async with OpenAIServer(handler, host=args.host, port=args.port) as server:
        print(f"OpenAI-compatible test server at {server.base_url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop
        except ImportError:
            asyncio.run(_main())
        else:
            uvloop.run(_main())
