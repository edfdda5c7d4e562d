"""The ``anthropic`` provider: Claude through the Messages API, with the official SDK.

Settings: ``model`` (required), ``max_tokens`` (:data:`DEFAULT_MAX_TOKENS` when
unset: the API requires one), ``stop`` (a string or a list, sent as
``stop_sequences``), ``temperature`` and ``top_p`` (0 to 1), ``top_k``,
``metadata`` (an object, such as ``{"user_id": ...}``), ``tools``, ``tool_choice``
and ``parallel_tool_calls`` (OpenAI's forms or Anthropic's) and ``thinking``
(``{"type": "enabled", "budget_tokens": N}``); any other is refused when the job is
added.

The API takes the chat apart from OpenAI's shape, so messages are translated to
fit it (:mod:`~llm_worker.providers.anthropic_messages`): system text, content
blocks, thinking, ``tool_use`` and ``tool_result`` blocks. The reply's events are
read into text and typed parts (:class:`MessageEvents`): thinking with its
signature, tool calls numbered 0, 1, ... in the order they come.

Needs the ``anthropic`` extra (``pip install 'llm-worker[anthropic]'``): the SDK
is imported when the first job asks for a client, not before, and in a thread, as
its import takes about 2 s here. Retries are the runner's, as for every provider:
the SDK's own are off.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.parts import Part, Reasoning, ToolCallDelta
from llm_worker.jobs.templates import TemplateError
from llm_worker.providers.anthropic_messages import (
    MESSAGE_SCHEMA,
    check_message,
    check_thinking,
    to_anthropic,
    tool_choice_setting,
    tools_setting,
)
from llm_worker.providers.base import CallEnd
from llm_worker.providers.checks import (
    MODEL_SCHEMA,
    STOP_SCHEMA,
    check_integer,
    check_number,
    check_stop,
    integer_schema,
    number_schema,
    settings_schema,
)
from llm_worker.providers.http_base import HttpProvider, SdkClients
from llm_worker.providers.http_replies import ReplyProblem, ReplyReader, count

if TYPE_CHECKING:
    import anthropic

DEFAULT_MAX_TOKENS = 1024
SETTINGS = frozenset(
    {
        "model",
        "max_tokens",
        "stop",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "thinking",
    }
)
INSTALL_HINT = "install llm-worker[anthropic] (the anthropic SDK) to use provider {name!r}"
MESSAGES_PATH = "/v1/messages"

# Why the model stopped, in the words the rest of the worker uses (OpenAI's).
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}
# Error types of an ``error`` event inside a reply stream that another try may cure,
# with the kind each counts as. Anthropic's HTTP statuses for them: 529, 500, 429, 504.
_RETRYABLE_STREAM_ERRORS = {
    "overloaded_error": "http_5xx",
    "api_error": "http_5xx",
    "rate_limit_error": "rate_limited",
    "timeout_error": "timeout",
}


@functools.cache
def sdk_installed() -> bool:
    return importlib.util.find_spec("anthropic") is not None


_sdk_imported = False


async def _import_sdk() -> Any:
    """The ``anthropic`` module. Its first import (2.6 s here: pydantic models by the
    hundred) runs in a thread, so that running jobs keep streaming meanwhile: the event
    loop's longest stall during it was 0.13 s."""
    global _sdk_imported
    if not _sdk_imported:
        await asyncio.to_thread(importlib.import_module, "anthropic")
        _sdk_imported = True
    import anthropic

    return anthropic


class AnthropicClients(SdkClients):
    """One ``AsyncAnthropic`` client per (base URL, API key), created on first use."""

    async def sdk(self) -> ModuleType:
        return await _import_sdk()

    def _new_client(
        self, sdk: ModuleType, base_url: str, **common: Any
    ) -> anthropic.AsyncAnthropic:
        return sdk.AsyncAnthropic(base_url=base_url, **common)


class AnthropicProvider(HttpProvider):
    """Claude at ``base_url`` (the API's root, without ``/v1``)."""

    path = MESSAGES_PATH
    finish_marker = "no message_stop"
    # Read on past message_stop to the end of the body: a connection whose response was
    # left unread is closed, not kept for the next job.
    read_past_whole = True

    def configuration_problem(self) -> str | None:
        if not sdk_installed():
            return INSTALL_HINT.format(name=self.name)
        return super().configuration_problem()

    def _check_names(self, settings: Mapping[str, Any], merged: Mapping[str, Any]) -> None:
        unknown = sorted(set(merged) - SETTINGS)
        if unknown:
            known = ", ".join(sorted(SETTINGS))
            raise TemplateError(
                f"settings.{unknown[0]} is not a setting of provider {self.name!r} (known: {known})"
            )

    def check_message(self, message: ChatMessage, where: str, name: str) -> None:
        check_message(message, where, name)

    def message_schema(self) -> dict[str, Any] | None:
        return MESSAGE_SCHEMA

    def _check_values(self, merged: Mapping[str, Any]) -> None:
        check_integer(merged, "max_tokens", low=1)
        check_number(merged, "temperature", low=0, high=1)
        check_number(merged, "top_p", low=0, high=1)
        check_integer(merged, "top_k", low=0)
        check_stop(merged)
        metadata = merged.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise TemplateError(
                'settings.metadata must be an object (such as {"user_id": "..."}), '
                f"not {metadata!r}"
            )
        if merged.get("tools") is not None:
            tools_setting(merged["tools"])
        tool_choice_setting(merged.get("tool_choice"), merged.get("parallel_tool_calls"))
        check_thinking(merged.get("thinking"), merged.get("max_tokens") or DEFAULT_MAX_TOKENS)

    def settings_schema(self) -> dict[str, Any]:
        return settings_schema(
            {
                "model": MODEL_SCHEMA,
                "max_tokens": integer_schema(1),
                "temperature": number_schema(0, 1),
                "top_p": number_schema(0, 1),
                "top_k": integer_schema(0),
                "stop": STOP_SCHEMA,
                "metadata": {"type": ["object", "null"]},
                "tools": {"type": ["array", "null"], "items": {"type": "object"}},
                "tool_choice": {
                    "anyOf": [
                        {"enum": ["auto", "required", "none"]},
                        {"type": "object", "required": ["type"]},
                        {"type": "null"},
                    ]
                },
                "parallel_tool_calls": {"type": ["boolean", "null"]},
                "thinking": {"type": ["object", "null"], "required": ["type"]},
            },
            self.defaults,
            closed=True,
        )

    def request_body(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The Messages API request for ``messages`` with ``settings`` over the defaults."""
        try:
            return self._request_body(messages, {**self.defaults, **settings})
        except TemplateError as exc:  # checked at add; a job queued before a restart
            raise self._failure(f"cannot ask {self._where()}: {exc}") from None

    def _request_body(
        self, messages: Sequence[ChatMessage], merged: Mapping[str, Any]
    ) -> dict[str, Any]:
        system, turns = to_anthropic(messages, self.name)
        body: dict[str, Any] = {
            "model": merged.get("model"),
            "max_tokens": merged.get("max_tokens") or DEFAULT_MAX_TOKENS,
            "messages": turns,
            "stream": True,
        }
        if system is not None:
            body["system"] = system
        stop = merged.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        for key in ("temperature", "top_p", "top_k", "metadata", "thinking"):
            if merged.get(key) is not None:
                body[key] = merged[key]
        if merged.get("tools") is not None:
            body["tools"] = tools_setting(merged["tools"])
        choice = tool_choice_setting(merged.get("tool_choice"), merged.get("parallel_tool_calls"))
        # parallel_tool_calls alone says nothing without tools; the API wants no choice then.
        if choice is not None and ("tools" in body or merged.get("tool_choice") is not None):
            body["tool_choice"] = choice
        return body

    def new_reply(self) -> MessageEvents:
        return MessageEvents()

    def error_code(self, body: object) -> str | None:
        return _error_type(body)

    async def aclose(self) -> None:
        await self._clients.aclose()


class MessageEvents(ReplyReader):
    """What the events of one Messages API reply said so far: text and typed parts
    out, the stop reason and usage kept.

    A ``tool_use`` block is a tool call, numbered 0, 1, ... in the order the reply
    starts them (not by the block's index, which counts text and thinking too): its
    start says the call's id and name, each ``input_json_delta`` a piece of its
    arguments; a call that got no piece by its block's end takes no arguments, ``{}``.
    A ``thinking`` block's deltas are :class:`Reasoning` text, its signature the
    block's end; a ``redacted_thinking`` block is one :class:`Reasoning` with its data.
    """

    __slots__ = ("_calls", "_silent", "stop_reason", "usage")

    def __init__(self) -> None:
        super().__init__()
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self._calls: dict[object, int] = {}
        """The tool call of each ``tool_use`` block, by the block's index."""
        self._silent: set[object] = set()
        """The ``tool_use`` blocks that have said nothing of their arguments yet."""

    def read(self, data: str) -> str | list[Part] | None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ReplyProblem("sent an event that is not JSON", kind="bad_reply") from None
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            if not isinstance(delta, dict):
                return None
            if delta.get("type") == "text_delta":  # the token path: first
                return delta.get("text")
            return self._delta(event.get("index"), delta)
        if kind == "content_block_start":
            block = event.get("content_block")
            return self._start(event.get("index"), block) if isinstance(block, dict) else None
        if kind == "content_block_stop":
            return self._stop(event.get("index"))
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                _add_usage(self.usage, message.get("usage"))
        elif kind == "message_delta":
            _add_usage(self.usage, event.get("usage"))
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.stop_reason = str(delta["stop_reason"])
        elif kind == "message_stop":
            self.finished = self.whole = True
        elif kind == "error":
            raise _stream_error(event.get("error") or {})
        return None

    def _start(self, index: object, block: dict[str, Any]) -> str | list[Part] | None:
        kind = block.get("type")
        if kind == "text":
            return _string(block.get("text")) or None
        if kind == "tool_use":
            number = self._calls[index] = len(self._calls)
            given = block.get("input")  # {} when the deltas say it, as the API does
            arguments = orjson.dumps(given).decode() if isinstance(given, dict) and given else ""
            if not arguments:
                self._silent.add(index)
            call_id, name = _string(block.get("id")), _string(block.get("name"))
            return [ToolCallDelta(number, call_id, name, arguments)]
        if kind == "thinking":
            return _part(Reasoning, block.get("thinking"))
        if kind == "redacted_thinking":
            return _part(_redacted, block.get("data"))
        return None  # a server tool's blocks (web search, ...): not the reply's own

    def _delta(self, index: object, delta: dict[str, Any]) -> list[Part] | None:
        kind = delta.get("type")
        if kind == "input_json_delta":
            number = self._calls.get(index)
            piece = _string(delta.get("partial_json"))
            if number is None or not piece:
                return None
            self._silent.discard(index)
            return [ToolCallDelta(number, arguments=piece)]
        if kind == "thinking_delta":
            return _part(Reasoning, delta.get("thinking"))
        if kind == "signature_delta":
            return _part(_signature, delta.get("signature"))
        return None  # citations: not text

    def _stop(self, index: object) -> list[Part] | None:
        if index in self._silent:
            self._silent.discard(index)
            return [ToolCallDelta(self._calls[index], arguments="{}")]
        return None

    def end(self) -> CallEnd:
        reason = self.stop_reason
        prompt, completion = _token_counts(self.usage)
        return CallEnd(
            FINISH_REASONS.get(reason, reason) if reason else None,
            prompt,
            completion,
            cached_tokens=count(self.usage.get("cache_read_input_tokens")),
        )


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _part(make: Callable[[str], Part], value: object) -> list[Part] | None:
    """The part ``make`` makes of ``value`` when it is text, and not empty."""
    return [make(value)] if isinstance(value, str) and value else None


def _signature(signature: str) -> Reasoning:
    return Reasoning(signature=signature)


def _redacted(data: str) -> Reasoning:
    return Reasoning(redacted=data)


def _stream_error(error: object) -> ReplyProblem:
    """An ``error`` event inside the reply (the API's way to fail after its 200); its
    ``error.type`` is the error's code."""
    code = _error_type({"error": error})
    message = _string(error.get("message")) if isinstance(error, dict) else ""
    kind = _RETRYABLE_STREAM_ERRORS.get(code or "")
    return ReplyProblem(
        "reported an error during the reply: " + (message or "no details given"),
        retryable=kind is not None,
        kind=kind or "error",
        code=code,
    )


def _error_type(body: object) -> str | None:
    """The ``error.type`` of an error body in the API's shape (``{"type": "error",
    "error": {"type": "overloaded_error", "message": ...}}``)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    kind = error.get("type") if isinstance(error, Mapping) else None
    return kind[:100] if isinstance(kind, str) and kind else None


def _add_usage(usage: dict[str, Any], update: object) -> None:
    """The usage so far with what an event says; later counts are cumulative, so win."""
    if isinstance(update, dict):
        usage.update((key, value) for key, value in update.items() if value is not None)


def _token_counts(usage: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Prompt and completion tokens: the prompt's are the uncached input tokens plus
    those written to and read from the prompt cache, all of which the model read."""
    prompt = count(usage.get("input_tokens"))
    if prompt is not None:
        for key in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            prompt += count(usage.get(key)) or 0
    return prompt, count(usage.get("output_tokens"))
