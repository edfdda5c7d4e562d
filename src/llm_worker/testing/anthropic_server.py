"""A loopback server that speaks Anthropic's Messages API, streaming.

For tests: the HTTP machinery of :class:`~llm_worker.testing.openai_server.OpenAIServer`
(keep-alive, a record of every request, connections counted, clients that hang
up mid-reply noticed), answering ``POST /v1/messages`` with the API's
server-sent events -- ``message_start``, ``content_block_start``, ``ping``,
``content_block_delta``, ``content_block_stop``, ``message_delta``,
``message_stop`` -- or doing what a :class:`Reply` says instead: fail with a
status, send an ``error`` event mid-reply, cut the stream, or stall.

Requests the real API refuses (no ``max_tokens``, a ``system`` role among the
messages, turns that do not alternate or do not open with the user) are
refused the same way, with a 400 in the API's shape, so that tests see what
the API would make of what the worker sends.

Run it by hand to try the worker without an API key::

    python -m llm_worker.testing.anthropic_server --port 8200

then set ``ANTHROPIC_BASE_URL=http://127.0.0.1:8200`` and any ``ANTHROPIC_API_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from llm_worker.testing.openai_server import (
    LineEnd,
    OpenAIServer,
    RecordedRequest,
    _stop,
    _wait_for_eof,
    write_events,
)

_WORD = re.compile(r"\s*\S+")


@dataclass
class Reply:
    """What the server does with one Messages API request."""

    tokens: list[str] = field(default_factory=list)
    """The text deltas, one ``content_block_delta`` event each."""
    stop_reason: str = "end_turn"
    input_tokens: int | None = None
    """``message_start``'s ``usage.input_tokens``; by default the words of the request's
    system text and messages (:func:`prompt_tokens`)."""
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    """Said in ``message_start``'s usage when set, as the API does with prompt caching."""
    status: int = 200
    error_type: str = "api_error"
    error: str = "simulated failure"
    """The ``error.type`` and ``error.message`` of a non-200 reply's body."""
    error_body: Any = None
    """The JSON body of a non-200 reply, instead of the API's shape around ``error``."""
    headers: dict[str, str] = field(default_factory=dict)
    """Headers of the response (``retry-after``, say)."""
    first_delay: float = 0.0
    """Seconds before the response head."""
    delay: float = 0.0
    """Seconds before each token."""
    stream_error: dict[str, str] | None = None
    """An ``error`` event's ``error`` (``{"type": "overloaded_error", "message":
    "Overloaded"}``), sent after ``error_after`` tokens; the reply ends there."""
    error_after: int = 0
    cut_after: int | None = None
    """Stop after this many tokens, before ``message_stop``."""
    cut_mode: Literal["abort", "clean"] = "abort"
    """``abort``: drop the connection mid-body. ``clean``: end the body properly, but
    without ``message_delta`` and ``message_stop``."""
    hold_after: int | None = None
    """After this many tokens, send nothing more until the client hangs up (a model
    still thinking): what a test of cancellation needs, without timing."""
    line_end: LineEnd = "\n"
    """How the event stream's lines end, of the three ways the SSE standard allows:
    LF, CRLF or CR (``"\\n"``, ``"\\r\\n"``, ``"\\r"``)."""
    write_size: int | None = None
    """Send the event stream in HTTP chunks of this many bytes, each written and drained
    on its own, so that a client reads it split everywhere (``1``: a byte per read);
    ``None``: a chunk per write of events."""


def prompt_tokens(body: dict[str, Any]) -> int:
    """What this server counts as a request's input tokens: the words of its system
    text and messages."""
    system = body.get("system")
    words = len(system.split()) if isinstance(system, str) else 0
    return words + sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))


def echo_reply(body: dict[str, Any]) -> Reply:
    """The default: ``Echo: <last user message>``, a word per token."""
    last_user = next(
        (m.get("content", "") for m in reversed(body.get("messages", [])) if m["role"] == "user"),
        "",
    )
    return Reply(tokens=_WORD.findall(f"Echo: {last_user}"))


def api_refusal(body: dict[str, Any]) -> str | None:
    """Why the Messages API would answer 400 to ``body``, of the rules a chat request
    can break; ``None`` when it would take it."""
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous = None
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return (
                f'messages.{index}.role: Input should be "user" or "assistant"'
                if role != "system"
                else 'messages: Unexpected role "system". The Messages API accepts a '
                'top-level `system` parameter, not "system" as an input message role.'
            )
        if index == 0 and role != "user":
            return 'messages: first message must use the "user" role'
        if role == previous:
            return 'messages: roles must alternate between "user" and "assistant"'
        if not str(message.get("content", "")).strip():
            return f"messages.{index}: text content blocks must be non-empty"
        previous = role
    return None


AnthropicHandler = Callable[[dict[str, Any]], "Reply | Awaitable[Reply]"]


class AnthropicServer(OpenAIServer):
    """``async with AnthropicServer() as server:`` serves at ``server.base_url``, the
    API's root (the SDK adds ``/v1/messages``). Set ``handler`` to script replies."""

    def __init__(
        self, handler: AnthropicHandler | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(host=host, port=port)
        self.handler: AnthropicHandler = handler or echo_reply  # type: ignore[assignment]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.partition("?")[0] == "/v1/messages"]

    async def _respond(
        self, request: RecordedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request.method != "POST" or request.path.partition("?")[0] != "/v1/messages":
            _write_json(writer, 404, _error_body("not_found_error", "Not found"), {})
            return True
        refusal = api_refusal(request.body)
        if refusal is not None:
            _write_json(writer, 400, _error_body("invalid_request_error", refusal), {})
            return True
        reply = self.handler(request.body)
        if inspect.isawaitable(reply):
            reply = await reply
        if reply.first_delay:
            await asyncio.sleep(reply.first_delay)
        if reply.status != 200:
            body = reply.error_body
            if body is None:
                body = _error_body(reply.error_type, reply.error)
            _write_json(writer, reply.status, body, reply.headers)
            return True
        return await self._stream_events(request, reply, reader, writer)

    async def _stream_events(
        self,
        request: RecordedRequest,
        reply: Reply,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n" + extra.encode() + b"\r\n"
        )
        # A hang-up shows as EOF on the read side while we write.
        watcher = asyncio.create_task(_wait_for_eof(reader, request.client_gone))
        position, ending = _ending(reply)

        async def send(events: bytes) -> None:
            await write_events(writer, events, reply.line_end, reply.write_size)

        try:
            await send(_start_events(request.body, reply))
            for token in reply.tokens[:position]:
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if request.client_gone.is_set():
                    return False
                delta = {"type": "text_delta", "text": token}
                await send(_event("content_block_delta", index=0, delta=delta))
                request.tokens_sent += 1
                await writer.drain()
            if ending == "hold":
                await request.client_gone.wait()
                return False
            if ending == "abort":
                writer.transport.abort()
                return False
            if ending == "error":
                await send(_event("error", error=reply.stream_error))
            elif ending == "finish":
                await send(_end_events(reply))
            # Stop watching before the reply ends: the client's next request may follow it.
            await _stop(watcher)
            if request.client_gone.is_set():
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            request.completed = ending == "finish"
            return True
        except ConnectionError:
            request.client_gone.set()
            return False
        finally:
            await _stop(watcher)
            request.ended_at = time.monotonic()


def _ending(reply: Reply) -> tuple[int, str]:
    """After how many tokens the reply ends, and how: ``finish``, ``error``, ``hold``,
    ``abort`` or ``clean`` (a body ended before ``message_stop``); the first that
    ``reply`` asks for."""
    endings = []
    if reply.stream_error is not None:
        endings.append((reply.error_after, "error"))
    if reply.cut_after is not None:
        endings.append((reply.cut_after, reply.cut_mode))
    if reply.hold_after is not None:
        endings.append((reply.hold_after, "hold"))
    endings.append((len(reply.tokens), "finish"))  # last: the others win a tie
    return min(endings, key=lambda ending: ending[0])


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_loopback",
    }


def _event(name: str, **data: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps({"type": name, **data}))


def _start_events(body: dict[str, Any], reply: Reply) -> bytes:
    usage: dict[str, int] = {
        "input_tokens": prompt_tokens(body) if reply.input_tokens is None else reply.input_tokens,
        "output_tokens": 1,
    }
    for key in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        if getattr(reply, key) is not None:
            usage[key] = getattr(reply, key)
    message = {
        "id": "msg_loopback",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": body.get("model", "claude-loopback"),
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return (
        _event("message_start", message=message)
        + _event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        + _event("ping")
    )


def _end_events(reply: Reply) -> bytes:
    delta = {"stop_reason": reply.stop_reason, "stop_sequence": None}
    return (
        _event("content_block_stop", index=0)
        + _event("message_delta", delta=delta, usage={"output_tokens": len(reply.tokens)})
        + _event("message_stop")
    )


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    529: "Overloaded",
}


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


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each token")
    args = parser.parse_args()

    def handler(body: dict[str, Any]) -> Reply:
        reply = echo_reply(body)
        reply.delay = args.delay
        return reply

    async with AnthropicServer(handler, host=args.host, port=args.port) as server:
        print(f"Anthropic Messages API test server at {server.base_url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
