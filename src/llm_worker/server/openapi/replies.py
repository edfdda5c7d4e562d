"""The schemas of what the server answers: a job's events (as frames and as
Server-Sent Events), its status, the listing, the catalog, and errors."""

from __future__ import annotations

from typing import Any

from llm_worker.server.openapi.requests import SHOWN_STATES, ref
from llm_worker.wire import errors

_COUNT = {"type": ["integer", "null"], "minimum": 0}
_TOKENS = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        **dict.fromkeys(("prompt_tokens", "completion_tokens", "total_tokens"), _COUNT),
        "prompt_tokens_details": {
            "type": "object",
            "properties": {"cached_tokens": _COUNT},
            "description": "With events=typed, where the models said: of the prompt's "
            "tokens, those read from the provider's cache.",
        },
        "completion_tokens_details": {
            "type": "object",
            "properties": {"reasoning_tokens": _COUNT},
            "description": "With events=typed, where the models said: of the "
            "completion's tokens, those spent reasoning.",
        },
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
    "message": {
        "$ref": "#/components/schemas/ChatMessage",
        "description": "With events=typed: the assistant message the reply makes, ready "
        "to append to the history (content, tool_calls, refusal, reasoning).",
    },
}


def _event(kind: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "job_id", *required],
        "properties": {"type": {"const": kind}, "job_id": {"type": "string"}, **properties},
    }


_SEQ = {"type": "integer", "minimum": 1}
_EVENT_TYPES = [
    "pending",
    "running",
    "reasoning",
    "tool_call",
    "refusal",
    "notice",
    "reset",
    "done",
    "failed",
    "cancelled",
    "error",
]
_DELTA = {"message": {"type": "string"}, "seq": _SEQ}


def event_schemas() -> dict[str, Any]:
    """One schema per frame type of a job's log, and the event stream that carries them."""
    events = {
        "PendingEvent": _event("pending", {"position": {"type": "integer", "minimum": 1}}, []),
        "RunningEvent": _event(
            "running", {"message": {"type": "string"}, "seq": _SEQ}, ["message", "seq"]
        ),
        "ReasoningEvent": _event("reasoning", _DELTA, ["message", "seq"]),
        "ToolCallEvent": _event(
            "tool_call",
            {
                "index": {"type": "integer", "minimum": 0, "description": "Which call."},
                "id": {"type": "string", "description": "In the call's first frame."},
                "name": {"type": "string", "description": "In the call's first frame."},
                "arguments": {"type": "string", "description": "A piece of its JSON."},
                "seq": _SEQ,
            },
            ["index", "arguments", "seq"],
        ),
        "RefusalEvent": _event("refusal", _DELTA, ["message", "seq"]),
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
            "oneOf": [ref(name) for name in events],
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
                    "contentSchema": ref("JobEvent"),
                },
            },
            "description": "One event of a job's event stream.",
        },
    }


RESOURCE_SCHEMAS: dict[str, Any] = {
    "JobCreated": {
        "type": "object",
        "required": ["job_id", "state"],
        "properties": {
            "job_id": {"type": "string"},
            "state": {"type": "string", "enum": SHOWN_STATES},
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
            "state": {"type": "string", "enum": SHOWN_STATES},
            "position": {"type": "integer", "minimum": 1, "description": "If pending."},
            "run_at": {
                "type": "string",
                "format": "date-time",
                "description": "If scheduled: when it may start (UTC).",
            },
            "output": {"type": "string", "description": "The text so far."},
            "error": {"type": "string", "description": "Why it failed, if it did."},
            **_SUMMARY,
            "webhook": ref("WebhookDelivery"),
        },
    },
    "WebhookDelivery": {
        "type": "object",
        "description": "How the delivery of the job's webhook goes (docs/webhooks.md).",
        "required": ["url", "webhook_id", "state", "attempts"],
        "properties": {
            "url": {"type": "string"},
            "webhook_id": {"type": "string", "description": "The same on every attempt."},
            "state": {"type": "string", "enum": ["waiting", "due", "delivered", "given_up"]},
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt_at": {
                "type": ["number", "null"],
                "description": "Unix time, seconds, while an attempt is due.",
            },
            "last_status": {"type": ["integer", "null"]},
            "last_error": {"type": ["string", "null"]},
            "last_response": {
                "type": ["string", "null"],
                "description": "The start (200 bytes) of the last reply.",
            },
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
            "state": {"type": "string", "enum": SHOWN_STATES},
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
                "items": ref("JobSummary"),
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
"""What the other routes answer: a created job, a status, the listing, the catalog, a
cancel, an error."""
