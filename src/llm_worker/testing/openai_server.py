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
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
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
    "directed_reply",
    "echo_reply",
    "prompt_tokens",
]


@dataclass
class Reply(StreamedReply):
    """What the server does with one chat-completions request (the knobs it shares with
    the Anthropic server are :class:`~llm_worker.testing.loopback.StreamedReply`'s)."""

    empty: bool = False
    """A 200 reply whose stream ends without a single event (llama.cpp's server
    does this when the prompt is longer than its context)."""
    finish_reason: str = "stop"
    usage: bool = True
    """Whether to say what the reply took (a last chunk with ``usage``) when the request
    asks (``stream_options.include_usage``), as OpenAI does; some servers never do."""


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

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.partition("?")[0].endswith("/chat/completions")]

    def _direct_answer(self, request: RecordedRequest) -> tuple[int, Any] | None:
        path = request.path.partition("?")[0]
        if request.method == "GET" and path.rstrip("/").endswith("/models"):
            return 200, {"object": "list", "data": []}
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
        cut = reply.cut_after is not None and reply.cut_after < len(reply.tokens)
        tokens = reply.tokens[: reply.cut_after] if cut else reply.tokens
        if not await stream.send_tokens((_content_event(model, t) for t in tokens), reply.delay):
            return False
        if cut:
            return await stream.cut(reply.cut_mode)
        return await stream.end(_finish_events(request, reply, model), completed=True)


def _finish_events(request: RecordedRequest, reply: Reply, model: str) -> bytes:
    """A reply's end: its finish reason, its usage when asked for, ``[DONE]``."""
    endings = _event(model, {}, reply.finish_reason)
    options = request.body.get("stream_options")
    if reply.usage and isinstance(options, dict) and options.get("include_usage"):
        endings += _usage_event(model, request.body, len(reply.tokens))
    return endings + b"data: [DONE]\n\n"


def prompt_tokens(body: dict[str, Any]) -> int:
    """What this server counts as a request's prompt tokens: its messages' words."""
    return message_words(body)


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
