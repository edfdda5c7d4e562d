"""A ``POST /v1/chat/completions`` body read into the job that answers it. Pure.

The request's messages are the job's history, run by a one-stream template on the
provider its ``model`` names; the options a chat-completions upstream takes are that
stream's settings. A field this worker does not take is refused naming it
(:class:`~llm_worker.wire.openai.InvalidParam`), never dropped.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from llm_worker.jobs.model import JobSpec
from llm_worker.wire.openai import InvalidParam

# Sent upstream as they are: the provider's own checks judge their values at add.
FORWARDED = frozenset(
    {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "reasoning_effort",
        "user",
    }
)
# Taken, and read here rather than sent upstream.
READ_HERE = frozenset({"model", "messages", "stream", "stream_options", "n", "metadata", "store"})
STREAM_OPTIONS = frozenset({"include_usage"})


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a chat-completions request asks, as the job and its replies need it."""

    model: str
    """The model as asked: what every reply names."""
    provider: str
    """The provider that runs it."""
    upstream_model: str
    """The model name the provider is asked for ("": none, the provider runs one)."""
    messages: list[Any]
    settings: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    metadata: dict[str, Any] | None = None

    def job_spec(self, created: int) -> JobSpec:
        """The job that answers the request: its messages as history, run on the
        provider with its settings; what replies are rendered with kept beside
        (``openai_request``)."""
        openai_request = self.openai_request(created)
        stream = {
            "provider": self.provider,
            # No model for a provider pinned to one (upstream_model "").
            "settings": {**self.settings, "model": self.upstream_model}
            if self.upstream_model
            else dict(self.settings),
            "messages": [{"insert": "history"}],
        }
        try:
            return JobSpec.model_validate(
                {
                    "assistant": {"streams": [stream], "openai_request": openai_request},
                    "query": "",
                    "history": self.messages,
                }
            )
        except ValidationError as exc:
            raise InvalidParam(_first_problem(exc), "messages") from None

    def openai_request(self, created: int) -> dict[str, Any]:
        """What the job keeps beside its template to render its replies."""
        return {
            "endpoint": "chat.completions",
            "model": self.model,
            "created": created,
            "stream": self.stream,
            "include_usage": self.include_usage,
            "metadata": self.metadata,
        }


def read_chat_request(body: Any, providers: Collection[str], default_provider: str) -> ChatRequest:
    """``body`` as a :class:`ChatRequest` whose model is one of ``providers``'
    (``<provider>/<model>``) or, otherwise, ``default_provider``'s;
    :class:`InvalidParam` naming what is wrong."""
    if not isinstance(body, dict):
        raise InvalidParam("the body must be a JSON object")
    for name in body:
        if name not in FORWARDED and name not in READ_HERE:
            raise InvalidParam(f"{name!r} is not a field this worker takes", name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidParam("'model' must be a model's name", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidParam("'messages' must be a list of one message or more", "messages")
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or n != 1):
        raise InvalidParam("only n=1 is served: a job streams one reply", "n")
    provider, upstream_model = resolve_model(model, providers, default_provider)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidParam("'metadata' must be an object", "metadata")
    _flag(body, "store")  # taken, and nothing to do: every job is kept for its TTL
    return ChatRequest(
        model=model,
        provider=provider,
        upstream_model=upstream_model,
        messages=messages,
        settings={key: value for key, value in body.items() if key in FORWARDED},
        stream=_flag(body, "stream"),
        include_usage=_include_usage(body),
        metadata=metadata,
    )


def resolve_model(model: str, providers: Collection[str], default: str) -> tuple[str, str]:
    """The provider and the provider's model name that ``model`` names:
    ``<provider>/<name>`` for a provider of ``providers``, else ``default`` with the
    whole name."""
    prefix, slash, rest = model.partition("/")
    if slash and prefix in providers:
        if not rest:
            raise InvalidParam(f"model {model!r} names provider {prefix!r} but no model", "model")
        return prefix, rest
    return default, model


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidParam(f"{name!r} must be true or false", name)
    return value


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidParam("'stream_options' must be an object", "stream_options")
    for name in options:
        if name not in STREAM_OPTIONS:
            raise InvalidParam(
                f"stream_options.{name} is not an option this worker takes",
                f"stream_options.{name}",
            )
    return _flag(options, "include_usage")


def _first_problem(exc: ValidationError) -> str:
    """The first problem pydantic found with the messages, saying where."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"] if part != "history")
    return f"messages.{where}: {error['msg']}" if where else error["msg"]
