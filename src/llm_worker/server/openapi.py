"""The OpenAPI document of the HTTP API (:mod:`llm_worker.server.http_api`), served at
``/openapi.json``.

It describes the deployment that serves it, so that a request the document
calls valid is one this server accepts, and the other way round: the providers a
template may name are those usable here, each with its settings as the provider
checks them (:meth:`~llm_worker.providers.Provider.settings_schema`), the
inserts and pipelines registered here with their options, the request limits
(``MAX_STREAMS``, ``MAX_HISTORY_MESSAGES``), and keys only when keys are
configured. The shapes come from the objects that validate (the pydantic models
of messages, the providers, inserts and pipelines), not from a copy.

What JSON Schema cannot say, the server still checks: a placeholder may name a
variable or a template field the same request defines (the document allows
only ``{query}``), ``{previous_stream_output}`` after the first stream, and the
size of the rendered request (``MAX_MODEL_REQUEST_CHARS``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_worker import __version__
from llm_worker.jobs.templates import BUILTIN_PLACEHOLDERS, MAX_FALLBACKS, QUERY, ChatMessage
from llm_worker.store.base import CURSOR_PATTERN
from llm_worker.wire import errors

if TYPE_CHECKING:
    from llm_worker.running.runner import Runner

_REF = "#/components/schemas/{model}"
STATES = ["pending", "running", "done", "failed", "cancelled"]
# The most digits of a seq the server reads (http_api.SEQ_DIGITS).
SEQ_DIGITS = 18
LISTING_MAX = 500


def _ref(model: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=model)}


# Message text: literal text, {{ and }} for braces, and {query}; what else a request
# may name ({variables}, template fields) depends on the request (see the module doc).
CONTENT_PATTERN = r"^([^{}]|\{\{|\}\}|\{" + QUERY + r"\})*$"


def _message_schema() -> dict[str, Any]:
    schema = ChatMessage.model_json_schema()
    schema.pop("title", None)
    schema["properties"]["content"] = {
        "type": "string",
        "pattern": CONTENT_PATTERN,
        "description": "May hold {query}; write {{ and }} for literal braces.",
    }
    # An item with ``insert`` is an insert, not a message.
    schema["properties"]["insert"] = False
    return schema


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
    schemas: dict[str, Any] = {"TemplateMessage": _message_schema()}
    providers = runner.providers.usable()
    settings = {name: _settings_schema(runner, name) for name in providers}
    fallback = {
        "anyOf": [_with_settings(name, settings[name], {}, "provider") for name in providers]
    }
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
                    "items": {"anyOf": [_ref("TemplateMessage"), *inserts]},
                },
                "fallbacks": {"type": "array", "maxItems": MAX_FALLBACKS, "items": fallback},
            },
            "provider",
        )
        schemas[model]["required"].append("messages")
        schemas[model]["description"] = f"A model call to provider {name!r}."
        streams.append(_ref(model))
    for name, pipeline in runner.pipelines.items():
        model = f"PipelineStream_{name}"
        schemas[model] = _named(pipeline.options_schema(), "pipeline", name)
        schemas[model]["description"] = f"A stream computed by pipeline {name!r}."
        streams.append(_ref(model))
    schemas["Stream"] = {"anyOf": streams}
    return schemas


def _job_schemas(runner: Runner) -> dict[str, Any]:
    limits = runner.limits
    schemas = _stream_schemas(runner)
    schemas["ChatMessage"] = ChatMessage.model_json_schema()
    schemas["Assistant"] = {
        "type": "object",
        "required": ["streams"],
        "properties": {
            "streams": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_streams,
                "items": _ref("Stream"),
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
            "assistant": _ref("Assistant"),
            "history": {
                "type": "array",
                "maxItems": limits.max_history_messages,
                "items": _ref("ChatMessage"),
            },
            "variables": {
                "type": "object",
                "properties": dict.fromkeys(sorted(BUILTIN_PLACEHOLDERS), False),
                "additionalProperties": {"type": ["string", "number", "boolean"]},
                "description": "Values for placeholders; query and previous_stream_output "
                "are the worker's.",
            },
        },
        "description": "A job: what a WebSocket `add` carries, without `type` and `id`.",
    }
    return schemas


_TOKENS = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        name: {"type": ["integer", "null"], "minimum": 0}
        for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
}
_SUMMARY = {
    "usage": {
        "anyOf": [
            {
                **_TOKENS,
                "required": [*_TOKENS["required"], "streams"],
                "properties": {
                    **_TOKENS["properties"],
                    "streams": {"type": "array", "items": {"anyOf": [_TOKENS, {"type": "null"}]}},
                },
            },
            {"type": "null"},
        ],
        "description": "Tokens in all and by stream; null where no model said.",
    },
    "finish_reason": {"type": ["string", "null"], "description": "Why the last stream ended."},
    "providers": {
        "type": "array",
        "items": {"type": ["string", "null"]},
        "description": "The provider that answered each stream (null for a pipeline).",
    },
}


def _event(kind: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "job_id", *required],
        "properties": {"type": {"const": kind}, "job_id": {"type": "string"}, **properties},
    }


_SEQ = {"type": "integer", "minimum": 1}
_EVENT_TYPES = ["pending", "running", "notice", "reset", "done", "failed", "cancelled", "error"]


def _reply_schemas() -> dict[str, Any]:
    events = {
        "PendingEvent": _event("pending", {"position": {"type": "integer", "minimum": 1}}, []),
        "RunningEvent": _event(
            "running", {"message": {"type": "string"}, "seq": _SEQ}, ["message", "seq"]
        ),
        "NoticeEvent": _event(
            "notice", {"message": {"type": "string"}, "seq": _SEQ}, ["message", "seq"]
        ),
        "ResetEvent": _event(
            "reset", {"attempt": {"type": "integer", "minimum": 1}, "seq": _SEQ}, ["seq"]
        ),
        "DoneEvent": _event("done", {"seq": _SEQ, **_SUMMARY}, ["seq"]),
        "FailedEvent": _event(
            "failed", {"message": {"type": "string"}, "seq": _SEQ}, ["message", "seq"]
        ),
        "CancelledEvent": _event("cancelled", {"seq": _SEQ}, ["seq"]),
        "ErrorEvent": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"const": "error"}, "message": {"type": "string"}},
        },
    }
    return {
        **events,
        "JobEvent": {
            "oneOf": [_ref(name) for name in events],
            "description": "The `data:` of one event of a job's event stream.",
        },
        "ServerSentEvent": {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The seq."},
                "event": {"enum": _EVENT_TYPES},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": _ref("JobEvent"),
                },
            },
            "description": "One event of a job's event stream.",
        },
        "JobCreated": {
            "type": "object",
            "required": ["job_id", "state"],
            "properties": {
                "job_id": {"type": "string"},
                "state": {"type": "string", "enum": STATES},
                "listen_token": {
                    "type": "string",
                    "description": "With API keys only: lets whoever holds it follow "
                    "this job and ask its status, and nothing else.",
                },
            },
        },
        "Status": {
            "type": "object",
            "required": ["type", "job_id", "state", "output"],
            "properties": {
                "type": {"const": "status"},
                "job_id": {"type": "string"},
                "state": {"type": "string", "enum": STATES},
                "position": {"type": "integer", "minimum": 1, "description": "If pending."},
                "output": {"type": "string", "description": "The text so far."},
                "error": {"type": "string", "description": "Why it failed, if it did."},
                **_SUMMARY,
            },
        },
        "JobSummary": {
            "type": "object",
            "required": [
                "job_id",
                "state",
                "created_at",
                "finished_at",
                "attempt",
                "error",
                "tenant",
            ],
            "properties": {
                "job_id": {"type": "string"},
                "state": {"type": "string", "enum": STATES},
                "created_at": {"type": "number", "description": "Unix time, seconds."},
                "finished_at": {
                    "type": ["number", "null"],
                    "description": "Unix time, seconds; null while it has not ended.",
                },
                "attempt": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Times a worker started it; 0 if it never ran.",
                },
                "error": {"type": ["string", "null"], "description": "Why it failed."},
                "tenant": {"type": "string", "description": "Whose job; empty without keys."},
            },
        },
        "JobList": {
            "type": "object",
            "required": ["jobs"],
            "properties": {
                "jobs": {
                    "type": "array",
                    "items": _ref("JobSummary"),
                    "description": "Newest first.",
                },
                "next": {
                    "type": "string",
                    "description": "When older jobs remain: the `cursor` of the next page. "
                    "Jobs added meanwhile shift no page.",
                },
            },
        },
        "Catalog": {
            "type": "object",
            "required": ["providers", "inserts", "pipelines"],
            "properties": {
                name: {"type": "array", "items": {"type": "string"}, "description": text}
                for name, text in (
                    ("providers", "Providers configured here."),
                    ("inserts", "Inserts a template's messages may name."),
                    ("pipelines", "Pipelines a template's streams may name."),
                )
            },
        },
        "Cancelled": {
            "type": "object",
            "required": ["type", "job_id"],
            "properties": {"type": {"const": "cancelled"}, "job_id": {"type": "string"}},
        },
        "Error": {
            "type": "object",
            "required": ["type", "code", "message"],
            "properties": {
                "type": {"const": "error"},
                "code": {
                    "type": "string",
                    "enum": list(errors.CODES),
                    "description": "Stable: what went wrong, for programs.",
                },
                "message": {"type": "string", "description": "For people; may change."},
            },
        },
    }


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _json(description: str, model: str, links: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(model)}},
    }
    if links:
        response["links"] = links
    return response


def _links(*operations: str) -> dict[str, Any]:
    """Links from a response naming a job (``job_id``) to ``operations`` on it."""
    return {
        operation: {
            "operationId": operation,
            "parameters": {"job_id": "$response.body#/job_id"},
        }
        for operation in operations
    }


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_EVENTS = """\
Server-Sent Events, one per frame of the WebSocket's full protocol: `id:` is the
frame's `seq` (`pending` has none), `event:` its `type` (`pending`, `running`,
`reset`, `done`, `failed`, `cancelled`, `error`), `data:` the frame as JSON
(`JobEvent`). A `running` frame may carry several deltas merged, with the last
one's seq. The stream ends after the terminal event (`done`, `failed` or
`cancelled`), which it sends even when `after` is past the end of the job's log
(it then resumes from there); comment lines keep an idle stream open."""


def openapi_document(runner: Runner, *, keys: bool) -> dict[str, Any]:
    """The document of the API as this deployment serves it: its providers, inserts,
    pipelines and limits (``runner``), with API keys or without (``keys``)."""
    common = {
        "403": _error(
            "A page from an origin not allowed (origin_not_allowed)"
            + (", or a listen token asking more than to listen (listen_only)." if keys else ".")
        ),
        "500": _error("A bug of ours (internal_error)."),
        "503": _error(
            "The store is unavailable (store_unavailable), or the worker is stopping "
            "(shutting_down)."
        ),
    }
    if keys:
        common["401"] = _error(
            "No valid API key (unauthorized).",
            {"WWW-Authenticate": {"schema": {"type": "string"}}},
        )
    not_found = _error("Unknown job: never added, expired, or another tenant's (job_not_found).")
    components: dict[str, Any] = {"schemas": {**_job_schemas(runner), **_reply_schemas()}}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "LLM Worker",
            "version": __version__,
            "description": "Jobs over HTTP, beside the WebSocket at /ws/."
            + (
                " Keys go as `Authorization: Bearer KEY` (or `?access_token=KEY`)."
                if keys
                else " No keys are configured: anyone may use it."
            ),
        },
        "components": components,
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "createJob",
                    "summary": "Queue a job",
                    "requestBody": {"required": True} | _json("The job.", "JobRequest"),
                    "responses": {
                        "201": _json(
                            "Queued.",
                            "JobCreated",
                            _links("getJob", "streamJobEvents", "cancelJob"),
                        ),
                        "400": _error(
                            "Not JSON (invalid_json), or not a job this deployment can run "
                            "(invalid_job): the message says what is wrong."
                        ),
                        "413": _error("Larger than MAX_MESSAGE_BYTES (payload_too_large)."),
                        "429": _error(
                            "The tenant is over its rate (rate_limited) or its queued jobs "
                            "(tenant_queue_full).",
                            _RETRY_AFTER,
                        ),
                        **common,
                        "503": _error(
                            "The queue is full (queue_full), the store is unavailable "
                            "(store_unavailable), or the worker is stopping (shutting_down).",
                            _RETRY_AFTER,
                        ),
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "The newest jobs of every tenant"
                    + (" (an admin key's)" if keys else ""),
                    "description": "With API keys, only for a key that `ADMIN_KEYS` lists; "
                    "without keys, for anyone.",
                    "parameters": [
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {"type": "string", "enum": STATES},
                            "description": "Only the jobs in this state.",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": LISTING_MAX,
                                "default": 50,
                            },
                            "description": "At most this many jobs.",
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                            "description": "Where the page starts: the `next` of the page "
                            "before (opaque; any other value is refused).",
                        },
                    ],
                    "responses": {
                        "200": _json("The jobs, newest first.", "JobList"),
                        "400": _error("`state`, `limit` or `cursor` is not valid (bad_request)."),
                        **common,
                        **(
                            {"403": _error("An origin not allowed, or not an admin key.")}
                            if keys
                            else {}
                        ),
                    },
                },
            },
            "/v1/catalog": {
                "get": {
                    "operationId": "getCatalog",
                    "summary": "The providers, inserts and pipelines a template may name",
                    "responses": {
                        "200": _json("What this deployment offers.", "Catalog"),
                        **common,
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's state, place in the queue and text so far",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": _json("The job.", "Status", _links("streamJobEvents", "cancelJob")),
                        "404": not_found,
                        **common,
                    },
                }
            },
            "/v1/jobs/{job_id}/events": {
                "get": {
                    "operationId": "streamJobEvents",
                    "summary": "Follow a job's events, live and resumable",
                    "description": _EVENTS,
                    "parameters": [
                        _JOB_ID,
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": 10**SEQ_DIGITS - 1,
                            },
                            "description": "Resume after this seq.",
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "schema": {"type": "string", "pattern": f"^[0-9]{{1,{SEQ_DIGITS}}}$"},
                            "description": "Resume after this seq (sent by EventSource); "
                            "wins over `after`.",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The events.",
                            "content": {"text/event-stream": {"schema": _ref("ServerSentEvent")}},
                        },
                        "204": {"description": "The job has ended and nothing follows `after`."},
                        "400": _error("`after` or `Last-Event-ID` is not a seq (bad_request)."),
                        "404": not_found,
                        **common,
                    },
                }
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a pending or running job",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": _json("Cancelled.", "Cancelled", _links("getJob")),
                        "404": not_found,
                        "409": _error("The job had already ended (job_ended)."),
                        **common,
                    },
                }
            },
        },
    }
    if keys:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "access_token": {"type": "apiKey", "in": "query", "name": "access_token"},
        }
        document["security"] = [{"bearer": []}, {"access_token": []}]
    return document
