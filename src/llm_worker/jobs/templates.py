"""Assistant templates: their shape, and the safe rendering of their placeholders.

An assistant is a list of *streams* run one after the other. A stream is either
a model call (``provider``, ``settings``, ``messages``) or a named server-side
``pipeline``. A model call's messages are literal ``{role, content}`` messages,
whose content may hold placeholders such as ``{query}``, or ``{insert: name}``
items that a registered insert expands (``history`` is the chat history).

Rendering replaces ``{name}`` with a value and ``{{``/``}}`` with literal braces,
in one pass and nothing more: attribute access, indexing and positional fields
(``{query.__class__}``, ``{history[0]}``, ``{0}``) are rejected, and the values
themselves -- text that clients send -- are never rendered again.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from llm_worker.jobs.messages import ChatMessage, TextPart

QUERY = "query"
PREVIOUS_STREAM_OUTPUT = "previous_stream_output"
BUILTIN_PLACEHOLDERS = frozenset({QUERY, PREVIOUS_STREAM_OUTPUT})


class TemplateError(ValueError):
    """A template that cannot run; the message says what is wrong and where."""


class TemplateMessage(ChatMessage):
    """A literal message of a template; its content may hold placeholders."""


class _Named(BaseModel):
    """A template item named by one key; its other keys are options for it."""

    model_config = ConfigDict(frozen=True, extra="allow")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class InsertItem(_Named):
    """``{"insert": name, ...options}``: messages produced by a registered insert."""

    insert: str


class PipelineStream(_Named):
    """``{"pipeline": name, ...options}``: a stream implemented on the server."""

    pipeline: str


def _tag_by_key(key: str, keyed: type[BaseModel], tag: str, otherwise: str) -> Discriminator:
    """Tells union members apart by the presence of ``key``."""

    def kind(value: Any) -> str:
        if isinstance(value, Mapping):
            return tag if key in value else otherwise
        return tag if isinstance(value, keyed) else otherwise

    return Discriminator(kind)


MessageItem = Annotated[
    Annotated[TemplateMessage, Tag("message")] | Annotated[InsertItem, Tag("insert")],
    _tag_by_key("insert", InsertItem, "insert", "message"),
]


class Fallback(BaseModel):
    """A provider to ask instead when the stream's own fails before any output."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str
    settings: dict[str, Any] = Field(default_factory=dict)


# Each fallback may cost a whole round of retries: a few are plenty.
MAX_FALLBACKS = 4


class ModelStream(BaseModel):
    """A model call: messages rendered and sent to ``provider`` with ``settings``; when
    that fails before any output (after its own retries), to each of ``fallbacks`` in
    turn."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str
    settings: dict[str, Any] = Field(default_factory=dict)
    messages: list[MessageItem] = Field(min_length=1)
    fallbacks: list[Fallback] = Field(default_factory=list, max_length=MAX_FALLBACKS)

    def choices(self) -> list[tuple[str, dict[str, Any]]]:
        """The providers to ask, in order, with their settings."""
        return [(self.provider, self.settings)] + [(f.provider, f.settings) for f in self.fallbacks]


Stream = Annotated[
    Annotated[ModelStream, Tag("model")] | Annotated[PipelineStream, Tag("pipeline")],
    _tag_by_key("pipeline", PipelineStream, "pipeline", "model"),
]


class Assistant(BaseModel):
    """An assistant template: streams run in order; the last one's output is the job's.

    Fields besides ``streams`` (F-AI's templates carry ``id``, ``meta`` and
    ``files_collection_id``) are the template's own: kept with the job and
    handed to inserts and pipelines, and those holding text, a number or a
    boolean are placeholders too (``{files_collection_id}``).
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    streams: list[Stream] = Field(min_length=1)

    @property
    def fields(self) -> dict[str, Any]:
        """The template's own fields: everything but ``streams``."""
        return dict(self.model_extra or {})

    def placeholder_values(self) -> dict[str, str]:
        """The fields a placeholder can name, as the text they are replaced with."""
        values = {}
        for name, value in (self.model_extra or {}).items():
            text = text_value(value)
            if text is not None and PLAIN_NAME.match(name):
                values[name] = text
        return values


def text_value(value: Any) -> str | None:
    """A JSON scalar as placeholder text (``true``/``false`` for booleans); ``None``
    for anything else (objects, arrays, null)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


# -- placeholders -------------------------------------------------------------

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str


@dataclass(frozen=True, slots=True)
class CompiledText:
    """Template text split into literal parts and placeholders."""

    parts: tuple[str | Placeholder, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.parts if isinstance(p, Placeholder))

    def render(self, values: Mapping[str, str]) -> str:
        """The text with every placeholder replaced; values are inserted verbatim."""
        return "".join(p if isinstance(p, str) else values[p.name] for p in self.parts)

    def size(self, values: Mapping[str, str]) -> int:
        """The length :meth:`render` would give (a value not given counts as empty),
        known before anything is built."""
        return sum(
            len(p) if isinstance(p, str) else len(values.get(p.name, "")) for p in self.parts
        )


# Compiled texts are kept while they fit: templates repeat, but one client's
# stream of large distinct ones must not grow the process.
CACHE_CHARS = 8_000_000
CACHE_LARGEST = 100_000
_cache: OrderedDict[str, CompiledText] = OrderedDict()
_cached_chars = 0


def compile_text(text: str) -> CompiledText:
    """:func:`_compile`, remembered for texts of a reasonable size (least recently
    used ones forgotten beyond :data:`CACHE_CHARS` characters in all)."""
    global _cached_chars
    compiled = _cache.get(text)
    if compiled is not None:
        _cache.move_to_end(text)
        return compiled
    compiled = _compile(text)
    if len(text) <= CACHE_LARGEST:
        _cache[text] = compiled
        _cached_chars += len(text)
        while _cached_chars > CACHE_CHARS:
            forgotten, _ = _cache.popitem(last=False)
            _cached_chars -= len(forgotten)
    return compiled


def _compile(text: str) -> CompiledText:
    """Split ``text`` into literals and ``{name}`` placeholders.

    Raises :class:`TemplateError` for anything inside braces that is not a plain
    name, and for a lone ``{`` or ``}`` (write ``{{`` or ``}}`` for a literal one).
    """
    parts: list[str | Placeholder] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[position : match.start()])
        token = match.group(0)
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        elif match.group(1) is not None:
            name = match.group(1)
            if not PLAIN_NAME.match(name):
                raise TemplateError(
                    f"invalid placeholder {token!r}: only plain names such as {{query}} "
                    "are replaced (write {{ and }} for literal braces)"
                )
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Placeholder(name))
        else:
            raise TemplateError(
                f"unmatched {token!r} at character {match.start()}: "
                f"write {token * 2} for a literal brace"
            )
        position = match.end()
    literal.append(text[position:])
    tail = "".join(literal)
    if tail:
        parts.append(tail)
    return CompiledText(tuple(parts))


def check_placeholders(text: str, known: Iterable[str], where: str) -> None:
    """Raise :class:`TemplateError` if ``text`` is malformed or names an unknown value."""
    try:
        compiled = compile_text(text)
    except TemplateError as exc:
        raise TemplateError(f"{where}: {exc}") from None
    unknown = sorted(compiled.names - frozenset(known))
    if unknown:
        known_list = ", ".join("{" + name + "}" for name in sorted(known))
        raise TemplateError(
            f"{where}: unknown placeholder {{{unknown[0]}}} (known here: {known_list})"
        )


def render(text: str, values: Mapping[str, str]) -> str:
    """``text`` with its placeholders replaced by ``values`` (checked beforehand)."""
    return compile_text(text).render(values)


def template_texts(message: ChatMessage, where: str) -> list[tuple[str, str]]:
    """The texts of a template message that placeholders render in, each with where it
    is: its content, or its text parts (an image's URL, say, is never rendered)."""
    content = message.content
    if isinstance(content, str):
        return [(content, f"{where}.content")]
    if content is None:
        return []
    return [
        (part.text, f"{where}.content[{number}].text")
        for number, part in enumerate(content)
        if isinstance(part, TextPart)
    ]


def template_size(message: ChatMessage, values: Mapping[str, str]) -> int:
    """The size the template message will have rendered (:meth:`ChatMessage.size`),
    known before anything is built."""
    content = message.content
    if isinstance(content, str):
        return compile_text(content).size(values)
    rendered = sum(compile_text(text).size(values) for text, _ in template_texts(message, ""))
    literal = message.size() - sum(len(text) for text, _ in template_texts(message, ""))
    return rendered + literal


def render_message(message: ChatMessage, values: Mapping[str, str]) -> ChatMessage:
    """The template message with the placeholders of its text rendered."""
    content = message.content
    if isinstance(content, str):
        return message.model_copy(update={"content": compile_text(content).render(values)})
    if content is None:
        return message
    parts = [
        part.model_copy(update={"text": compile_text(part.text).render(values)})
        if isinstance(part, TextPart)
        else part
        for part in content
    ]
    return message.model_copy(update={"content": parts})
