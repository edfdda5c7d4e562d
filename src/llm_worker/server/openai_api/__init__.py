"""OpenAI's API on the worker's port: ``/v1/chat/completions``, ``/v1/models`` (and
``/v1/responses``), with the same keys, tenants, limits and metrics as the rest; each
request is a job in the store (docs/openai-api.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from starlette.routing import Route

from llm_worker.jobs.templates import Assistant
from llm_worker.server.openai_api import chat, models
from llm_worker.server.openai_api.responses import ResponsesAPI

if TYPE_CHECKING:
    from llm_worker.server.gateway import Gateway

PATHS = ("/v1/chat/", "/v1/models", "/v1/responses")
"""Where OpenAI's API is served: its errors there, the router's too, are in OpenAI's shape."""


def routes(
    gateway: Gateway,
    default_provider: str = "openai",
    assistants: Mapping[str, Assistant] | None = None,
) -> list[Route]:
    """Every route of OpenAI's API this worker serves; a ``model`` that names no provider
    runs on ``default_provider`` (``OPENAI_API_PROVIDER``), ``assistant:NAME`` on the
    template ``NAME`` of ``assistants`` (``ASSISTANTS``)."""
    assistants = assistants or {}
    return [
        *chat.routes(gateway, default_provider, assistants),
        *models.routes(gateway, default_provider, assistants),
        *ResponsesAPI(gateway, default_provider, assistants).routes(),
    ]
