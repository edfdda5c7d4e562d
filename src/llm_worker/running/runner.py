"""Runs one job: its template's streams in order, the last one's reply out as parts
(text deltas, reasoning, tool-call fragments, refusals), and every stream's notices
(why the listeners wait). Inner streams give their text only, to the streams after.

Every model call takes one path (:meth:`Runner._call`): streamed to listeners, it is
retried while nothing of it has been shown; taken whole (an inner stream, an insert
or a pipeline's ``complete``), from scratch. What is checked when a job is added
lives apart, in :mod:`llm_worker.running.checks`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.model import JobSpec
from llm_worker.jobs.templates import (
    PREVIOUS_STREAM_OUTPUT,
    QUERY,
    InsertItem,
    ModelStream,
    PipelineStream,
    TemplateError,
    render_message,
    template_size,
)
from llm_worker.jobs.usage import JobUsage, track
from llm_worker.jobs.usage import current as current_usage
from llm_worker.ops.metrics import Metrics, ModelCall
from llm_worker.providers import CallEnd, Notice, Part, Provider, ProviderError
from llm_worker.running.checks import JobChecks, RequestLimits, RequestRefused, declared_names
from llm_worker.running.context import StreamContext
from llm_worker.running.inserts import Insert
from llm_worker.running.pipelines import Pipeline
from llm_worker.running.registry import Registry

log = logging.getLogger(__name__)


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
        self.checks = JobChecks(providers, inserts, pipelines, self.limits)

    def check(self, spec: JobSpec) -> None:
        """Raise :class:`TemplateError` naming the first thing that would stop ``spec``
        (:meth:`JobChecks.check`)."""
        self.checks.check(spec)

    # -- running ------------------------------------------------------------

    async def run(
        self, spec: JobSpec, usage: JobUsage | None = None
    ) -> AsyncIterator[Part | Notice]:
        """Yield the parts of the reply of the job's last stream (text deltas and typed
        parts), and the notices of its model streams' providers (inner ones' too) as
        they come; the tokens its model calls take go to ``usage``, by stream.

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
                    spec, index, previous_output, self, here, declared_names(stream, pipeline)
                )
                deltas = pipeline.run(stream.options, context)
            else:
                context = StreamContext(spec, index, previous_output, self, here)
                messages = await self.build_messages(stream, context)
                if not last:
                    # Nothing of an inner stream's text reaches listeners: it may be
                    # retried from scratch even after part of it arrived.
                    replies = self._from_choices(stream, messages, usage, whole=True)
                    async with aclosing(replies) as parts:
                        async for part in parts:
                            if type(part) is str:
                                previous_output = part
                            else:
                                yield part
                    continue
                deltas = self._from_choices(stream, messages, usage, whole=False)
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

    async def _from_choices(
        self,
        stream: ModelStream,
        messages: Sequence[ChatMessage],
        usage: JobUsage | None,
        *,
        whole: bool,
    ) -> AsyncIterator[Part | Notice]:
        """The stream's reply (as parts, or ``whole``: its text as one ``str``) and notices,
        from its provider or, when that fails before any output was shown, from each of
        its fallbacks in turn; ``usage`` learns which one answered."""
        failures: list[tuple[str, ProviderError]] = []
        for provider, settings in stream.choices():
            answered = False
            try:
                async with aclosing(self._call(provider, messages, settings, whole)) as parts:
                    async for part in parts:
                        if not answered and type(part) is not Notice:
                            answered = True
                            _answered(usage, provider)
                        yield part
                if not answered:  # a reply without text
                    _answered(usage, provider)
                return
            except ProviderError as error:
                if (answered and not whole) or not stream.fallbacks:
                    raise
                failures.append((provider, error))
                self._falling_back(provider, error, stream, len(failures))
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
                size += sum(message.size() for message in expanded)
                messages.extend(expanded)
            else:
                size += template_size(item, context.values)
                if size > self.limits.max_model_request_chars:
                    break
                messages.append(render_message(item, context.values))
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
        async with aclosing(self._call(provider, messages, settings, False)) as parts:
            async for part in parts:
                if type(part) is str:
                    yield part

    async def complete(
        self, provider: str, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> str:
        """The whole reply; a retryable failure starts it again from scratch."""
        reply = ""
        async with aclosing(self._call(provider, messages, settings, True)) as parts:
            async for part in parts:
                if type(part) is str:
                    reply = part
        return reply

    async def _call(
        self,
        provider: str,
        messages: Sequence[ChatMessage],
        settings: Mapping[str, Any],
        whole: bool,
    ) -> AsyncIterator[Part | Notice]:
        """One model call, tried again after a retryable failure: its parts as they come
        (retried only while none was yielded) or, ``whole``, its text as one ``str`` once
        it ended (retried from scratch; its typed parts are not kept); the provider's
        notices as they come either way (a notice is no output)."""
        self.checks.request_size(provider, messages)
        chosen = self.providers.get(provider)
        tries = 0
        while True:
            tries += 1
            shown = False
            call = self.metrics.model_call(provider, settings)
            text: list[str] = []
            end: CallEnd | None = None
            try:
                async with aclosing(chosen.stream(messages, settings)) as parts:
                    async for part in parts:
                        kind = type(part)
                        if kind is Notice:
                            yield part
                        elif kind is CallEnd:
                            end = part  # type: ignore[assignment]
                        elif whole:
                            if kind is str:
                                call.delta()
                                text.append(part)  # type: ignore[arg-type]
                        else:
                            if kind is str:
                                call.delta()
                            shown = True
                            yield part
                _ended(call, end)
                if whole:
                    yield "".join(text)
                return
            except ProviderError as error:
                call.failed(error.kind)
                if shown or not error.retryable or tries > self.retry.retries:
                    raise _exhausted(error, tries) from error
                call.retried()
                await self._pause(tries, error)

    async def _pause(self, tries: int, error: ProviderError) -> None:
        delay = self.retry.delay(tries, error)
        log.warning("%s; trying again in %.2fs (retry %d)", error.message, delay, tries)
        await asyncio.sleep(delay)
