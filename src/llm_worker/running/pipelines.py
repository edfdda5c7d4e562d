"""Pipelines: streams implemented on the server, ``{"pipeline": name, ...options}``.

A pipeline gets the job (query, history, variables, the template's own fields),
the output of the stream before it, and model calls with the deployment's
retry policy; it yields the stream's output as text deltas. It may also set
named values for the streams after it (a retrieval step setting
``{rag_output}``, say), declared in :meth:`Pipeline.sets` so that templates
using them are checked when they are added. Built in:

``echo``
    Yields the previous stream's output, or the query in a first stream:
    a reference for writing your own, and handy to check a deployment.

A deployment adds its own by subclassing :class:`Pipeline` and registering it
(entry point group ``llm_worker.pipelines`` or ``EXTRA_PIPELINES``).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

from llm_worker.jobs.templates import TemplateError
from llm_worker.running.context import CheckContext, StreamContext
from llm_worker.running.registry import Registry


class Pipeline(abc.ABC):
    """A stream whose output the server computes."""

    def check(self, options: Mapping[str, Any], context: CheckContext) -> None:
        """Raise :class:`TemplateError` for a use that cannot work; no I/O."""
        if options:
            raise TemplateError(f"takes no options, got {', '.join(sorted(options))}")

    def options_schema(self) -> dict[str, Any]:
        """The JSON Schema of the options :meth:`check` accepts, for the HTTP API's
        document: none if :meth:`check` is this one, any otherwise."""
        closed = type(self).check is Pipeline.check
        return {"type": "object", "properties": {}, "additionalProperties": not closed}

    def sets(self, options: Mapping[str, Any]) -> Collection[str]:
        """The names of the values :meth:`run` sets with ``context.set(name, text)``.

        The streams after this one may use them as placeholders; the job fails
        if :meth:`run` ends without setting each of them.
        """
        return ()

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
