"""The part of the document for OpenAI's API on the worker (:mod:`llm_worker.server.
openai_api`): its model list, chat completions (:mod:`.openai_chat_paths`) and
responses (:mod:`.openai_responses_paths`). Its errors are in OpenAI's shape
(``OpenAIError``); those the server gives before a route answers (a foreign origin's
403, a stopping server's 503) may be in the rest of the API's (``Error``)."""

from __future__ import annotations

from typing import Any

from llm_worker.server.openapi.openai_chat_paths import chat_paths, chat_schemas
from llm_worker.server.openapi.openai_doors import Doors, common_replies, openai_error
from llm_worker.server.openapi.openai_responses_paths import responses_paths, responses_schemas
from llm_worker.server.openapi.requests import ref


def openai_paths(keys: bool) -> dict[str, Any]:
    """``/v1/models``, ``/v1/chat/completions`` and ``/v1/responses``'s routes."""
    return {**_models_paths(keys), **chat_paths(keys), **responses_paths(keys)}


def openai_schemas(doors: Doors) -> dict[str, Any]:
    """The schemas of OpenAI's API as this deployment serves it."""
    return {**OPENAI_SCHEMAS, **chat_schemas(doors), **responses_schemas(doors)}


def _models_paths(keys: bool) -> dict[str, Any]:
    common = common_replies(keys)
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
                    "404": openai_error("Not a model served here (model_not_found)."),
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
