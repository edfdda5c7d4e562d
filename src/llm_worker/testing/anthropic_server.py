"""A loopback server that speaks Anthropic's Messages API, streaming.

For tests: the HTTP machinery of :mod:`~llm_worker.testing.loopback` (keep-alive,
a record of every request, connections counted, clients that hang up mid-reply
noticed), answering ``POST /v1/messages`` with the API's server-sent events --
``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``,
``content_block_stop``, ``message_delta``, ``message_stop`` -- or doing what a
:class:`Reply` says instead: fail with a status, send an ``error`` event mid-reply,
cut the stream, or stall. A reply may hold typed blocks besides its text
(:class:`Thinking`, :class:`RedactedThinking`, :class:`ToolUse`), sent as the API
sends them: thinking before the text, tool uses after it.

Requests the real API refuses (no ``max_tokens``, a ``system`` role among the
messages, turns that do not alternate or do not open with the user, content blocks
out of shape, a tool use without its result or a result without its tool use, with
thinking on a tool-using turn that does not start with its thinking: the rules of
:mod:`~llm_worker.testing.anthropic_rules`) are refused the same way, with a 400 in
the API's shape, so that tests see what the API would make of what the worker sends.

Run it by hand to try the worker without an API key::

    python -m llm_worker.testing.anthropic_server --port 8200

then set ``ANTHROPIC_BASE_URL=http://127.0.0.1:8200`` and any ``ANTHROPIC_API_KEY``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from llm_worker.testing.anthropic_rules import api_refusal
from llm_worker.testing.loopback import (
    EventStream,
    LoopbackServer,
    RecordedRequest,
    StreamedReply,
    command_line,
    echo_tokens,
    message_words,
    serve_forever,
)

__all__ = [
    "AnthropicServer",
    "RecordedRequest",
    "RedactedThinking",
    "Reply",
    "Thinking",
    "ToolUse",
    "api_refusal",
    "echo_reply",
]


@dataclass
class Thinking:
    """A ``thinking`` block: its text in ``thinking_delta`` pieces, then its signature
    in a ``signature_delta``."""

    pieces: list[str]
    signature: str = "loopback-signature"


@dataclass
class RedactedThinking:
    """A ``redacted_thinking`` block: its data in its start, no deltas."""

    data: str


@dataclass
class ToolUse:
    """A ``tool_use`` block: its id and name in its start (with ``input: {}``), its
    input in ``input_json_delta`` pieces (none: the call takes no input)."""

    id: str
    name: str
    pieces: list[str] = field(default_factory=list)


Block = Thinking | RedactedThinking | ToolUse


@dataclass
class Reply(StreamedReply):
    """What the server does with one Messages API request (the knobs it shares with the
    OpenAI server are :class:`~llm_worker.testing.loopback.StreamedReply`'s; its
    ``error`` is the message of the body's ``error``, whose type is ``error_type``)."""

    stop_reason: str = "end_turn"
    input_tokens: int | None = None
    """``message_start``'s ``usage.input_tokens``; by default the words of the request's
    system text and messages (:func:`prompt_tokens`)."""
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    """Said in ``message_start``'s usage when set, as the API does with prompt caching."""
    error_type: str = "api_error"
    stream_error: dict[str, str] | None = None
    """An ``error`` event's ``error`` (``{"type": "overloaded_error", "message":
    "Overloaded"}``), sent after ``error_after`` tokens; the reply ends there."""
    error_after: int = 0
    hold_after: int | None = None
    """After this many tokens, send nothing more until the client hangs up (a model
    still thinking): what a test of cancellation needs, without timing."""
    blocks: list[Block] = field(default_factory=list)
    """Typed blocks: thinking ones go before the text, tool uses after it. Each of their
    deltas is a token, as each of ``tokens`` is, for ``cut_after``, ``hold_after``,
    ``error_after`` and ``tokens_sent``."""


def prompt_tokens(body: dict[str, Any]) -> int:
    """What this server counts as a request's input tokens: the words of its system
    text and messages."""
    system = body.get("system")
    words = len(system.split()) if isinstance(system, str) else 0
    return words + message_words(body)


def echo_reply(body: dict[str, Any]) -> Reply:
    """The default: ``Echo: <last user message>``, a word per token."""
    return Reply(tokens=echo_tokens(body))


class AnthropicServer(LoopbackServer[Reply]):
    """``async with AnthropicServer() as server:`` serves at ``server.base_url``, the
    API's root (the SDK adds ``/v1/messages``). Set ``handler`` to script replies."""

    default_handler = staticmethod(echo_reply)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.partition("?")[0] == "/v1/messages"]

    def _direct_answer(self, request: RecordedRequest) -> tuple[int, Any] | None:
        if request.method != "POST" or request.path.partition("?")[0] != "/v1/messages":
            return 404, _error_body("not_found_error", "Not found")
        refusal = api_refusal(request.body)
        if refusal is not None:
            return 400, _error_body("invalid_request_error", refusal)
        return None

    def _error_body(self, reply: Reply) -> Any:
        return _error_body(reply.error_type, reply.error)

    async def _stream(self, stream: EventStream, request: RecordedRequest, reply: Reply) -> bool:
        units, last = _units(reply)
        position, ending = _ending(reply, len(units))
        await stream.send(_start_events(request.body, reply))
        if not await stream.send_tokens(units[:position], reply.delay):
            return False
        if ending == "hold":
            await request.client_gone.wait()
            return False
        if ending == "abort" or ending == "clean":
            return await stream.cut(ending)
        if ending == "error":
            return await stream.end(_event("error", error=reply.stream_error), completed=False)
        return await stream.end(last + _end_events(reply, len(units)), completed=True)


def _units(reply: Reply) -> tuple[list[bytes], bytes]:
    """The reply's deltas, one unit each, every block's start sent with its first delta
    and its stop with its last; and what follows the last delta (the stop of the last
    block, whole blocks that have no deltas)."""
    units: list[bytes] = []
    pending = b""
    for index, (start, deltas) in enumerate(_blocks(reply)):
        pending += _event("content_block_start", index=index, content_block=start)
        for delta in deltas:
            units.append(pending + _event("content_block_delta", index=index, delta=delta))
            pending = b""
        pending += _event("content_block_stop", index=index)
    return units, pending


def _blocks(reply: Reply) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each block's start and deltas, in the API's order: thinking, text, tool uses."""
    thinking = [block for block in reply.blocks if not isinstance(block, ToolUse)]
    for block in thinking:
        if isinstance(block, Thinking):
            deltas = [{"type": "thinking_delta", "thinking": piece} for piece in block.pieces]
            deltas.append({"type": "signature_delta", "signature": block.signature})
            yield {"type": "thinking", "thinking": "", "signature": ""}, deltas
        else:
            yield {"type": "redacted_thinking", "data": block.data}, []
    if reply.tokens or not reply.blocks:
        yield (
            {"type": "text", "text": ""},
            [{"type": "text_delta", "text": token} for token in reply.tokens],
        )
    for block in reply.blocks:
        if isinstance(block, ToolUse):
            start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
            pieces = block.pieces
            yield start, [{"type": "input_json_delta", "partial_json": p} for p in pieces]


def _ending(reply: Reply, units: int) -> tuple[int, str]:
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
    endings.append((units, "finish"))  # last: the others win a tie
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
    return _event("message_start", message=message) + _event("ping")


def _end_events(reply: Reply, units: int) -> bytes:
    delta = {"stop_reason": reply.stop_reason, "stop_sequence": None}
    return _event("message_delta", delta=delta, usage={"output_tokens": units}) + _event(
        "message_stop"
    )


def _main() -> None:
    args = command_line(__doc__, 8200).parse_args()
    echo = lambda body: dataclasses.replace(echo_reply(body), delay=args.delay)  # noqa: E731
    server = AnthropicServer(echo, host=args.host, port=args.port)
    serve_forever(server, "Anthropic Messages API test server")


if __name__ == "__main__":
    _main()
