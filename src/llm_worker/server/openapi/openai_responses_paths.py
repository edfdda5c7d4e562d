"""The document's part for ``/v1/responses`` (:mod:`llm_worker.server.openai_api.
responses`): the request as :mod:`llm_worker.wire.openai.responses` reads it and the
provider its model names checks it, the Response and its items, and the links a
client follows from a created response (retrieve, cancel, its input items, delete).

A request's settings go to the provider in chat's names (``max_output_tokens`` as
``max_tokens``, ``reasoning.effort`` as ``reasoning_effort``, ``text.format`` as
``response_format``, ``metadata`` beside ``store: true``): each branch of the request
(one per provider) allows those its provider takes and only ``null`` (not given)
for the others; its input items are those the provider may be sent (images, a
model's calls and their results where it takes them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_worker.server.openapi.openai_doors import (
    NULL,
    Capabilities,
    Doors,
    adding_replies,
    common_replies,
    openai_error,
    setting,
    takes,
)
from llm_worker.server.openapi.openai_responses_replies import RESPONSE_SCHEMAS, response_paths
from llm_worker.server.openapi.requests import ref
from llm_worker.wire.openai import responses as wire

if TYPE_CHECKING:
    from llm_worker.providers import Provider

_FLAG = {"type": ["boolean", "null"]}
_TEXT = {"type": ["string", "null"]}
_NAME = {"type": "string", "minLength": 1}
_TOOL = {
    "type": "object",
    "required": ["type", "name"],
    "properties": {
        "type": {"const": "function"},
        "name": _NAME,
        "description": _TEXT,
        "parameters": {"type": ["object", "null"]},
        "strict": _FLAG,
    },
    "additionalProperties": False,
}
_TOOL_CHOICE = {
    "anyOf": [
        {"enum": [*wire.TOOL_CHOICES, None]},
        {
            "type": "object",
            "required": ["type", "name"],
            "properties": {"type": {"const": "function"}, "name": _NAME},
            "additionalProperties": False,
        },
    ]
}
_FORMAT = {
    "anyOf": [
        {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": ["text", "json_object"]}},
            "additionalProperties": False,
        },
        {
            "type": "object",
            "required": ["type", "name", "schema"],
            "properties": {
                "type": {"const": "json_schema"},
                "name": _NAME,
                "schema": {"type": "object"},
                "description": _TEXT,
                "strict": _FLAG,
            },
            "additionalProperties": False,
        },
        NULL,
    ]
}
# What the door reads itself, beside the model and the input.
_OWN: dict[str, Any] = {
    "instructions": {**_TEXT, "description": "A system message before the input."},
    "stream": {**_FLAG, "description": "true: the response's events as Server-Sent Events."},
    "background": {**_FLAG, "description": "true: answered at once, queued."},
    "store": {
        **_FLAG,
        "description": "false: the request is not kept (no input_items, no "
        "previous_response_id to it).",
    },
    "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
    "previous_response_id": {
        **_TEXT,
        "description": "A stored response whose conversation this one continues.",
    },
}
_REQUIRED = ["model", "input"]


def _given(schema: Any, accepted: Any) -> Any:
    """``schema`` where the provider takes the setting (``accepted``), else only null."""
    return schema if takes(accepted) else NULL


def _settings_properties(settings: dict[str, Any]) -> dict[str, Any]:
    """The request's fields that go to the provider as settings, as it takes them."""

    def own(name: str) -> Any:
        schema = setting(settings, name)
        return schema if takes(schema) else NULL

    text = {"format": _given(_FORMAT, setting(settings, "response_format"))}
    reasoning = {
        "effort": _given(_TEXT, setting(settings, "reasoning_effort")),
        "summary": _TEXT,
    }
    return {
        "temperature": own("temperature"),
        "top_p": own("top_p"),
        "max_output_tokens": own("max_tokens"),
        "tools": {"type": ["array", "null"], "items": _TOOL}
        if takes(setting(settings, "tools"))
        else {"anyOf": [NULL, {"type": "array", "maxItems": 0}]},
        "tool_choice": _given(_TOOL_CHOICE, setting(settings, "tool_choice")),
        "parallel_tool_calls": _given(_FLAG, setting(settings, "parallel_tool_calls")),
        "text": {"type": ["object", "null"], "properties": text, "additionalProperties": False},
        "reasoning": {
            "type": ["object", "null"],
            "properties": reasoning,
            "additionalProperties": False,
        },
        "user": _given(_TEXT, setting(settings, "user")),
    }


def _items(capabilities: Capabilities | None) -> dict[str, Any]:
    """The input items a provider may be sent (all of them when ``capabilities`` is
    ``None``: a template's providers judge them)."""
    parts: list[dict[str, Any]] = [
        {
            "type": "object",
            "required": ["type", "text"],
            "properties": {"type": {"enum": list(wire.TEXT_PARTS)}, "text": _NAME},
        }
    ]
    if capabilities is None or capabilities.images:
        parts.append(
            {
                "type": "object",
                "required": ["type", "image_url"],
                "properties": {
                    "type": {"const": "input_image"},
                    "image_url": _NAME,
                    "detail": {"enum": list(wire.IMAGE_DETAILS)},
                },
            }
        )
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "type": {"const": "message"},
            "role": {"enum": list(wire.ROLES)},
            "content": {
                "anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": parts}}]
            },
        },
    }
    items = [message, {"type": "object", "required": ["type"], "properties": _kind("reasoning")}]
    if capabilities is None or capabilities.tool_calls:
        call = {"call_id": _NAME, "name": _NAME, "arguments": {"type": "string"}}
        items.append(_item("function_call", call, ["call_id", "name"]))
    if capabilities is None or capabilities.tool_results:
        result = {"call_id": _NAME, "output": {"type": "string"}}
        items.append(_item("function_call_output", result, ["call_id", "output"]))
    return {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": items}}]}


def _kind(name: str) -> dict[str, Any]:
    return {"type": {"const": name}}


def _item(kind: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", *required],
        "properties": {**_kind(kind), **properties},
    }


def _provider_properties(provider: Provider) -> dict[str, Any]:
    settings = provider.settings_schema()
    return {
        "input": _items(Capabilities.of(provider)),
        **_OWN,
        **_settings_properties(settings),
    }


def _metadata_rule(provider: Provider) -> dict[str, Any] | None:
    """With ``store: true``, ``metadata`` goes to the provider too: a provider that takes
    none may be sent none."""
    if takes(setting(provider.settings_schema(), "metadata")):
        return None
    empty = {"anyOf": [NULL, {"type": "object", "maxProperties": 0}]}
    return {
        "if": {"properties": {"store": {"const": True}}, "required": ["store"]},
        "then": {"properties": {"metadata": empty}},
    }


def responses_schemas(doors: Doors) -> dict[str, Any]:
    """``ResponseRequest`` (one branch per provider a model may name, and one for the
    templates), the Response, its items and the other replies."""
    schemas: dict[str, Any] = {}
    branches = doors.provider_branches(
        doors.runner.providers,
        lambda name, provider: _provider_properties(provider),
        _REQUIRED,
    )
    for name, branch in branches.items():
        rule = _metadata_rule(doors.runner.providers.get(name))
        if rule is not None:
            branch["allOf"] = [rule]
        branch["description"] = f"A model of provider {name!r}."
        schemas[f"ResponseRequest_{name}"] = branch
    refused = dict.fromkeys(sorted(wire.PASSED_ON - {"previous_response_id"}), False)
    templates = {"input": _items(None), **_OWN, **refused}
    assistants = doors.assistant_branch(templates, _REQUIRED)
    if assistants is not None:
        assistants["description"] = (
            "One of the deployment's templates (ASSISTANTS): the last message the input "
            "makes, a user's text, is its {query}."
        )
        schemas["ResponseRequest_assistants"] = assistants
    schemas["ResponseRequest"] = {
        "anyOf": [ref(name) for name in schemas],
        "description": "`model`: `<provider>/<name>`, a bare name for OPENAI_API_PROVIDER, "
        "or `assistant:NAME`. Fields this worker does not take are refused, naming them.",
    }
    return {**schemas, **RESPONSE_SCHEMAS}


def responses_paths(keys: bool) -> dict[str, Any]:
    """``/v1/responses`` and the routes of one response."""
    return response_paths(
        common_replies(keys),
        {
            "400": openai_error(
                "Not JSON (invalid_json), a field not taken or not valid, naming it "
                "(bad_request), a previous_response_id with nothing stored to continue, "
                "or a job this deployment cannot run (invalid_job)."
            ),
            "404": openai_error(
                "`assistant:NAME` names no template (model_not_found), or "
                "previous_response_id no response (job_not_found)."
            ),
            **adding_replies(),
        },
    )
