"""What inserts and pipelines see of the job whose stream they serve."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llm_worker.jobs import JobSpec
from llm_worker.templates import ChatMessage


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
class StreamContext:
    """The job, the output of the stream before, and a way to call models."""

    spec: JobSpec
    stream_index: int
    previous_output: str
    models: ModelCalls

    @property
    def query(self) -> str:
        return self.spec.query

    @property
    def history(self) -> list[ChatMessage]:
        return self.spec.history

    @property
    def variables(self) -> dict[str, str]:
        return self.spec.variables
