"""Inserts: template items ``{"insert": name, ...options}`` that expand into messages.

Built in:

``history``
    The job's chat history. Option ``last``: keep only that many of its latest
    messages.
``history_summary``
    A model call summarises the older part of the history; the summary (as a
    system message) is followed by the latest ``keep_last`` messages (3). With
    no more than ``keep_last`` messages there is nothing to summarise and no
    call is made. Options: ``provider`` and ``settings`` (default: those of the
    stream the insert is in; ``settings`` are needed with another provider than
    the stream's), ``keep_last``, ``instructions``.

A deployment adds its own by subclassing :class:`Insert` and registering it
(entry point group ``llm_worker.inserts`` or ``EXTRA_INSERTS``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.model import JobSpec
from llm_worker.jobs.templates import ModelStream, TemplateError
from llm_worker.providers.checks import INT64_MAX
from llm_worker.running.context import CheckContext, StreamContext
from llm_worker.running.registry import Registry


class Insert(abc.ABC):
    """Expands to messages when its stream runs."""

    def check(self, options: Mapping[str, Any], stream: ModelStream, context: CheckContext) -> None:
        """Raise :class:`TemplateError` for a use that cannot work; no I/O."""
        if options:
            raise TemplateError(f"takes no options, got {', '.join(sorted(options))}")

    def options_schema(
        self, provider: str, settings: Mapping[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """The JSON Schema of the options :meth:`check` accepts in a stream of
        ``provider``, given each usable provider's settings schema, for the HTTP API's
        document: none if :meth:`check` is this one, any otherwise."""
        closed = type(self).check is Insert.check
        return {"type": "object", "properties": {}, "additionalProperties": not closed}

    @abc.abstractmethod
    async def expand(
        self, options: Mapping[str, Any], stream: ModelStream, context: StreamContext
    ) -> list[ChatMessage]:
        """The messages that stand where the insert is."""

    def size_hint(self, options: Mapping[str, Any], spec: JobSpec) -> int:
        """At least how many characters the messages it expands to will hold, as far as
        the request tells (0 when it cannot say): a request too long is refused early."""
        return 0


def _non_negative_int(options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise TemplateError(f"option {key!r} must be a whole number >= 0, not {value!r}")
    return value


class HistoryInsert(Insert):
    def check(self, options: Mapping[str, Any], stream: ModelStream, context: CheckContext) -> None:
        unknown = set(options) - {"last"}
        if unknown:
            raise TemplateError(f"unknown option {sorted(unknown)[0]!r} (known: 'last')")
        if "last" in options:
            _non_negative_int(options, "last", 0)

    def options_schema(
        self, provider: str, settings: Mapping[str, dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"last": _NON_NEGATIVE},
            "additionalProperties": False,
        }

    async def expand(
        self, options: Mapping[str, Any], stream: ModelStream, context: StreamContext
    ) -> list[ChatMessage]:
        return _kept(options, context.history)

    def size_hint(self, options: Mapping[str, Any], spec: JobSpec) -> int:
        return sum(message.size() for message in _kept(options, spec.history))


def _kept(options: Mapping[str, Any], history: list[ChatMessage]) -> list[ChatMessage]:
    if "last" in options:
        last = options["last"]
        return list(history[-last:]) if last else []
    return list(history)


# Text with a character that is not whitespace (to str.strip): no "$", no \s (whose
# meaning differs between regex engines).
NOT_BLANK = "[^\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_NON_NEGATIVE = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
DEFAULT_SUMMARY_INSTRUCTIONS = (
    "Summarise the conversation you are given in a few sentences. Keep every fact, "
    "name, number and decision that a reader would need to continue it. "
    "Reply with the summary only."
)


class HistorySummaryInsert(Insert):
    OPTIONS = frozenset({"provider", "settings", "keep_last", "instructions"})

    def check(self, options: Mapping[str, Any], stream: ModelStream, context: CheckContext) -> None:
        unknown = set(options) - self.OPTIONS
        if unknown:
            known = ", ".join(repr(o) for o in sorted(self.OPTIONS))
            raise TemplateError(f"unknown option {sorted(unknown)[0]!r} (known: {known})")
        provider_name = options.get("provider", stream.provider)
        if not isinstance(provider_name, str):
            raise TemplateError(f"option 'provider' must be a string, not {provider_name!r}")
        settings = options.get("settings", stream.settings)
        if not isinstance(settings, dict):
            raise TemplateError(f"option 'settings' must be an object, not {settings!r}")
        context.providers.get(provider_name).check_settings(settings)
        if provider_name != stream.provider and "settings" not in options:
            raise TemplateError(
                f"option 'settings' is needed with provider {provider_name!r}: the stream's "
                f"are for {stream.provider!r}"
            )
        _non_negative_int(options, "keep_last", 3)
        instructions = options.get("instructions", DEFAULT_SUMMARY_INSTRUCTIONS)
        if not isinstance(instructions, str) or not instructions.strip():
            raise TemplateError("option 'instructions' must be a non-empty string")

    def options_schema(
        self, provider: str, settings: Mapping[str, dict[str, Any]]
    ) -> dict[str, Any]:
        common = {
            "keep_last": _NON_NEGATIVE,
            "instructions": {"type": "string", "pattern": NOT_BLANK},
        }
        # The stream's provider (named or not), or another one with its settings.
        return {
            "anyOf": [
                {
                    "type": "object",
                    "required": [] if name == provider else ["provider", "settings"],
                    "properties": {
                        "provider": {"const": name},
                        "settings": schema,
                        **common,
                    },
                    "additionalProperties": False,
                }
                for name, schema in settings.items()
            ]
        }

    async def expand(
        self, options: Mapping[str, Any], stream: ModelStream, context: StreamContext
    ) -> list[ChatMessage]:
        keep_last = options.get("keep_last", 3)
        history = context.history
        older = history[: len(history) - keep_last]
        recent = history[len(history) - keep_last :] if keep_last else []
        if not older:
            return list(recent)
        transcript = "\n\n".join(f"{m.role}: {m.text}" for m in older)
        summary = await context.models.complete(
            options.get("provider", stream.provider),
            [
                ChatMessage(
                    role="system",
                    content=options.get("instructions", DEFAULT_SUMMARY_INSTRUCTIONS),
                ),
                ChatMessage(role="user", content=transcript),
            ],
            options.get("settings", stream.settings),
        )
        return [
            ChatMessage(role="system", content=f"Summary of the earlier conversation:\n{summary}"),
            *recent,
        ]


def builtin_inserts() -> Registry[Insert]:
    inserts: Registry[Insert] = Registry("insert")
    inserts.register("history", HistoryInsert())
    inserts.register("history_summary", HistorySummaryInsert())
    return inserts
