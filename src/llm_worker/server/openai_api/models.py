"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models this deployment serves,
as OpenAI lists them. Each usable provider's known models (its default model, a
local provider's models, those an OpenAI-compatible server lists at its own
``/models``, asked at most once a minute) are ``<provider>/<model>``; the default provider's
(``OPENAI_API_PROVIDER``) are listed by their bare names too, and each of the
deployment's templates (``ASSISTANTS``) as ``assistant:NAME``. Any other name a
provider takes still works in a request: the list is what is known, not a limit."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llm_worker.jobs.templates import Assistant
from llm_worker.running.catalog import provider_models
from llm_worker.server.openai_api.errors import answered, openai_error
from llm_worker.server.refusals import Refused
from llm_worker.wire import errors
from llm_worker.wire.openai.assistants import model_id

if TYPE_CHECKING:
    from llm_worker.server.gateway import Gateway

ASSISTANT_OWNER = "assistant"
"""``owned_by`` of an ``assistant:NAME`` model: one of the deployment's templates."""


def routes(
    gateway: Gateway, default_provider: str, assistants: Mapping[str, Assistant] | None = None
) -> list[Route]:
    listing = ModelList(gateway, default_provider, assistants)
    return [
        Route("/v1/models", answered(listing.list), methods=["GET"]),
        Route("/v1/models/{model_id:path}", answered(listing.get), methods=["GET"]),
    ]


class ModelList:
    def __init__(
        self,
        gateway: Gateway,
        default_provider: str,
        assistants: Mapping[str, Assistant] | None = None,
    ) -> None:
        self.gateway = gateway
        self.default_provider = default_provider
        self.assistants = assistants or {}
        # Models have no birthday here: the time the worker started stands for it.
        self.created = int(time.time())

    async def models(self) -> list[dict[str, Any]]:
        """The model objects of every model served, sorted by id."""
        providers = self.gateway.runner.providers
        served: dict[str, str] = {}
        for name in providers.usable():
            provider = providers.get(name)
            for model in provider_models(provider) | set(await provider.served_models()):
                served[f"{name}/{model}"] = name
                if name == self.default_provider:
                    served.setdefault(model, name)
        for name in self.assistants:
            served[model_id(name)] = ASSISTANT_OWNER
        return [
            {"id": model_id, "object": "model", "created": self.created, "owned_by": owner}
            for model_id, owner in sorted(served.items())
        ]

    async def list(self, request: Request) -> Response:
        self._allowed(request)
        return JSONResponse({"object": "list", "data": await self.models()})

    async def get(self, request: Request) -> Response:
        self._allowed(request)
        model_id = request.path_params["model_id"]
        for model in await self.models():
            if model["id"] == model_id:
                return JSONResponse(model)
        return openai_error(
            404, f"the model {model_id!r} is not served here", "model", "model_not_found"
        )

    def _allowed(self, request: Request) -> None:
        principal = self.gateway.authenticate(request)
        if principal.listen_only:
            raise Refused("a listen token may only follow its job", errors.LISTEN_ONLY)
