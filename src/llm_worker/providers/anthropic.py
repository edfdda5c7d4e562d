"""The ``anthropic`` provider: Claude through the Messages API, with the official SDK.

Settings: ``model`` (required), ``max_tokens`` (:data:`DEFAULT_MAX_TOKENS` when
unset: the API requires one), ``stop`` (a string or a list, sent as
``stop_sequences``), ``temperature`` and ``top_p`` (0 to 1), ``top_k`` and
``metadata`` (an object, such as ``{"user_id": ...}``); any other is refused when
the job is added.

The API takes the chat apart from OpenAI's shape, so messages are folded to fit
it (:func:`to_anthropic`): system messages go to its ``system`` parameter,
function and tool messages speak as the user, consecutive turns of one role
merge, and assistant turns before the first user turn join the system text (the
API wants the conversation to open with a user turn; nothing is invented).

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
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson

from llm_worker.jobs.templates import ChatMessage, TemplateError
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
SETTINGS = frozenset({"model", "max_tokens", "stop", "temperature", "top_p", "top_k", "metadata"})
INSTALL_HINT = "install llm-worker[anthropic] (the anthropic SDK) to use provider {name!r}"
MESSAGES_PATH = "/v1/messages"

# Why the model stopped, in the words the rest of the worker uses (OpenAI's).
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
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


def to_anthropic(messages: Sequence[ChatMessage]) -> tuple[str | None, list[dict[str, str]]]:
    """The ``system`` text and the ``messages`` of a Messages API request.

    System messages, joined by blank lines, make the system text. Function and
    tool messages speak as the user. Assistant turns before the first user turn
    join the system text, after the system messages: the API wants a user turn
    first, and inventing one would put words in the user's mouth. Consecutive
    turns of one role are merged with blank lines, as the API wants them to
    alternate; messages with no text are left out, as the API refuses them.
    """
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for message in messages:
        if not message.content.strip():
            continue
        if message.role == "system":
            system.append(message.content)
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if role == "assistant" and not turns:
            system.append(message.content)
        elif turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + message.content
        else:
            turns.append({"role": role, "content": message.content})
    return ("\n\n".join(system) or None), turns


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
            },
            self.defaults,
            closed=True,
        )

    def request_body(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The Messages API request for ``messages`` with ``settings`` over the defaults."""
        merged = {**self.defaults, **settings}
        system, turns = to_anthropic(messages)
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
        for key in ("temperature", "top_p", "top_k", "metadata"):
            if merged.get(key) is not None:
                body[key] = merged[key]
        return body

    def new_reply(self) -> MessageEvents:
        return MessageEvents()

    async def aclose(self) -> None:
        await self._clients.aclose()


class MessageEvents(ReplyReader):
    """What the events of one Messages API reply said so far, besides its text."""

    __slots__ = ("stop_reason", "usage")

    def __init__(self) -> None:
        super().__init__()
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None

    def read(self, data: str) -> str | None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ReplyProblem("sent an event that is not JSON", kind="bad_reply") from None
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                return delta.get("text")
            return None  # thinking, a tool's input: not the reply's text
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

    def end(self) -> CallEnd:
        reason = self.stop_reason
        return CallEnd(
            FINISH_REASONS.get(reason, reason) if reason else None, *_token_counts(self.usage)
        )


def _stream_error(error: object) -> ReplyProblem:
    """An ``error`` event inside the reply (the API's way to fail after its 200)."""
    error_type = message = None
    if isinstance(error, dict):
        error_type, message = error.get("type"), error.get("message")
    said = ": ".join(str(part) for part in (error_type, message) if part)
    kind = _RETRYABLE_STREAM_ERRORS.get(str(error_type))
    return ReplyProblem(
        "reported an error during the reply: " + (said or "no details given"),
        retryable=kind is not None,
        kind=kind or "error",
    )


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
