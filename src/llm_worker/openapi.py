"""The OpenAPI document of the HTTP API (:mod:`llm_worker.http_api`), served at
``/openapi.json``. A job's fields are described by the same models that validate
them (:class:`~llm_worker.protocol.AddRequest` and the template's), so the
document cannot drift from what the server accepts."""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from llm_worker import __version__
from llm_worker.protocol import AddRequest

_REF = "#/components/schemas/{model}"
STATES = ["pending", "running", "done", "failed", "cancelled"]


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema([(AddRequest, "validation")], ref_template=_REF)
    schemas: dict[str, Any] = top["$defs"]
    job = schemas.pop("AddRequest")
    # Over HTTP, the route says what the request is: no ``type``, and no ``id`` to match.
    for field in ("type", "id"):
        job["properties"].pop(field)
        if field in job.get("required", []):
            job["required"].remove(field)
    job["title"] = "JobRequest"
    job["description"] = "A job: what a WebSocket `add` carries, without `type` and `id`."
    schemas["JobRequest"] = job
    schemas.update(
        {
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
                        "items": {"$ref": _REF.format(model="JobSummary")},
                        "description": "Newest first.",
                    }
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
                "required": ["type", "message"],
                "properties": {"type": {"const": "error"}, "message": {"type": "string"}},
            },
        }
    )
    return schemas


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
    }


def _json(description: str, model: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}},
    }


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_COMMON = {
    "401": _error("No valid API key (only when keys are configured)."),
    "503": _error("The store is unavailable, or the worker is stopping."),
}
_EVENTS = """\
Server-Sent Events, one per frame of the WebSocket's full protocol: `id:` is the
frame's `seq` (`pending` has none), `event:` its `type` (`pending`, `running`,
`reset`, `done`, `failed`, `cancelled`, `error`), `data:` the frame as JSON. A
`running` frame may carry several deltas merged, with the last one's seq. The
stream ends after the terminal event (`done`, `failed` or `cancelled`); comment
lines keep an idle stream open."""


@functools.cache
def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LLM Worker",
            "version": __version__,
            "description": "Jobs over HTTP, beside the WebSocket at /ws/. Keys go as "
            "`Authorization: Bearer KEY` (or `?access_token=KEY`).",
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "createJob",
                    "summary": "Queue a job",
                    "requestBody": {"required": True} | _json("The job.", "JobRequest"),
                    "responses": {
                        "201": _json("Queued.", "JobCreated"),
                        "400": _error("Not a valid job: the message says what is wrong."),
                        "403": _error("A listen token may not add jobs."),
                        "413": _error("Larger than MAX_MESSAGE_BYTES."),
                        "429": _error("The tenant is over its rate or its queued jobs."),
                        **_COMMON,
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "The newest jobs of every tenant (an admin key's)",
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
                                "maximum": 500,
                                "default": 50,
                            },
                            "description": "At most this many jobs.",
                        },
                    ],
                    "responses": {
                        "200": _json("The jobs, newest first.", "JobList"),
                        "400": _error("`state` or `limit` is not valid."),
                        "403": _error("Not an admin key."),
                        **_COMMON,
                    },
                },
            },
            "/v1/catalog": {
                "get": {
                    "operationId": "getCatalog",
                    "summary": "The providers, inserts and pipelines a template may name",
                    "responses": {
                        "200": _json("What this deployment offers.", "Catalog"),
                        "403": _error("A listen token may not ask."),
                        **_COMMON,
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's state, place in the queue and text so far",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": _json("The job.", "Status"),
                        "404": _error("Unknown job: never added, expired, or another tenant's."),
                        **_COMMON,
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
                            "schema": {"type": "integer", "minimum": 0},
                            "description": "Resume after this seq.",
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "schema": {"type": "string", "pattern": "^[0-9]+$"},
                            "description": "Resume after this seq (sent by EventSource); "
                            "wins over `after`.",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The events.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "204": {"description": "The job has ended and nothing follows `after`."},
                        "400": _error("`after` or `Last-Event-ID` is not a seq."),
                        "404": _error("Unknown job."),
                        **_COMMON,
                    },
                }
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a pending or running job",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": _json("Cancelled.", "Cancelled"),
                        "403": _error("A listen token may not cancel."),
                        "404": _error("Unknown job."),
                        "409": _error("The job had already ended."),
                        **_COMMON,
                    },
                }
            },
        },
    }
