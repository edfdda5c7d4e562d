"""Providers: the seam between a job's template and the models that answer it."""

from llm_worker.providers.base import (
    CallEnd,
    Notice,
    Part,
    Provider,
    ProviderError,
    Reasoning,
    Refusal,
    ToolCallDelta,
)

__all__ = [
    "CallEnd",
    "Notice",
    "Part",
    "Provider",
    "ProviderError",
    "Reasoning",
    "Refusal",
    "ToolCallDelta",
]
