"""The part of the document for OpenAI's API on the worker (:mod:`llm_worker.server.
openai_api`): its model list so far. Its errors are in OpenAI's shape (``OpenAIError``);
those the server gives before a route answers (a foreign origin's 403, a stopping
server's 503) are in the rest of the API's (``Error``)."""

from __future__ import annotations

from typing import Any

from llm_worker.server.openapi.requests import ref


def _error(description: str, *models: str) -> dict[str, Any]:
    schema = ref(models[0]) if len(models) == 1 else {"anyOf": [ref(m) for m in models]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _common(keys: bool) -> dict[str, Any]:
    common = {
        "403": _error(
            "A page from an origin not allowed (origin_not_allowed)"
            + (", or a listen token (listen_only)." if keys else "."),
            "Error",
            "OpenAIError",
        ),
        "500": _error("A bug of ours (internal_error).", "OpenAIError"),
        "503": _error("The worker is stopping (shutting_down).", "Error", "OpenAIError"),
    }
    if keys:
        common["401"] = {
            **_error("No valid API key (unauthorized).", "OpenAIError"),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        }
    return common


def openai_paths(keys: bool) -> dict[str, Any]:
    """``/v1/models`` and ``/v1/models/{model_id}``."""
    common = _common(keys)
    return {
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "The models this deployment serves, as OpenAI lists them",
                "responses": {
                    "200": {
                        "description": "The models.",
                        "content": {"application/json": {"schema": ref("ModelList")}},
                    },
                    **common,
                },
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "operationId": "getModel",
                "summary": "One model this deployment serves",
                "parameters": [
                    {
                        "name": "model_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The model.",
                        "content": {"application/json": {"schema": ref("Model")}},
                    },
                    "404": _error("Not a model served here (model_not_found).", "OpenAIError"),
                    **common,
                },
            }
        },
    }


_NULLABLE_TEXT = {"type": ["string", "null"]}
OPENAI_SCHEMAS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": _NULLABLE_TEXT,
                    "code": _NULLABLE_TEXT,
                },
            }
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string", "description": "`<provider>/<model>`, or a bare name."},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string", "description": "The provider that serves it."},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
        },
    },
}
