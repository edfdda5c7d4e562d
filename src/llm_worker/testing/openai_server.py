"""A loopback OpenAI-compatible server that streams chat completions.

For tests and benchmarks: it speaks HTTP/1.1 with keep-alive (the machinery of
:mod:`~llm_worker.testing.loopback`) and the chat-completions SSE format, records
every request, and does what a :class:`Reply` says -- answer slowly, fail with a
status, or cut the stream.
It also counts TCP connections and notices clients that hang up mid-reply,
which is how tests see connection reuse and cancellation from the outside.

Run it by hand to try the worker without an API key::

    python -m llm_worker.testing.openai_server --port 8100 --delay 0.05

then point a provider at ``http://127.0.0.1:8100/v1``. A model named like
``fake:tokens=100,delay=0.01,first_delay=0.2`` gets exactly that reply.

Besides text, a :class:`Reply` streams what models send beside it, as OpenAI-compatible
servers do: reasoning (``reasoning_content``, or ``reasoning``), tool calls whose
arguments come in fragments (:class:`ScriptedCall`), a refusal, the chunks of a second
choice (``n=2``), usage with its details, an error in the stream.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson

from llm_worker.testing.loopback import (
    EventStream,
    LineEnd,
    LoopbackServer,
    RecordedRequest,
    StreamedReply,
    command_line,
    echo_tokens,
    message_words,
    serve_forever,
)

__all__ = [
    "LineEnd",
    "OpenAIServer",
    "RecordedRequest",
    "Reply",
    "ScriptedCall",
    "directed_reply",
    "echo_reply",
    "prompt_tokens",
]


@dataclass
class ScriptedCall:
    """A tool call the model makes: its first fragment says ``id`` and ``name``, the
    next ones carry ``arguments`` ``piece`` characters each, as OpenAI streams them."""

    id: str
    name: str
    arguments: str
    piece: int = 4


@dataclass
class Reply(StreamedReply):
    """What the server does with one chat-completions request (the knobs it shares with
    the Anthropic server are :class:`~llm_worker.testing.loopback.StreamedReply`'s).

    The reply's events come in this order, each one counted in ``tokens_sent``,
    ``delay`` apart and cut by ``cut_after`` as the text's tokens are: ``reasoning``,
    ``tokens`` (each followed by one of ``second_choice``), ``refusal``, the fragments
    of ``tool_calls``, then ``chunks``."""

    empty: bool = False
    """A 200 reply whose stream ends without a single event (llama.cpp's server
    does this when the prompt is longer than its context)."""
    finish_reason: str | None = None
    """Why the model stopped: by default ``tool_calls`` when it made some, else ``stop``."""
    usage: bool = True
    """Whether to say what the reply took (a last chunk with ``usage``) when the request
    asks (``stream_options.include_usage``), as OpenAI does; some servers never do."""
    usage_details: dict[str, Any] = field(default_factory=dict)
    """Added to that ``usage``: ``{"prompt_tokens_details": {"cached_tokens": 3}}``, say."""
    reasoning: list[str] = field(default_factory=list)
    """Deltas of the model's reasoning, before its text."""
    reasoning_key: str = "reasoning_content"
    """The delta's field for them: ``reasoning_content`` (vLLM, DeepSeek) or
    ``reasoning`` (OpenRouter, newer vLLM)."""
    refusal: list[str] = field(default_factory=list)
    """Deltas of a refusal (``delta.refusal``), after the text."""
    tool_calls: list[ScriptedCall] = field(default_factory=list)
    """Calls the model makes, one after the other, after the text."""
    second_choice: list[str] = field(default_factory=list)
    """Text deltas of a choice of ``index`` 1, each after one of the first choice's."""
    chunks: list[dict[str, Any]] = field(default_factory=list)
    """Chunks sent as they are, after the rest."""
    stream_error: dict[str, Any] | None = None
    """The ``error`` object of an error sent in the stream (``{"message": ..., "code":
    ...}``), instead of the finish reason, usage and ``[DONE]``."""


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
    return Reply(tokens=echo_tokens(body))


class OpenAIServer(LoopbackServer[Reply]):
    """``async with OpenAIServer() as server:`` serves at ``server.base_url``."""

    api_root = "/v1"
    default_handler = staticmethod(echo_reply)
    models: tuple[str, ...] = ()
    """What ``GET /v1/models`` lists."""

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.partition("?")[0].endswith("/chat/completions")]

    def _direct_answer(self, request: RecordedRequest) -> tuple[int, Any] | None:
        path = request.path.partition("?")[0]
        if request.method == "GET" and path.rstrip("/").endswith("/models"):
            listed = [
                {"id": model, "object": "model", "created": 0, "owned_by": "loopback"}
                for model in self.models
            ]
            return 200, {"object": "list", "data": listed}
        if request.method != "POST" or not path.endswith("/chat/completions"):
            return 404, {"error": {"message": "not found"}}
        return None

    def _error_body(self, reply: Reply) -> Any:
        return {"error": {"message": reply.error, "type": "simulated", "code": reply.status}}

    async def _stream(self, stream: EventStream, request: RecordedRequest, reply: Reply) -> bool:
        if reply.empty:
            return await stream.end(completed=False)
        model = request.body.get("model", "fake")
        await stream.send(_event(model, {"role": "assistant", "content": ""}, None))
        events = _reply_events(reply, model)
        cut = reply.cut_after is not None and reply.cut_after < len(events)
        if not await stream.send_tokens(events[: reply.cut_after] if cut else events, reply.delay):
            return False
        if cut:
            return await stream.cut(reply.cut_mode)
        if reply.stream_error is not None:
            error = b"data: " + orjson.dumps({"error": reply.stream_error}) + b"\n\n"
            return await stream.end(error, completed=False)
        return await stream.end(_finish_events(request, reply, model), completed=True)


def _reply_events(reply: Reply, model: str) -> list[bytes]:
    """The events of what the model says, in the order :class:`Reply` gives."""
    events = [_event(model, {reply.reasoning_key: text}, None) for text in reply.reasoning]
    if reply.second_choice:
        for token, other in itertools.zip_longest(reply.tokens, reply.second_choice):
            if token is not None:
                events.append(_content_event(model, token))
            if other is not None:
                events.append(_event(model, {"content": other}, None, index=1))
    else:
        events += [_content_event(model, token) for token in reply.tokens]
    events += [_event(model, {"refusal": text}, None) for text in reply.refusal]
    for index, call in enumerate(reply.tool_calls):
        events += [
            _event(model, {"tool_calls": [delta]}, None) for delta in _fragments(index, call)
        ]
    events += [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in reply.chunks]
    return events


def _fragments(index: int, call: ScriptedCall) -> list[dict[str, Any]]:
    """A tool call's deltas: its id and name with empty arguments, then the arguments
    in pieces."""
    first = {"index": index, "id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": ""}}  # fmt: skip
    step = max(call.piece, 1)
    return [first] + [
        {"index": index, "function": {"arguments": call.arguments[start : start + step]}}
        for start in range(0, len(call.arguments), step)
    ]


def _finish_events(request: RecordedRequest, reply: Reply, model: str) -> bytes:
    """A reply's end: its finish reason, its usage when asked for, ``[DONE]``."""
    reason = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    endings = _event(model, {}, reason)
    options = request.body.get("stream_options")
    if reply.usage and isinstance(options, dict) and options.get("include_usage"):
        completion = len(reply.tokens) + len(reply.reasoning) + len(reply.refusal)
        endings += _usage_event(model, request.body, completion, reply.usage_details)
    return endings + b"data: [DONE]\n\n"


def prompt_tokens(body: dict[str, Any]) -> int:
    """What this server counts as a request's prompt tokens: its messages' words."""
    return message_words(body)


def _usage_event(
    model: str, body: dict[str, Any], completion: int, details: dict[str, Any]
) -> bytes:
    prompt = prompt_tokens(body)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion, **details}  # fmt: skip
    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
             "model": model, "choices": [], "usage": usage}  # fmt: skip
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _event(
    model: str, delta: dict[str, Any], finish_reason: str | None, *, index: int = 0
) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


@functools.lru_cache(maxsize=65536)
def _content_event(model: str, token: str) -> bytes:
    return _event(model, {"content": token}, None)


def _main() -> None:
    parser = command_line(__doc__, 8100)
    parser.add_argument(
        "--tokens", type=int, default=0, help="reply with this many tokens instead of an echo"
    )
    args = parser.parse_args()
    fixed = [f" t{i}" for i in range(args.tokens)]

    def handler(body: dict[str, Any]) -> Reply:
        directed = directed_reply(body)
        if directed is not None:
            return directed
        return dataclasses.replace(
            Reply(tokens=fixed) if fixed else echo_reply(body), delay=args.delay
        )

    server = OpenAIServer(handler, host=args.host, port=args.port)
    serve_forever(server, "OpenAI-compatible test server")


if __name__ == "__main__":
    _main()
