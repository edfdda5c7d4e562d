"""The provider seam: given messages and settings, yield the reply's parts.

The parts are text deltas (``str``) and the typed parts of
:mod:`llm_worker.jobs.parts`: reasoning, tool-call fragments, refusals.

A provider is whatever turns a rendered list of chat messages into text: an
OpenAI-compatible server, a model in this process, anything a plugin adds.
Cancelling the task that iterates :meth:`Provider.stream` must stop the work
upstream (for a remote model: close the HTTP stream so the server stops
generating); an implementation does that by releasing its resources in a
``finally`` block of the generator.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_worker.jobs.messages import ChatMessage, TextPart
from llm_worker.jobs.parts import Part, Reasoning, Refusal, ToolCallDelta
from llm_worker.jobs.templates import TemplateError
from llm_worker.jobs.usage import CallEnd

__all__ = [
    "KINDS",
    "CallEnd",
    "Notice",
    "Part",
    "Provider",
    "ProviderError",
    "Reasoning",
    "Refusal",
    "ToolCallDelta",
]

KINDS = frozenset(
    {
        "error",  # any other
        "configuration",  # the deployment lacks a key or a URL
        "rate_limited",  # HTTP 429
        "http_4xx",
        "http_5xx",
        "timeout",
        "connection",  # cannot connect, or the connection was lost
        "cut",  # the reply stream ended before the model finished
        "empty",  # the reply stream said nothing
        "bad_reply",  # the reply was not what the API says
    }
)


TEXT_ONLY: dict[str, Any] = {
    "properties": {
        "content": {
            "anyOf": [
                {"type": ["string", "null"]},
                {"type": "array", "items": {"properties": {"type": {"const": "text"}}}},
            ]
        },
        "tool_calls": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]},
    },
    "description": "Text only: no other content parts, no tool calls.",
}
"""The messages a text-only provider takes (:meth:`Provider.message_schema`)."""


class ProviderError(Exception):
    """A model call that failed; the message is shown to the job's listeners.

    ``retryable`` marks failures worth another try (rate limits, server errors,
    lost connections); the runner retries them only while nothing of the
    call's output has reached a listener. ``retry_after`` is the delay the
    server asked for, in seconds, when it said. ``kind`` names the failure for
    metrics, from a short fixed list (:data:`KINDS`).
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        kind: str = "error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.kind = kind if kind in KINDS else "error"
        self.code = code
        """The upstream API's own code for the error, where it said one
        (``context_length_exceeded``); the message names it too."""


@dataclass(frozen=True, slots=True)
class Notice:
    """What a provider may yield for the job's listeners that is no text of the reply:
    why they wait (``loading local model 'x' ...``), in words for a person."""

    message: str


class Provider(abc.ABC):
    """Turns chat messages into a stream of the reply's parts."""

    def check_settings(self, settings: Mapping[str, Any]) -> None:  # noqa: B027
        """Raise :class:`~llm_worker.jobs.templates.TemplateError` for settings that cannot work,
        or when the provider cannot run jobs at all (:meth:`configuration_problem`).

        Called when a job is added, before it exists; must not do I/O.
        """

    def check_message(self, message: ChatMessage, where: str, name: str) -> None:
        """Raise :class:`~llm_worker.jobs.templates.TemplateError` naming the first thing
        of ``message`` (found at ``where``) this provider (registered as ``name``) cannot
        send: nothing it is given
        is dropped silently. By default a provider takes text, and tool results as text:
        no other content parts, no tool calls.

        Called when a job is added, for every message of its history and templates that
        may reach the provider; must not do I/O.
        """
        content = message.content
        if isinstance(content, list):
            for number, part in enumerate(content):
                if not isinstance(part, TextPart):
                    raise TemplateError(
                        f"{where}.content[{number}]: provider {name!r} takes text "
                        f"only, not {part.type!r} parts"
                    )
        if message.tool_calls:
            raise TemplateError(f"{where}.tool_calls: provider {name!r} cannot take tool calls")

    def message_schema(self) -> dict[str, Any] | None:
        """What :meth:`check_message` asks of a message beyond its fields, as a JSON Schema
        that a message object must also meet (for the HTTP API's document); ``None`` when
        it takes every message. By default: text, and no tool calls."""
        return TEXT_ONLY

    def configuration_problem(self) -> str | None:
        """What the deployment must set before this provider can run jobs (a key, a
        URL), in words for a client; ``None`` when it can."""
        return None

    def settings_schema(self) -> dict[str, Any]:
        """The JSON Schema of the settings :meth:`check_settings` accepts, for the HTTP
        API's document (``/openapi.json``); by default any object."""
        return {"type": "object"}

    async def served_models(self) -> list[str]:
        """The models the provider's server says it serves, beyond those its settings
        name (OpenAI's ``GET /v1/models`` lists them); none by default."""
        return []

    @abc.abstractmethod
    def stream(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[Part | Notice | CallEnd]:
        """Yield the model's reply as parts: non-empty text deltas (``str``) and, where the
        model makes them, :class:`Reasoning`, :class:`ToolCallDelta` and :class:`Refusal`
        parts in the order the model made them; then, if the model said, a
        :class:`CallEnd` (a provider that yields none has its usage reported as unknown).

        Before the text, a :class:`Notice` tells the job's listeners why they wait
        (a model loading, say); it is no output: the call may still be retried, or
        fall back to another provider, after one. Keep notices few: each is an
        event of the job's log.

        Ends normally only when the model finished its reply; raises
        :class:`ProviderError` otherwise, a stream cut short included.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release shared resources (connections, models) at shutdown."""
