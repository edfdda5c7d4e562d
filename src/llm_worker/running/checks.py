"""What is checked when a job is added, before it exists: its template against what
this deployment offers (providers and their settings, inserts, pipelines,
placeholders) and its size against the deployment's limits, so that a job that
cannot run is refused at ``add`` rather than failing later. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.model import JobSpec
from llm_worker.jobs.templates import (
    BUILTIN_PLACEHOLDERS,
    PLAIN_NAME,
    PREVIOUS_STREAM_OUTPUT,
    QUERY,
    InsertItem,
    ModelStream,
    PipelineStream,
    TemplateError,
    check_placeholders,
    template_size,
    template_texts,
)
from llm_worker.providers import Provider
from llm_worker.running.context import CheckContext
from llm_worker.running.inserts import Insert
from llm_worker.running.pipelines import Pipeline
from llm_worker.running.registry import Registry


class RequestRefused(TemplateError):
    """A request beyond this deployment's limits; the message names the size and the limit."""


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """How large one job may be (the defaults of the settings of the same names)."""

    max_streams: int = 16
    max_history_messages: int = 1000
    max_model_request_chars: int = 4_000_000


def declared_names(stream: PipelineStream, pipeline: Pipeline) -> frozenset[str]:
    """The names the pipeline of ``stream`` sets; :class:`TemplateError` for bad ones."""
    names = frozenset(pipeline.sets(stream.options))
    for name in sorted(names):
        if not isinstance(name, str) or not PLAIN_NAME.match(name):
            raise TemplateError(f"pipeline {stream.pipeline!r} sets {name!r}: not a plain name")
        if name in BUILTIN_PLACEHOLDERS:
            raise TemplateError(
                f"pipeline {stream.pipeline!r} sets {name!r}, which is reserved for the worker"
            )
    return names


class JobChecks:
    """The checks of a job at ``add``, with this deployment's registries and limits."""

    def __init__(
        self,
        providers: Registry[Provider],
        inserts: Registry[Insert],
        pipelines: Registry[Pipeline],
        limits: RequestLimits,
    ) -> None:
        self.providers = providers
        self.inserts = inserts
        self.pipelines = pipelines
        self.limits = limits

    def check(self, spec: JobSpec) -> None:
        """Raise :class:`TemplateError` naming the first thing that would stop ``spec``."""
        reserved = sorted(BUILTIN_PLACEHOLDERS & spec.variables.keys())
        if reserved:
            raise TemplateError(f"variables: {reserved[0]!r} is reserved for the worker")
        self._check_sizes(spec)
        fields = spec.assistant.fields
        # Values that every stream may name; pipelines add theirs for the streams after them.
        known = {QUERY, *spec.assistant.placeholder_values(), *spec.variables}
        # What is known of them now; the others count as empty in size estimates.
        values = {**spec.assistant.placeholder_values(), **spec.variables, QUERY: spec.query}
        for index, stream in enumerate(spec.assistant.streams):
            where = f"assistant.streams[{index}]"
            here = known | {PREVIOUS_STREAM_OUTPUT} if index else known
            context = CheckContext(self.providers, fields, frozenset(here))
            if isinstance(stream, PipelineStream):
                known |= self._prefixed(where, self._check_pipeline, stream, context)
            else:
                self._prefixed(where, self._check_model_stream, stream, context, where)
                self._check_request_size(stream, values, spec, where)
                self._check_messages(stream, spec, where)

    def _check_messages(self, stream: ModelStream, spec: JobSpec, where: str) -> None:
        """Refuse a message that may reach one of the stream's providers (its own or a
        fallback) and holds what that provider cannot send: its literal messages, and
        the history when the stream has an insert (inserts are handed the history)."""
        messages = [
            (item, f"{where}.messages[{position}]")
            for position, item in enumerate(stream.messages)
            if not isinstance(item, InsertItem)
        ]
        if any(isinstance(item, InsertItem) for item in stream.messages):
            messages += [(message, f"history[{n}]") for n, message in enumerate(spec.history)]
        for name, _ in stream.choices():
            provider = self.providers.get(name)
            for message, message_where in messages:
                provider.check_message(message, message_where, name)

    def _check_sizes(self, spec: JobSpec) -> None:
        limits = self.limits
        streams = len(spec.assistant.streams)
        if streams > limits.max_streams:
            raise RequestRefused(
                f"the template has {streams} streams; at most {limits.max_streams} (MAX_STREAMS)"
            )
        messages = len(spec.history)
        if messages > limits.max_history_messages:
            raise RequestRefused(
                f"the history has {messages} messages; at most {limits.max_history_messages} "
                "(MAX_HISTORY_MESSAGES)"
            )

    def _check_request_size(
        self, stream: ModelStream, values: Mapping[str, str], spec: JobSpec, where: str
    ) -> None:
        """Refuse a stream whose request is too long already with what is known now."""
        size = 0
        for item in stream.messages:
            if isinstance(item, InsertItem):
                size += self.inserts.get(item.insert).size_hint(item.options, spec)
            else:
                size += template_size(item, values)
        limit = self.limits.max_model_request_chars
        if size > limit:
            raise RequestRefused(
                f"{where}: its request to the model would be at least {size:,} characters; "
                f"at most {limit:,} (MAX_MODEL_REQUEST_CHARS)"
            )

    def request_size(self, provider: str, messages: Sequence[ChatMessage]) -> None:
        """Refuse a rendered request to ``provider`` longer than the deployment allows."""
        size = sum(message.size() for message in messages)
        limit = self.limits.max_model_request_chars
        if size > limit:
            raise RequestRefused(
                f"the request to provider {provider!r} would be {size:,} characters; "
                f"at most {limit:,} (MAX_MODEL_REQUEST_CHARS)"
            )

    @staticmethod
    def _prefixed(where: str, check: Any, *args: Any) -> Any:
        try:
            return check(*args)
        except TemplateError as exc:
            message = str(exc)
            if not message.startswith("assistant."):
                message = f"{where}: {message}"
            raise type(exc)(message) from None

    def _check_pipeline(self, stream: PipelineStream, context: CheckContext) -> frozenset[str]:
        """Check a pipeline stream; the names of the values it sets for later streams."""
        pipeline = self.pipelines.get(stream.pipeline)
        try:
            pipeline.check(stream.options, context)
        except TemplateError as exc:
            raise TemplateError(f"pipeline {stream.pipeline!r} {exc}") from None
        return declared_names(stream, pipeline)

    def _check_model_stream(self, stream: ModelStream, context: CheckContext, where: str) -> None:
        self.providers.get(stream.provider).check_settings(stream.settings)
        for number, fallback in enumerate(stream.fallbacks):
            try:
                self.providers.get(fallback.provider).check_settings(fallback.settings)
            except TemplateError as exc:
                raise TemplateError(f"fallbacks[{number}]: {exc}") from None
        for position, item in enumerate(stream.messages):
            item_where = f"{where}.messages[{position}]"
            if isinstance(item, InsertItem):
                insert = self.inserts.get(item.insert)
                try:
                    insert.check(item.options, stream, context)
                except TemplateError as exc:
                    raise TemplateError(f"{item_where}: insert {item.insert!r} {exc}") from None
            else:
                for text, text_where in template_texts(item, item_where):
                    check_placeholders(text, context.known, text_where)
