"""Providers: the seam between a job's template and the models that answer it."""

from llm_worker.providers.base import CallEnd, Notice, Provider, ProviderError

__all__ = ["CallEnd", "Notice", "Provider", "ProviderError"]
