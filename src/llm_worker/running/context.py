"""What inserts and pipelines see of the job whose stream they serve: when it is
added (:class:`CheckContext`, to refuse what cannot work) and when it runs
(:class:`StreamContext`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.model import JobSpec
from llm_worker.jobs.templates import TemplateError

if TYPE_CHECKING:
    from llm_worker.providers import Provider
    from llm_worker.running.registry import Registry


class ModelCalls(Protocol):
    """Model calls with the deployment's retry policy, by provider name."""

    def stream(
        self, provider: str, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[str]:
        """The reply as deltas; retried only before the first delta."""
        ...

    async def complete(
        self, provider: str, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> str:
        """The whole reply; retried from scratch on a retryable failure."""
        ...


@dataclass(frozen=True, slots=True)
class CheckContext:
    """A job being added, as an insert's or pipeline's ``check`` sees it. No I/O."""

    providers: Registry[Provider]
    """The deployment's providers: ``providers.get(name).check_settings(...)``."""
    fields: Mapping[str, Any]
    """The template's own fields (all but ``streams``), such as ``files_collection_id``."""
    known: frozenset[str]
    """The names placeholders of this stream may use."""


@dataclass(frozen=True, slots=True)
class StreamContext:
    """The job, the values its placeholders take here, and a way to call models."""

    spec: JobSpec
    stream_index: int
    previous_output: str
    models: ModelCalls
    values: Mapping[str, str] = field(default_factory=dict)
    """What each placeholder of this stream is replaced with: ``query``, the
    template's text fields, the request's ``variables``, values set by earlier
    pipelines and, after the first stream, ``previous_stream_output``."""
    settable: frozenset[str] = frozenset()
    """The names this stream's pipeline declared it sets (:meth:`Pipeline.sets`)."""
    set_values: dict[str, str] = field(default_factory=dict)
    """What this stream's pipeline set, for the streams after it."""

    @property
    def query(self) -> str:
        return self.spec.query

    @property
    def history(self) -> list[ChatMessage]:
        return self.spec.history

    @property
    def variables(self) -> dict[str, str]:
        return self.spec.variables

    @property
    def fields(self) -> dict[str, Any]:
        """The template's own fields (all but ``streams``), such as ``files_collection_id``."""
        return self.spec.assistant.fields

    def set(self, name: str, value: str) -> None:
        """Give the streams after this one a value for ``{name}`` (pipelines only).

        ``name`` must be one the pipeline declares in :meth:`Pipeline.sets`.
        """
        if name not in self.settable:
            declared = ", ".join(repr(n) for n in sorted(self.settable)) or "none"
            raise TemplateError(f"set {name!r}, which it does not declare (declared: {declared})")
        if not isinstance(value, str):
            raise TemplateError(f"set {name!r} to {type(value).__name__}, not text")
        self.set_values[name] = value
