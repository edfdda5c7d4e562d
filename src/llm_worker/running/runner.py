"""Runs one job: its template's streams in order, the last one's deltas out (and
every stream's notices: why the listeners wait).

The runner is also where a template is checked against what this deployment
offers (providers, inserts, pipelines, placeholders), so that a job that cannot
run is refused when it is added rather than failing later.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from llm_worker.jobs.model import JobSpec
from llm_worker.jobs.templates import (
    BUILTIN_PLACEHOLDERS,
    PLAIN_NAME,
    PREVIOUS_STREAM_OUTPUT,
    QUERY,
    ChatMessage,
    InsertItem,
    ModelStream,
    PipelineStream,
    TemplateError,
    check_placeholders,
    compile_text,
)
from llm_worker.jobs.usage import JobUsage, track
from llm_worker.jobs.usage import current as current_usage
from llm_worker.ops.metrics import Metrics, ModelCall
from llm_worker.providers import CallEnd, Notice, Provider, ProviderError
from llm_worker.running.context import CheckContext, StreamContext
from llm_worker.running.inserts import Insert
from llm_worker.running.pipelines import Pipeline
from llm_worker.running.registry import Registry

log = logging.getLogger(__name__)


class RequestRefused(TemplateError):
    """A request beyond this deployment's limits; the message names the size and the limit."""


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """How large one job may be (the defaults of the settings of the same names)."""

    max_streams: int = 16
    max_history_messages: int = 1000
    max_model_request_chars: int = 4_000_000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a retryable provider failure is tried again."""

    retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, retry: int, error: ProviderError) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...)."""
        if error.retry_after is not None:
            return min(error.retry_after, self.max_delay)
        backoff = self.base_delay * 2 ** (retry - 1)
        return min(backoff * random.uniform(0.8, 1.2), self.max_delay)


def _declared(stream: PipelineStream, pipeline: Pipeline) -> frozenset[str]:
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


def _in_stream(
    index: int, stream: ModelStream | PipelineStream, error: TemplateError
) -> TemplateError:
    """``error``, raised while a stream ran, saying which stream (and pipeline) it was."""
    message = str(error)
    if message.startswith("assistant."):
        return error
    if isinstance(stream, PipelineStream):
        message = f"pipeline {stream.pipeline!r} {message}"
    return TemplateError(f"assistant.streams[{index}]: {message}")


def _values_set(index: int, stream: PipelineStream, context: StreamContext) -> dict[str, str]:
    """What a finished stream's pipeline set for the streams after it; all it declared."""
    missing = sorted(context.settable - context.set_values.keys())
    if missing:
        raise TemplateError(
            f"assistant.streams[{index}]: pipeline {stream.pipeline!r} ended without "
            f"setting {missing[0]!r}, which it declares"
        )
    return context.set_values


def _ended(call: ModelCall, end: CallEnd | None) -> None:
    """A model call ended well: its figures to the metrics, its tokens to its job's."""
    call.finished(end)
    if (usage := current_usage()) is not None:
        usage.record(end)


def _answered(usage: JobUsage | None, provider: str) -> None:
    if usage is not None:
        usage.answered(provider)


def _all_failed(failures: list[tuple[str, ProviderError]]) -> ProviderError:
    """The error of a stream whose provider and every fallback failed: each one's."""
    said = "; ".join(f"{provider!r}: {error.message}" for provider, error in failures)
    return ProviderError(f"every provider of the stream failed: {said}", kind="error")


def _exhausted(error: ProviderError, tries: int) -> ProviderError:
    if tries <= 1:
        return error
    return ProviderError(f"{error.message} (gave up after {tries} tries)")


class Runner:
    """Checks and runs assistant templates with this deployment's registries."""

    def __init__(
        self,
        providers: Registry[Provider],
        inserts: Registry[Insert],
        pipelines: Registry[Pipeline],
        retry: RetryPolicy | None = None,
        limits: RequestLimits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.providers = providers
        self.inserts = inserts
        self.pipelines = pipelines
        self.retry = retry or RetryPolicy()
        self.limits = limits or RequestLimits()
        self.metrics = metrics or Metrics()

    # -- checking -----------------------------------------------------------

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
                size += compile_text(item.content).size(values)
        limit = self.limits.max_model_request_chars
        if size > limit:
            raise RequestRefused(
                f"{where}: its request to the model would be at least {size:,} characters; "
                f"at most {limit:,} (MAX_MODEL_REQUEST_CHARS)"
            )

    def _check_size(self, provider: str, messages: Sequence[ChatMessage]) -> None:
        size = sum(len(message.content) for message in messages)
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
        return _declared(stream, pipeline)

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
                check_placeholders(item.content, context.known, f"{item_where}.content")

    # -- running ------------------------------------------------------------

    async def run(
        self, spec: JobSpec, usage: JobUsage | None = None
    ) -> AsyncIterator[str | Notice]:
        """Yield the text deltas of the job's last stream, and the notices of its model
        streams' providers (inner ones' too) as they come; the tokens its model calls
        take go to ``usage``, by stream.

        Raises :class:`ProviderError` or :class:`TemplateError` when the job
        cannot complete; the message is meant for the job's listeners.
        """
        streams = spec.assistant.streams
        values = {**spec.assistant.placeholder_values(), **spec.variables}
        previous_output = ""
        if usage is not None:
            track(usage)
        for index, stream in enumerate(streams):
            last = index == len(streams) - 1
            if usage is not None:
                usage.current = index
            here = {**values, QUERY: spec.query, PREVIOUS_STREAM_OUTPUT: previous_output}
            if isinstance(stream, PipelineStream):
                pipeline = self.pipelines.get(stream.pipeline)
                context = StreamContext(
                    spec, index, previous_output, self, here, _declared(stream, pipeline)
                )
                deltas = pipeline.run(stream.options, context)
            else:
                context = StreamContext(spec, index, previous_output, self, here)
                messages = await self.build_messages(stream, context)
                if not last:
                    # Nothing of an inner stream's text reaches listeners: it may be
                    # retried from scratch even after part of it arrived.
                    async with aclosing(self._complete_any(stream, messages, usage)) as parts:
                        async for part in parts:
                            if type(part) is str:
                                previous_output = part
                            else:
                                yield part
                    continue
                deltas = self._stream_any(stream, messages, usage)
            try:
                async with aclosing(deltas):
                    if last:
                        async for delta in deltas:
                            if delta:
                                yield delta
                        return
                    previous_output = "".join([delta async for delta in deltas])
            except TemplateError as exc:
                raise _in_stream(index, stream, exc) from None
            if isinstance(stream, PipelineStream):
                values.update(_values_set(index, stream, context))

    async def _stream_any(
        self, stream: ModelStream, messages: Sequence[ChatMessage], usage: JobUsage | None
    ) -> AsyncIterator[str | Notice]:
        """The stream's reply from its provider, or, when that fails before any output,
        from each of its fallbacks in turn; ``usage`` learns which one answered."""
        failures: list[tuple[str, ProviderError]] = []
        for provider, settings in stream.choices():
            started = False
            try:
                async with aclosing(self._parts(provider, messages, settings)) as deltas:
                    async for delta in deltas:
                        if not started and type(delta) is str:
                            started = True
                            _answered(usage, provider)
                        yield delta
                if not started:  # a reply without text
                    _answered(usage, provider)
                return
            except ProviderError as error:
                if started or not stream.fallbacks:
                    raise
                failures.append((provider, error))
                self._falling_back(provider, error, stream, len(failures))
        raise _all_failed(failures)

    async def _complete_any(
        self, stream: ModelStream, messages: Sequence[ChatMessage], usage: JobUsage | None
    ) -> AsyncIterator[str | Notice]:
        """The stream's notices, then its whole reply (one ``str``), from its provider or
        from its fallbacks in turn."""
        failures: list[tuple[str, ProviderError]] = []
        for provider, settings in stream.choices():
            reply = ""
            try:
                async with aclosing(self._completion(provider, messages, settings)) as parts:
                    async for part in parts:
                        if type(part) is str:
                            reply = part
                        else:
                            yield part
            except ProviderError as error:
                if not stream.fallbacks:
                    raise
                failures.append((provider, error))
                self._falling_back(provider, error, stream, len(failures))
                continue
            _answered(usage, provider)
            yield reply
            return
        raise _all_failed(failures)

    def _falling_back(
        self, provider: str, error: ProviderError, stream: ModelStream, failed: int
    ) -> None:
        if failed < len(stream.fallbacks) + 1:
            following = stream.fallbacks[failed - 1].provider
            log.warning("%s; falling back to provider %r", error.message, following)
            self.metrics.provider_fallbacks.labels(provider).inc()

    async def build_messages(
        self, stream: ModelStream, context: StreamContext
    ) -> list[ChatMessage]:
        """The stream's messages: literals rendered, inserts expanded; nothing larger
        than the deployment allows is built."""
        messages: list[ChatMessage] = []
        size = 0
        for item in stream.messages:
            if isinstance(item, InsertItem):
                insert = self.inserts.get(item.insert)
                expanded = await insert.expand(item.options, stream, context)
                size += sum(len(message.content) for message in expanded)
                messages.extend(expanded)
            else:
                compiled = compile_text(item.content)
                size += compiled.size(context.values)
                if size > self.limits.max_model_request_chars:
                    break
                messages.append(
                    item.model_copy(update={"content": compiled.render(context.values)})
                )
        if size > self.limits.max_model_request_chars:
            raise RequestRefused(
                f"assistant.streams[{context.stream_index}]: its request to provider "
                f"{stream.provider!r} would be at least {size:,} characters; at most "
                f"{self.limits.max_model_request_chars:,} (MAX_MODEL_REQUEST_CHARS)"
            )
        return messages

    # -- model calls (the ModelCalls protocol of inserts and pipelines) ------

    async def stream(
        self, provider: str, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[str]:
        """The reply as deltas, retried while none has been yielded."""
        async with aclosing(self._parts(provider, messages, settings)) as parts:
            async for part in parts:
                if type(part) is str:
                    yield part

    async def complete(
        self, provider: str, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> str:
        """The whole reply; a retryable failure starts it again from scratch."""
        reply = ""
        async with aclosing(self._completion(provider, messages, settings)) as parts:
            async for part in parts:
                if type(part) is str:
                    reply = part
        return reply

    async def _parts(
        self, provider: str, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[str | Notice]:
        """:meth:`stream`, with the provider's notices: a notice is no output, so a
        call that failed after one may still be retried."""
        self._check_size(provider, messages)
        chosen = self.providers.get(provider)
        tries = 0
        while True:
            tries += 1
            started = False
            call = self.metrics.model_call(provider, settings)
            end: CallEnd | None = None
            try:
                async with aclosing(chosen.stream(messages, settings)) as deltas:
                    async for delta in deltas:
                        if type(delta) is not str:
                            if isinstance(delta, Notice):
                                yield delta
                            else:
                                end = delta if isinstance(delta, CallEnd) else None
                            continue
                        started = True
                        call.delta()
                        yield delta
                _ended(call, end)
                return
            except ProviderError as error:
                call.failed(error.kind)
                if started or not error.retryable or tries > self.retry.retries:
                    raise _exhausted(error, tries) from error
                call.retried()
                await self._pause(tries, error)

    async def _completion(
        self, provider: str, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[str | Notice]:
        """:meth:`complete`: the provider's notices as they come, then the whole reply
        (one ``str``)."""
        self._check_size(provider, messages)
        chosen = self.providers.get(provider)
        tries = 0
        while True:
            tries += 1
            call = self.metrics.model_call(provider, settings)
            end: CallEnd | None = None
            try:
                async with aclosing(chosen.stream(messages, settings)) as deltas:
                    parts = []
                    async for delta in deltas:
                        if type(delta) is not str:
                            if isinstance(delta, Notice):
                                yield delta
                            else:
                                end = delta if isinstance(delta, CallEnd) else None
                            continue
                        call.delta()
                        parts.append(delta)
                _ended(call, end)
                yield "".join(parts)
                return
            except ProviderError as error:
                call.failed(error.kind)
                if not error.retryable or tries > self.retry.retries:
                    raise _exhausted(error, tries) from error
                call.retried()
                await self._pause(tries, error)

    async def _pause(self, tries: int, error: ProviderError) -> None:
        delay = self.retry.delay(tries, error)
        log.warning("%s; trying again in %.2fs (retry %d)", error.message, delay, tries)
        await asyncio.sleep(delay)
