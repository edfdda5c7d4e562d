"""The schemas of what a client sends: a job, its template and its streams, as this
deployment checks them (its usable providers with their settings, its inserts and
pipelines with their options, its request limits)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.schedule import MAX_DELAY_SECONDS, RUN_AT_MAX_LENGTH
from llm_worker.jobs.templates import BUILTIN_PLACEHOLDERS, MAX_FALLBACKS, QUERY
from llm_worker.server import idempotent

if TYPE_CHECKING:
    from llm_worker.running.runner import Runner

_REF = "#/components/schemas/{model}"
STATES = ["pending", "running", "done", "failed", "cancelled"]
SHOWN_STATES = ["scheduled", *STATES]
"""The states a job is shown in: ``scheduled`` is a waiting job not due yet."""
# The most digits of a seq the server reads (http_api.SEQ_DIGITS).
SEQ_DIGITS = 18
LISTING_MAX = 500


def ref(model: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=model)}


# Message text: literal text, {{ and }} for braces, and {query}; what else a request
# may name ({variables}, template fields) depends on the request (see the module doc).
CONTENT_PATTERN = r"^([^{}]|\{\{|\}\}|\{" + QUERY + r"\})*$"


# What ChatMessage's validator says beyond its fields: content null only beside tool calls,
# and tool calls only in an assistant's message.
_MESSAGE_RULES = [
    {
        "if": {"properties": {"content": {"type": "null"}}, "required": ["content"]},
        "then": {
            "properties": {
                "role": {"const": "assistant"},
                "tool_calls": {"type": "array", "minItems": 1},
            },
            "required": ["tool_calls"],
        },
    },
    {
        "if": {"properties": {"tool_calls": {"type": "array"}}, "required": ["tool_calls"]},
        "then": {"properties": {"role": {"const": "assistant"}}},
    },
]


def message_schemas() -> dict[str, Any]:
    """``ChatMessage`` and ``TemplateMessage``, with the schemas of their parts beside them
    (pydantic's ``$defs`` made components). A template's text (its content, or its text
    parts) holds placeholders; an image's URL and other parts' data do not."""
    schemas: dict[str, Any] = {}
    message = ChatMessage.model_json_schema(ref_template=_REF)
    schemas.update(message.pop("$defs", {}))
    message["allOf"] = _MESSAGE_RULES
    schemas["ChatMessage"] = message
    template_text = {
        "type": "string",
        "pattern": CONTENT_PATTERN,
        "description": "May hold {query}; write {{ and }} for literal braces.",
    }
    text_part = dict(schemas["TextPart"], properties=dict(schemas["TextPart"]["properties"]))
    text_part["properties"]["text"] = template_text
    text_part.pop("title", None)
    schemas["TemplateTextPart"] = text_part
    parts = [ref("TemplateTextPart"), ref("ImagePart"), ref("AudioPart"), ref("FilePart")]
    template = dict(message, properties=dict(message["properties"]))
    template.pop("title", None)
    template["properties"]["content"] = {
        "anyOf": [template_text, {"type": "array", "items": {"anyOf": parts}}, {"type": "null"}]
    }
    # An item with ``insert`` is an insert, not a message.
    template["properties"]["insert"] = False
    schemas["TemplateMessage"] = template
    return schemas


def _settings_schema(runner: Runner, provider: str) -> dict[str, Any]:
    return runner.providers.get(provider).settings_schema()


def _with_settings(
    name: str, settings: dict[str, Any], properties: dict[str, Any], key: str
) -> dict[str, Any]:
    """An object naming provider ``name`` in ``key``, with its ``settings`` (required
    when the provider needs some, such as a model without a default)."""
    required = [key]
    if settings.get("required"):
        required.append("settings")
    return {
        "type": "object",
        "required": required,
        "properties": {key: {"const": name}, "settings": settings, **properties},
        "additionalProperties": False,
    }


def _named(options: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    """An item ``{key: name, ...options}`` whose options are as ``options`` says (an
    object schema, or ``anyOf`` such schemas)."""
    if "anyOf" in options:
        return {"anyOf": [_named(member, key, name) for member in options["anyOf"]]}
    return {
        **options,
        "type": "object",
        "required": [key, *options.get("required", [])],
        "properties": {key: {"const": name}, **options.get("properties", {})},
    }


def _stream_schemas(runner: Runner) -> dict[str, Any]:
    """The schemas of a stream: one per usable provider, one per pipeline."""
    schemas: dict[str, Any] = message_schemas()
    providers = runner.providers.usable()
    settings = {name: _settings_schema(runner, name) for name in providers}
    fallback = {
        "anyOf": [_with_settings(name, settings[name], {}, "provider") for name in providers]
    }
    rules = {name: runner.providers.get(name).message_schema() for name in providers}
    streams = []
    for name in providers:
        inserts = [
            _named(insert.options_schema(name, settings), "insert", insert_name)
            for insert_name, insert in runner.inserts.items()
        ]
        model = f"ModelStream_{name}"
        schemas[model] = _with_settings(
            name,
            settings[name],
            {
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"anyOf": [_meeting(ref("TemplateMessage"), rules[name]), *inserts]},
                },
                "fallbacks": {"type": "array", "maxItems": MAX_FALLBACKS, "items": fallback},
            },
            "provider",
        )
        schemas[model]["required"].append("messages")
        # A fallback's provider is sent the same messages: they must suit it too.
        fallback_rules = [
            {
                "if": _names_fallback(other),
                "then": {"properties": {"messages": {"items": rule}}},
            }
            for other, rule in rules.items()
            if rule is not None
        ]
        if fallback_rules:
            schemas[model]["allOf"] = fallback_rules
        schemas[model]["description"] = f"A model call to provider {name!r}."
        streams.append(ref(model))
    for name, pipeline in runner.pipelines.items():
        model = f"PipelineStream_{name}"
        schemas[model] = _named(pipeline.options_schema(), "pipeline", name)
        schemas[model]["description"] = f"A stream computed by pipeline {name!r}."
        streams.append(ref(model))
    schemas["Stream"] = {"anyOf": streams}
    return schemas


def _meeting(schema: dict[str, Any], rule: dict[str, Any] | None) -> dict[str, Any]:
    """``schema``, and ``rule`` beside it when there is one."""
    return schema if rule is None else {"allOf": [schema, rule]}


def _names_fallback(provider: str) -> dict[str, Any]:
    """A stream that names ``provider`` among its fallbacks."""
    named = {"properties": {"provider": {"const": provider}}, "required": ["provider"]}
    return {"properties": {"fallbacks": {"contains": named}}, "required": ["fallbacks"]}


def history_rules(runner: Runner) -> list[dict[str, Any]]:
    """What the history must meet for each provider that may be sent it: one whose stream
    (as its provider or a fallback) has an insert, which is handed the history."""
    rules = []
    for name in runner.providers.usable():
        rule = runner.providers.get(name).message_schema()
        if rule is None:
            continue
        names = {"properties": {"provider": {"const": name}}, "required": ["provider"]}
        stream = {
            "anyOf": [names, _names_fallback(name)],
            "properties": {"messages": {"contains": {"required": ["insert"]}}},
            "required": ["messages"],
        }
        streams = {"properties": {"streams": {"contains": stream}}, "required": ["streams"]}
        rules.append(
            {
                "if": {"properties": {"assistant": streams}, "required": ["assistant"]},
                "then": {"properties": {"history": {"items": rule}}},
            }
        )
    return rules


_WEBHOOK = {
    "type": "string",
    "pattern": "^https?://[^\\s/?#@]+([/?#][^\\s]*)?$",
    "maxLength": 2048,
    "description": "Where the job's end is posted, signed (docs/webhooks.md). Checked at "
    "add: its host must resolve to public addresses only (unless "
    "WEBHOOK_ALLOW_PRIVATE_TARGETS=1).",
}


_SCHEDULE = {
    "delay": {
        "type": ["number", "null"],
        "minimum": 0,
        "maximum": MAX_DELAY_SECONDS,
        "description": "Seconds from now: the job is `scheduled` until then "
        "(docs/scheduling.md). Not with run_at.",
    },
    "run_at": {
        "type": ["string", "null"],
        "format": "date-time",
        "maxLength": RUN_AT_MAX_LENGTH,
        "description": "When the job may start (RFC 3339, with its offset; one past is "
        "now): it is `scheduled` until then (docs/scheduling.md). Not with delay.",
    },
}


def job_schemas(runner: Runner, webhooks: bool = False) -> dict[str, Any]:
    """The schemas of a job's request; ``webhooks``: whether this deployment sends them
    (a ``WEBHOOK_SECRET``), else a job may not name one."""
    limits = runner.limits
    schemas = _stream_schemas(runner)
    schemas["Assistant"] = {
        "type": "object",
        "required": ["streams"],
        "properties": {
            "streams": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_streams,
                "items": ref("Stream"),
            }
        },
        "description": "Streams run in order; the last one's output is the job's. Other "
        "fields are the template's own, kept with the job.",
    }
    schemas["JobRequest"] = {
        "type": "object",
        "required": ["query", "assistant"],
        "properties": {
            "query": {"type": "string"},
            "idempotency_key": idempotent.BODY_SCHEMA,
            "assistant": ref("Assistant"),
            "history": {
                "type": "array",
                "maxItems": limits.max_history_messages,
                "items": ref("ChatMessage"),
            },
            "variables": {
                "type": "object",
                "properties": dict.fromkeys(sorted(BUILTIN_PLACEHOLDERS), False),
                "additionalProperties": {"type": ["string", "number", "boolean"]},
                "description": "Values for placeholders; query and previous_stream_output "
                "are the worker's.",
            },
            "webhook": _WEBHOOK if webhooks else False,
            **_SCHEDULE,
        },
        "not": {
            "required": ["run_at", "delay"],
            "properties": {"run_at": {"type": "string"}, "delay": {"type": "number"}},
        },
        "description": "A job: what a WebSocket `add` carries, without `type` and `id`.",
    }
    if rules := history_rules(runner):
        schemas["JobRequest"]["allOf"] = rules
    return schemas
