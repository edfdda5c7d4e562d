"""The OpenAPI document itself: the operations of each path, with every answer they
may give and the links between them (create -> get -> events -> cancel)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from llm_worker import __version__
from llm_worker.server import idempotent
from llm_worker.server.openapi.openai_doors import Doors
from llm_worker.server.openapi.openai_paths import openai_paths, openai_schemas
from llm_worker.server.openapi.replies import RESOURCE_SCHEMAS, event_schemas
from llm_worker.server.openapi.requests import (
    LISTING_MAX,
    SEQ_DIGITS,
    STATES,
    job_schemas,
    ref,
)
from llm_worker.store.base import CURSOR_PATTERN

if TYPE_CHECKING:
    from llm_worker.running.runner import Runner


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": ref("Error")}},
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
        "content": {"application/json": {"schema": ref(model)}},
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
_TYPED = {
    "name": "events",
    "in": "query",
    "schema": {"type": "string", "enum": ["text", "typed"], "default": "text"},
    "description": "`typed`: the reply's reasoning, tool calls and refusals too, and, once "
    "done, the finished `message` and the usage's details; `text`: the text alone.",
}
_EVENTS = """\
Server-Sent Events, one per frame of the WebSocket's full protocol: `id:` is the
frame's `seq` (`pending` has none), `event:` its `type` (`pending`, `running`,
`reset`, `done`, `failed`, `cancelled`, `error`; with `events=typed`, also
`reasoning`, `tool_call`, `refusal`), `data:` the frame as JSON (`JobEvent`). A
frame may carry several deltas of one kind merged (of one tool call, for
`tool_call`), with the last one's seq. The stream ends after the terminal event (`done`, `failed` or
`cancelled`), which it sends even when `after` is past the end of the job's log
(it then resumes from there); comment lines keep an idle stream open."""


def _common(keys: bool) -> dict[str, Any]:
    """The answers every operation may give."""
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
    return common


_NOT_FOUND = _error(
    "Unknown job: never added, another tenant's, forgotten, or expired over "
    "TOMBSTONE_SECONDS ago (job_not_found)."
)
_EXPIRED = _error(
    "The job ended over JOB_TTL_SECONDS ago: its record and events are gone (expired)."
)


def _jobs_path(common: dict[str, Any], keys: bool) -> dict[str, Any]:
    """``/v1/jobs``: create a job, list the newest."""
    return {"post": _create_job(common), "get": _list_jobs(common, keys)}


def _create_job(common: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": "createJob",
        "summary": "Queue a job",
        "parameters": [idempotent.HEADER_PARAMETER],
        "requestBody": {"required": True} | _json("The job.", "JobRequest"),
        "responses": {
            "201": _json(
                "Queued (or, for a key an add made a job with, that job).",
                "JobCreated",
                _links("getJob", "streamJobEvents", "cancelJob"),
            )
            | {"headers": idempotent.REPLAYED_HEADERS},
            "409": _error(idempotent.REUSED),
            "400": _error(
                "Not JSON (invalid_json), not a job this deployment can run "
                "(invalid_job), or an idempotency key that is not one (bad_request): the "
                "message says what is wrong."
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
    }


def _list_jobs(common: dict[str, Any], keys: bool) -> dict[str, Any]:
    return {
        "operationId": "listJobs",
        "summary": "The newest jobs of every tenant" + (" (an admin key's)" if keys else ""),
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
            **({"403": _error("An origin not allowed, or not an admin key.")} if keys else {}),
        },
    }


def _catalog_path(common: dict[str, Any]) -> dict[str, Any]:
    """``/v1/catalog``: what a template may name here."""
    return {
        "get": {
            "operationId": "getCatalog",
            "summary": "The providers, inserts and pipelines a template may name",
            "responses": {
                "200": _json("What this deployment offers.", "Catalog"),
                **common,
            },
        }
    }


def _job_path(common: dict[str, Any]) -> dict[str, Any]:
    """``/v1/jobs/{job_id}``: a job's status."""
    return {
        "get": {
            "operationId": "getJob",
            "summary": "A job's state, place in the queue and text so far",
            "parameters": [_JOB_ID, _TYPED],
            "responses": {
                "200": _json("The job.", "Status", _links("streamJobEvents", "cancelJob")),
                "400": _error("`events` is neither `text` nor `typed` (bad_request)."),
                "404": _NOT_FOUND,
                "410": _EXPIRED,
                **common,
            },
        }
    }


def _events_path(common: dict[str, Any]) -> dict[str, Any]:
    """``/v1/jobs/{job_id}/events``: a job's events as Server-Sent Events."""
    return {
        "get": {
            "operationId": "streamJobEvents",
            "summary": "Follow a job's events, live and resumable",
            "description": _EVENTS,
            "parameters": [
                _JOB_ID,
                _TYPED,
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
                    "content": {"text/event-stream": {"schema": ref("ServerSentEvent")}},
                },
                "204": {"description": "The job has ended and nothing follows `after`."},
                "400": _error(
                    "`after` or `Last-Event-ID` is not a seq, or `events` is neither "
                    "`text` nor `typed` (bad_request)."
                ),
                "404": _NOT_FOUND,
                "409": _error(
                    "`after` or `Last-Event-ID` is past the last seq of a job that has "
                    "ended (after_beyond_end): the message says where its log ends."
                ),
                "410": _EXPIRED,
                **common,
            },
        }
    }


def _cancel_path(common: dict[str, Any]) -> dict[str, Any]:
    """``/v1/jobs/{job_id}/cancel``."""
    return {
        "post": {
            "operationId": "cancelJob",
            "summary": "Cancel a pending or running job",
            "parameters": [_JOB_ID],
            "responses": {
                "200": _json("Cancelled.", "Cancelled", _links("getJob")),
                "404": _NOT_FOUND,
                "409": _error("The job had already ended (job_ended)."),
                "410": _EXPIRED,
                **common,
            },
        }
    }


def openapi_document(
    runner: Runner,
    *,
    keys: bool,
    openai_provider: str = "openai",
    assistants: Iterable[str] = (),
    webhooks: bool = False,
) -> dict[str, Any]:
    """The document of the API as this deployment serves it: its providers, inserts,
    pipelines and limits (``runner``), with API keys or without (``keys``); OpenAI's
    API with the provider of its bare model names (``OPENAI_API_PROVIDER``) and the
    names of its templates (``ASSISTANTS``); a job's ``webhook`` where it sends them."""
    common = _common(keys)
    doors = Doors(runner, openai_provider, tuple(sorted(assistants)))
    schemas = {
        **job_schemas(runner, webhooks),
        **event_schemas(),
        **RESOURCE_SCHEMAS,
        **openai_schemas(doors),
    }
    components: dict[str, Any] = {"schemas": schemas}
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
            "/v1/jobs": _jobs_path(common, keys),
            "/v1/catalog": _catalog_path(common),
            "/v1/jobs/{job_id}": _job_path(common),
            "/v1/jobs/{job_id}/events": _events_path(common),
            "/v1/jobs/{job_id}/cancel": _cancel_path(common),
            **openai_paths(keys),
        },
    }
    if keys:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "access_token": {"type": "apiKey", "in": "query", "name": "access_token"},
        }
        document["security"] = [{"bearer": []}, {"access_token": []}]
    return document
