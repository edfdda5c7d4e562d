"""Pipelines: streams implemented on the server, ``{"pipeline": name, ...options}``.

A pipeline gets the job (query, history, variables), the output of the stream
before it, and model calls with the deployment's retry policy; it yields the
stream's output as text deltas. Built in:

``echo``
    Yields the previous stream's output, or the query in a first stream:
    a reference for writing your own, and handy to check a deployment.

A deployment adds its own by subclassing :class:`Pipeline` and registering it
(entry point group ``llm_worker.pipelines`` or ``EXTRA_PIPELINES``).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from typing import Any

from llm_worker.context import StreamContext
from llm_worker.providers import Provider
from llm_worker.registry import Registry
from llm_worker.templates import TemplateError


class Pipeline(abc.ABC):
    """A stream whose output the server computes."""

    def check(self, options: Mapping[str, Any], providers: Registry[Provider]) -> None:
        """Raise :class:`TemplateError` for options that cannot work; no I/O."""
        if options:
            raise TemplateError(f"takes no options, got {', '.join(sorted(options))}")

    @abc.abstractmethod
    def run(self, options: Mapping[str, Any], context: StreamContext) -> AsyncIterator[str]:
        """Yield the stream's output as text deltas."""


class EchoPipeline(Pipeline):
    async def run(self, options: Mapping[str, Any], context: StreamContext) -> AsyncIterator[str]:
        text = context.previous_output if context.stream_index else context.query
        if text:
            yield text


def builtin_pipelines() -> Registry[Pipeline]:
    pipelines: Registry[Pipeline] = Registry("pipeline")
    pipelines.register("echo", EchoPipeline())
    return pipelines
