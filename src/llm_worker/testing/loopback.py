"""What the loopback model servers share: HTTP/1.1 serving and a streamed reply.

A loopback server (:mod:`~llm_worker.testing.openai_server`,
:mod:`~llm_worker.testing.anthropic_server`) is a :class:`LoopbackServer` that knows
only its wire format: which requests it answers without asking its handler, the
shape of an error body, and the events of a reply. The rest is here: keep-alive
connections, a record of every request, connections counted, replies delayed,
failed or cut, clients that hang up mid-reply noticed, and an event stream's lines
ended and its chunks sized as a test asks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Self, TypeVar

import orjson

_WORD = re.compile(r"\s*\S+")

LineEnd = Literal["\n", "\r\n", "\r"]


@dataclass
class StreamedReply:
    """What a loopback server does with one request, as far as both wire formats
    agree; each server's ``Reply`` adds what is its own."""

    tokens: list[str] = field(default_factory=list)
    """The text deltas, one event each."""
    status: int = 200
    error: str = "simulated failure"
    """The error message of a non-200 reply."""
    error_body: Any = None
    """The JSON body of a non-200 reply, instead of the API's shape around ``error``."""
    headers: dict[str, str] = field(default_factory=dict)
    """Headers of the response (``retry-after``, say)."""
    first_delay: float = 0.0
    """Seconds before the response head (time to first byte)."""
    delay: float = 0.0
    """Seconds before each token."""
    cut_after: int | None = None
    """Stop after this many tokens, without the reply's finish events."""
    cut_mode: Literal["abort", "clean"] = "abort"
    """``abort``: drop the connection mid-body. ``clean``: end the body properly, but
    without the reply's finish events."""
    line_end: LineEnd = "\n"
    """How the event stream's lines end, of the three ways the SSE standard allows:
    LF, CRLF or CR (``"\\n"``, ``"\\r\\n"``, ``"\\r"``)."""
    write_size: int | None = None
    """Send the event stream in HTTP chunks of this many bytes, each written and drained
    on its own, so that a client reads it split everywhere (``1``: a byte per read);
    ``None``: a chunk per write of events."""


ReplyT = TypeVar("ReplyT", bound=StreamedReply)


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
    """The whole reply, finish events included, was written."""
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the client hung up before the reply was complete."""
    ended_at: float | None = None
    """When the reply ended, complete or not (``time.monotonic()``)."""


class EventStream:
    """The body of one streamed reply (chunked ``text/event-stream``), written as the
    reply asks; notices the client hanging up, which shows as EOF on the read side
    while we write. Its methods that end the reply return whether the connection may
    serve the client's next request."""

    def __init__(
        self,
        request: RecordedRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        reply: StreamedReply,
    ) -> None:
        self.request = request
        self.writer = writer
        self.line_end = reply.line_end
        self.write_size = reply.write_size
        # Lines ended or pieces sized otherwise than by default take the slow road.
        self._reshaped = reply.line_end != "\n" or reply.write_size is not None
        self._watcher = asyncio.create_task(_wait_for_eof(reader, request.client_gone))

    async def send(self, events: bytes) -> None:
        """Write ``events``, server-sent events whose lines end in LF."""
        await write_events(self.writer, events, self.line_end, self.write_size)

    async def send_tokens(self, events: Iterable[bytes], delay: float) -> bool:
        """Send each of ``events`` (one token's each), ``delay`` seconds apart, counting
        them in ``tokens_sent``; ``False`` when the client hung up first."""
        for index, event in enumerate(events):
            if delay:
                await asyncio.sleep(delay)
            elif index % 32 == 31:
                await asyncio.sleep(0)  # a burst must not starve other replies
            if self.request.client_gone.is_set():
                return False
            if self._reshaped:
                await self.send(event)
            else:
                self.writer.write(_chunk(event))
            self.request.tokens_sent += 1
            # Wait for the client only when it falls behind, not after every token.
            if self.writer.transport.get_write_buffer_size() > _HIGH_WATER:
                await self.writer.drain()
        return True

    async def end(self, last_events: bytes = b"", *, completed: bool) -> bool:
        """Send ``last_events`` and end the body; ``completed``: the reply was whole."""
        # Stop watching before the reply ends: the client's next request may follow it.
        await self.stop_watching()
        if self.request.client_gone.is_set():
            return False
        if last_events:
            await self.send(last_events)
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()
        self.request.completed = completed
        return True

    async def cut(self, mode: Literal["abort", "clean"]) -> bool:
        """End the reply unfinished: drop the connection, or end the body cleanly."""
        if mode == "abort":
            self.writer.transport.abort()
            return False
        return await self.end(completed=False)

    async def stop_watching(self) -> None:
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher


@contextlib.asynccontextmanager
async def event_stream(
    request: RecordedRequest,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    reply: StreamedReply,
) -> AsyncIterator[EventStream]:
    """Write the head of a streamed reply and yield its body; a connection lost on the
    way ends the block quietly, the client marked gone."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n" + extra.encode() + b"\r\n"
    )
    stream = EventStream(request, reader, writer, reply)
    try:
        yield stream
    except ConnectionError:
        request.client_gone.set()
    finally:
        await stream.stop_watching()
        request.ended_at = time.monotonic()


def echo_tokens(body: dict[str, Any]) -> list[str]:
    """The default reply's tokens: ``Echo: <last user message>``, a word each."""
    last_user = next(
        (m.get("content", "") for m in reversed(body.get("messages", [])) if m["role"] == "user"),
        "",
    )
    return _WORD.findall(f"Echo: {last_user}")


def message_words(body: dict[str, Any]) -> int:
    """The words of a request's messages, which the servers count as its prompt tokens."""
    return sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))


class LoopbackServer(Generic[ReplyT]):
    """A keep-alive HTTP/1.1 server on loopback that answers a request with what its
    ``handler`` returns for the request's JSON body. A subclass says what is its wire
    format's: :meth:`_direct_answer`, :meth:`_error_body`, :meth:`_stream` and
    ``api_root``."""

    api_root = ""
    """The path the API's routes stand under, which a client's base URL ends with."""
    default_handler: Callable[[dict[str, Any]], ReplyT | Awaitable[ReplyT]]

    def __init__(
        self,
        handler: Callable[[dict[str, Any]], ReplyT | Awaitable[ReplyT]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.handler = handler or type(self).default_handler
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{self.api_root}"

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

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what a wire format says ------------------------------------------------

    def _direct_answer(self, request: RecordedRequest) -> tuple[int, Any] | None:
        """The status and JSON body of an answer the handler is not asked for (an
        unknown path, a request the API refuses); ``None`` to ask it."""
        raise NotImplementedError

    def _error_body(self, reply: ReplyT) -> Any:
        """The JSON body of a non-200 reply that has no ``error_body``."""
        raise NotImplementedError

    async def _stream(self, stream: EventStream, request: RecordedRequest, reply: ReplyT) -> bool:
        """Write a 200 reply's events and end it with one of ``stream``'s endings."""
        raise NotImplementedError

    # -- HTTP ---------------------------------------------------------------------

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
        """Answer ``request``; whether the connection may serve another."""
        answer = self._direct_answer(request)
        if answer is not None:
            write_json(writer, *answer, {})
            return True
        reply = self.handler(request.body)
        if inspect.isawaitable(reply):
            reply = await reply
        if reply.first_delay:
            await asyncio.sleep(reply.first_delay)
        if reply.status != 200:
            body = self._error_body(reply) if reply.error_body is None else reply.error_body
            write_json(writer, reply.status, body, reply.headers)
            return True
        async with event_stream(request, reader, writer, reply) as stream:
            return await self._stream(stream, request, reply)
        return False  # the connection was lost mid-reply


def command_line(doc: str, port: int) -> argparse.ArgumentParser:
    """The options every server takes when run by hand: where to listen, how slowly
    to answer. ``doc`` is the server module's docstring."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each token")
    return parser


def serve_forever(server: LoopbackServer[Any], title: str) -> None:
    """Run ``server`` until interrupted (on uvloop when it is installed), having said
    where it serves."""

    async def serve() -> None:
        async with server:
            print(f"{title} at {server.base_url}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve())
        else:
            uvloop.run(serve())


def write_json(
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


async def _wait_for_eof(reader: asyncio.StreamReader, gone: asyncio.Event) -> None:
    with contextlib.suppress(ConnectionError):
        # Mid-reply the client sends nothing more, so a read that returns means
        # the connection closed.
        await reader.read(1)
    gone.set()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_HIGH_WATER = 64 * 1024

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Request Entity Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}
