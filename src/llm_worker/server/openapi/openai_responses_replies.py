"""What the ``/v1/responses`` routes answer, in the document: the Response as
:mod:`llm_worker.wire.openai.responses_events` makes it from a job's log, its output
items, its input items, a deletion; the routes' operations, with the links a client
follows from a created response: retrieve it, cancel it, list its input items,
delete it (its ``id`` from the reply)."""

from __future__ import annotations

from typing import Any

from llm_worker.server.openapi.openai_doors import openai_error
from llm_worker.server.openapi.requests import ref

_COUNT = {"type": ["integer", "null"], "minimum": 0}
_TEXT = {"type": ["string", "null"]}
_ITEM_STATUS = {"enum": ["in_progress", "completed", "incomplete"]}


def _object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_OUTPUT_TEXT = _object(
    ["type", "text", "annotations"],
    {
        "type": {"const": "output_text"},
        "text": {"type": "string"},
        "annotations": {"type": "array", "maxItems": 0},
        "logprobs": {"type": "array", "maxItems": 0},
    },
)
_REFUSAL = _object(
    ["type", "refusal"], {"type": {"const": "refusal"}, "refusal": {"type": "string"}}
)
_OUTPUT_ITEMS = {
    "ResponseOutputMessage": _object(
        ["id", "type", "status", "role", "content"],
        {
            "id": {"type": "string"},
            "type": {"const": "message"},
            "status": _ITEM_STATUS,
            "role": {"const": "assistant"},
            "content": {"type": "array", "items": {"anyOf": [_OUTPUT_TEXT, _REFUSAL]}},
        },
    ),
    "ResponseReasoningItem": _object(
        ["id", "type", "summary"],
        {
            "id": {"type": "string"},
            "type": {"const": "reasoning"},
            "summary": {
                "type": "array",
                "items": _object(
                    ["type", "text"],
                    {"type": {"const": "summary_text"}, "text": {"type": "string"}},
                ),
            },
        },
    ),
    "ResponseFunctionCall": _object(
        ["id", "type", "status", "call_id", "name", "arguments"],
        {
            "id": {"type": "string"},
            "type": {"const": "function_call"},
            "status": _ITEM_STATUS,
            "call_id": {"type": "string"},
            "name": {"type": "string"},
            "arguments": {"type": "string", "description": "JSON text, as the model wrote it."},
        },
    ),
}
_USAGE = _object(
    ["input_tokens", "output_tokens", "total_tokens"],
    {
        "input_tokens": _COUNT,
        "input_tokens_details": _object(
            [], {"cached_tokens": _COUNT, "cache_write_tokens": _COUNT}
        ),
        "output_tokens": _COUNT,
        "output_tokens_details": _object([], {"reasoning_tokens": _COUNT}),
        "total_tokens": _COUNT,
    },
)
# The request's fields a Response echoes (a response made with store false echoes none
# of them once it is read back).
_ECHOED = {
    "instructions": _TEXT,
    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    "temperature": {"type": ["number", "null"]},
    "top_p": {"type": ["number", "null"]},
    "max_output_tokens": {"type": ["integer", "null"]},
    "tools": {"type": "array", "items": {"type": "object"}},
    "tool_choice": {"type": ["string", "object"]},
    "parallel_tool_calls": {"type": "boolean"},
    "previous_response_id": _TEXT,
    "reasoning": {"type": ["object", "null"]},
    "text": {"type": "object"},
    "background": {"type": "boolean"},
    "store": {"type": "boolean"},
}
RESPONSE_SCHEMAS: dict[str, Any] = {
    **_OUTPUT_ITEMS,
    "Response": _object(
        ["id", "object", "created_at", "model", "status", "error", "incomplete_details", "output"],
        {
            "id": {"type": "string", "pattern": "^resp_", "description": "resp_ and the job's id."},
            "object": {"const": "response"},
            "created_at": {"type": "integer"},
            "model": {"type": "string", "description": "The model as asked."},
            "status": {
                "enum": ["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
            },
            "error": {"anyOf": [{"type": "null"}, _object(["code", "message"], {})]},
            "incomplete_details": {
                "anyOf": [{"type": "null"}, _object(["reason"], {"reason": {"type": "string"}})]
            },
            "output": {"type": "array", "items": {"anyOf": [ref(n) for n in _OUTPUT_ITEMS]}},
            "usage": {**_USAGE, "description": "Once the job is done, where the models said."},
            **_ECHOED,
        },
    ),
    "ResponseStreamEvent": _object(
        ["type", "sequence_number"],
        {
            "type": {"type": "string", "pattern": "^response\\."},
            "sequence_number": {"type": "integer", "minimum": 0},
            "response": ref("Response"),
            "item": {"anyOf": [ref(n) for n in _OUTPUT_ITEMS]},
            "output_index": {"type": "integer", "minimum": 0},
            "item_id": {"type": "string"},
            "delta": {"type": "string"},
        },
    ),
    "ResponseDeleted": _object(
        ["id", "object", "deleted"],
        {"id": {"type": "string"}, "object": {"const": "response"}, "deleted": {"const": True}},
    ),
    "ResponseInputItemList": _object(
        ["object", "data", "first_id", "last_id", "has_more"],
        {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": _object(["id", "type"], {"id": {"type": "string"}}),
                "description": "The input as items, as the request gave them.",
            },
            "first_id": _TEXT,
            "last_id": _TEXT,
            "has_more": {"const": False},
        },
    ),
}

_RESPONSE_ID = {
    "name": "response_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "`resp_` and the job's id.",
}
_NOT_FOUND = openai_error("No such response: never made, expired, deleted, or another tenant's.")
_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "pattern": "^response\\."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": ref("ResponseStreamEvent"),
        },
    },
    "description": """\
The response's events as Server-Sent Events (`event:` its type, `data:` its JSON),
numbered by `sequence_number` from the job's log: `response.created`,
`response.in_progress`, each output item's `added`, deltas and `done` events, then
`response.completed`, `response.incomplete` or `response.failed` (a cancelled job's
too).""",
}


def _links(source: str, *operations: str) -> dict[str, Any]:
    """Links to ``operations`` on the response ``source`` names (a runtime expression)."""
    return {
        operation: {"operationId": operation, "parameters": {"response_id": source}}
        for operation in operations
    }


def _reply(model: str, description: str, links: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": ref(model)}},
        "links": links,
    }


def _response_or_events(description: str, links: dict[str, Any]) -> dict[str, Any]:
    reply = _reply("Response", description, links)
    reply["content"]["text/event-stream"] = {"schema": _EVENT}
    return reply


def response_paths(common: dict[str, Any], adding: dict[str, Any]) -> dict[str, Any]:
    """The five routes, each with ``common`` answers; the create's with ``adding``."""
    from_body = "$response.body#/id"
    create = {
        "operationId": "createResponse",
        "summary": "A response, as OpenAI's Responses API makes it; each one a job",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ref("ResponseRequest")}},
        },
        "responses": {
            "200": _response_or_events(
                "The response once its job ended; with `background`, queued at once; "
                "with `stream`, its events.",
                _links(from_body, "getResponse", "cancelResponse", "listInputItems"),
            ),
            **common,
            **adding,
        },
    }
    return {
        "/v1/responses": {"post": create},
        "/v1/responses/{response_id}": {"get": _retrieve(common), "delete": _delete(common)},
        "/v1/responses/{response_id}/cancel": {"post": _cancel(common)},
        "/v1/responses/{response_id}/input_items": {"get": _input_items(common)},
    }


def _retrieve(common: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": "getResponse",
        "summary": "A response as it stands, or its events",
        "description": "With `stream=true` (or `1`), its events; `starting_after=N` "
        "resumes them after the event numbered N, at any time while the job is kept.",
        "parameters": [
            _RESPONSE_ID,
            {
                "name": "stream",
                "in": "query",
                "schema": {"enum": ["true", "false", "1", "0"]},
                "description": "`true` or `1`: the events; else the Response.",
            },
            {
                "name": "starting_after",
                "in": "query",
                "schema": {"type": "integer", "minimum": -1, "maximum": 10**18},
                "description": "With `stream`: the events after the one numbered this "
                "(-1, as not given: all).",
            },
        ],
        "responses": {
            "200": _response_or_events(
                "The response; or its events.",
                _links("$response.body#/id", "cancelResponse", "listInputItems"),
            ),
            "400": openai_error("stream or starting_after not one of their values (bad_request)."),
            "404": _NOT_FOUND,
            **common,
        },
    }


def _cancel(common: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": "cancelResponse",
        "summary": "Cancel a response's job (a response that ended is returned as it is)",
        "parameters": [_RESPONSE_ID],
        "responses": {
            "200": _reply(
                "Response",
                "The response, `cancelled` if its job was.",
                _links("$response.body#/id", "listInputItems", "getResponse"),
            ),
            "404": _NOT_FOUND,
            **common,
        },
    }


def _input_items(common: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": "listInputItems",
        "summary": "A stored response's input, as items",
        "parameters": [
            _RESPONSE_ID,
            {
                "name": "order",
                "in": "query",
                "schema": {"enum": ["desc", "asc"]},
                "description": "`desc` (the default): the last item first; `asc`: in the "
                "input's order.",
            },
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                "description": "Items on the page, 20 unless said.",
            },
            {
                "name": "after",
                "in": "query",
                "schema": {"type": "string"},
                "description": "The page after this item's id (`last_id` of the page before); "
                "none follow an id that is not one of the response's items.",
            },
        ],
        "responses": {
            "200": _reply(
                "ResponseInputItemList",
                "Its items, all on one page.",
                _links("$request.path.response_id", "deleteResponse"),
            ),
            "400": openai_error("order or limit not one of their values (bad_request)."),
            "404": openai_error(
                "No such response (job_not_found), or made with store false: its input is "
                "not kept (not_found)."
            ),
            **common,
        },
    }


def _delete(common: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": "deleteResponse",
        "summary": "Cancel a response's job if it runs, then forget the response",
        "parameters": [_RESPONSE_ID],
        "responses": {
            "200": {
                "description": "Deleted: every route now answers 404 for it.",
                "content": {"application/json": {"schema": ref("ResponseDeleted")}},
            },
            "404": _NOT_FOUND,
            "409": openai_error("Its job's end could not be shown yet; try again (conflict)."),
            **common,
        },
    }
