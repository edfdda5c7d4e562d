"""Plugins a deployment might register, loaded by import path in the tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import ModelStream, TemplateError
from llm_worker.providers import Provider, ProviderError
from llm_worker.running.context import CheckContext, StreamContext
from llm_worker.running.inserts import Insert
from llm_worker.running.pipelines import Pipeline


class ShoutPipeline(Pipeline):
    """Upper-cases the previous stream's output, word by word."""

    async def run(self, options: Mapping[str, Any], context: StreamContext) -> AsyncIterator[str]:
        for word in context.previous_output.split(" "):
            yield word.upper() + " "


class SummarisePipeline(Pipeline):
    """Asks a model, through the context, for a one-line summary of the query."""

    def check(self, options: Mapping[str, Any], context: CheckContext) -> None:
        if "provider" not in options:
            raise TemplateError("needs option 'provider'")
        context.providers.get(options["provider"])

    async def run(self, options: Mapping[str, Any], context: StreamContext) -> AsyncIterator[str]:
        messages = [ChatMessage(role="user", content=f"Summarise: {context.query}")]
        async for delta in context.models.stream(
            options["provider"], messages, {"model": "summariser"}
        ):
            yield delta


# What the collections of a test deployment hold, by id.
COLLECTIONS = {
    "c-eiffel": "The Eiffel Tower is 330 m tall.",
    "c-empty": "",
}


class RagScoringPipeline(Pipeline):
    """F-AI's retrieval step, with canned documents: reads the template's
    ``files_collection_id`` and sets ``rag_output`` for the streams after it."""

    def check(self, options: Mapping[str, Any], context: CheckContext) -> None:
        super().check(options, context)
        if not isinstance(context.fields.get("files_collection_id"), str):
            raise TemplateError("needs the template's files_collection_id, a string")

    def sets(self, options: Mapping[str, Any]) -> Collection[str]:
        return {"rag_output"}

    async def run(self, options: Mapping[str, Any], context: StreamContext) -> AsyncIterator[str]:
        collection = context.fields["files_collection_id"]
        if collection not in COLLECTIONS:
            raise TemplateError(f"no collection {collection!r}")
        documents = COLLECTIONS[collection]
        context.set("rag_output", f"Answer {context.query!r} from these documents:\n{documents}")
        return
        yield  # an async generator that yields nothing: its stream's output is empty


class ForgetfulPipeline(Pipeline):
    """Declares a value but never sets it: a plugin with a bug."""

    def sets(self, options: Mapping[str, Any]) -> Collection[str]:
        return {"result"}

    async def run(self, options: Mapping[str, Any], context: StreamContext) -> AsyncIterator[str]:
        yield "nothing set"


class OverreachingPipeline(Pipeline):
    """Sets a value it never declared: a plugin with a bug."""

    async def run(self, options: Mapping[str, Any], context: StreamContext) -> AsyncIterator[str]:
        context.set("surprise", "!")
        yield "unreachable"


class FactsInsert(Insert):
    """Inserts a system message listing the job's variables."""

    async def expand(
        self, options: Mapping[str, Any], stream: ModelStream, context: StreamContext
    ) -> list[ChatMessage]:
        facts = ", ".join(f"{k}={v}" for k, v in sorted(context.variables.items()))
        return [ChatMessage(role="system", content=f"Facts: {facts}")]


class CannedProvider(Provider):
    """Replies with the reversed last message, a character per delta."""

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        if settings.get("fail") not in (None, True, False):
            raise TemplateError("settings.fail must be a boolean")

    async def stream(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[str]:
        if settings.get("fail"):
            raise ProviderError("canned failure")
        for char in reversed(messages[-1].content):
            yield char


class BuggyCheckInsert(Insert):
    """A plugin with a bug in its check."""

    def check(self, options: Mapping[str, Any], stream: ModelStream, context: CheckContext) -> None:
        raise ZeroDivisionError("division by zero")

    async def expand(
        self, options: Mapping[str, Any], stream: ModelStream, context: StreamContext
    ) -> list[ChatMessage]:
        return []


class BuggyExpandInsert(Insert):
    """A plugin with a bug that shows only when a job runs."""

    async def expand(
        self, options: Mapping[str, Any], stream: ModelStream, context: StreamContext
    ) -> list[ChatMessage]:
        raise KeyError("missing")
