"""The document's part for ``POST /v1/chat/completions`` (:mod:`llm_worker.server.
openai_api.chat`): the request as :mod:`llm_worker.wire.openai.chat_request` reads it
and the provider its model names checks it, and the replies.

The request's fields a chat-completions upstream takes are forwarded as the
provider's settings: each branch of the request (one per provider) allows those
its provider takes, with the provider's own schema of them, and refuses the others
(a provider that forwards settings it does not know takes any value of them, which
its upstream judges). ``max_completion_tokens`` goes as ``max_tokens`` to a provider
that takes only that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_worker.server.openai_api.chat import JOB_HEADER, KEEP_RUNNING_HEADER
from llm_worker.server.openapi.openai_doors import (
    Doors,
    adding_replies,
    common_replies,
    openai_error,
    setting,
    with_rule,
)
from llm_worker.server.openapi.requests import ref
from llm_worker.wire.openai.chat_request import FORWARDED

if TYPE_CHECKING:
    from llm_worker.providers import Provider

_FLAG = {"type": ["boolean", "null"]}
# What the door reads itself, beside the model and the messages.
_READ_HERE: dict[str, Any] = {
    "stream": {**_FLAG, "description": "true: the reply as Server-Sent Events."},
    "stream_options": {
        "type": ["object", "null"],
        "properties": {"include_usage": _FLAG},
        "additionalProperties": False,
    },
    "n": {"enum": [1, None], "description": "One reply per job: 1 alone is served."},
    "metadata": {"type": ["object", "null"], "description": "Kept with the job."},
    "store": {**_FLAG, "description": "Taken; every job is kept for its TTL."},
}
_REQUIRED = ["model", "messages"]


def _provider_properties(doors: Doors, provider: Provider) -> dict[str, Any]:
    """The request's fields beside ``model`` for a model of ``provider``."""
    settings = provider.settings_schema()
    messages = {
        "type": "array",
        "minItems": 1,
        "maxItems": doors.max_history,
        "items": with_rule(ref("ChatMessage"), provider.message_schema()),
    }
    properties: dict[str, Any] = {"messages": messages, **_READ_HERE}
    for name in sorted(FORWARDED):
        properties[name] = setting(settings, name)
    named = settings.get("properties") or {}
    if "max_completion_tokens" not in named and "max_tokens" in named:
        properties["max_completion_tokens"] = named["max_tokens"]
    return properties


def _assistant_properties(doors: Doors) -> dict[str, Any]:
    """The fields of a request to a template: its streams keep their own settings."""
    messages = {
        "type": "array",
        "minItems": 1,
        "maxItems": doors.max_history + 1,
        "items": ref("ChatMessage"),
        "description": "The last, a user's text, is the template's {query}; the others "
        "its history.",
    }
    return {"messages": messages, **_READ_HERE, **dict.fromkeys(sorted(FORWARDED), False)}


def chat_schemas(doors: Doors) -> dict[str, Any]:
    """``ChatCompletionRequest`` (one branch per provider a model may name, and one for
    the templates) and ``ChatCompletion``."""
    schemas: dict[str, Any] = {}
    branches = doors.provider_branches(
        doors.runner.providers,
        lambda name, provider: _provider_properties(doors, provider),
        _REQUIRED,
    )
    for name, branch in branches.items():
        branch["description"] = f"A model of provider {name!r}."
        schemas[f"ChatCompletionRequest_{name}"] = branch
    assistants = doors.assistant_branch(_assistant_properties(doors), _REQUIRED)
    if assistants is not None:
        assistants["description"] = "One of the deployment's templates (ASSISTANTS)."
        schemas["ChatCompletionRequest_assistants"] = assistants
    schemas["ChatCompletionRequest"] = {
        "anyOf": [ref(name) for name in schemas],
        "description": "`model`: `<provider>/<name>`, a bare name for OPENAI_API_PROVIDER, "
        "or `assistant:NAME`. Fields this worker does not take are refused, naming them.",
    }
    schemas["ChatCompletion"] = CHAT_COMPLETION
    schemas["ChatCompletionChunk"] = CHAT_COMPLETION_CHUNK
    return schemas


_COUNT = {"type": ["integer", "null"], "minimum": 0}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        **dict.fromkeys(("prompt_tokens", "completion_tokens", "total_tokens"), _COUNT),
        "prompt_tokens_details": {"type": "object", "properties": {"cached_tokens": _COUNT}},
        "completion_tokens_details": {
            "type": "object",
            "properties": {"reasoning_tokens": _COUNT},
        },
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content", "refusal"],
    "properties": {
        "role": {"const": "assistant"},
        "content": {"type": ["string", "null"]},
        "refusal": {"type": ["string", "null"]},
        "tool_calls": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "type", "function"],
                "properties": {
                    "id": {"type": "string"},
                    "type": {"const": "function"},
                    "function": {
                        "type": "object",
                        "required": ["name", "arguments"],
                        "properties": {
                            "name": {"type": "string"},
                            "arguments": {"type": "string"},
                        },
                    },
                },
            },
        },
        "reasoning_content": {"type": "string", "description": "The model's reasoning."},
    },
}
CHAT_COMPLETION: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string", "description": "`chatcmpl-` and the job's id."},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string", "description": "The model as asked."},
        "choices": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason", "logprobs"],
                "properties": {
                    "index": {"const": 0},
                    "message": _MESSAGE,
                    "finish_reason": {"type": "string"},
                    "logprobs": {"type": "null"},
                },
            },
        },
        "usage": {**_USAGE, "description": "Where the models said."},
    },
}
_DELTA = {
    "type": "object",
    "properties": {
        "role": {"const": "assistant"},
        "content": {"type": "string"},
        "refusal": {"type": "string"},
        "reasoning_content": {"type": "string"},
        "tool_calls": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "function"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "id": {"type": "string", "description": "In the call's first fragment."},
                    "type": {"const": "function"},
                    "function": {
                        "type": "object",
                        "required": ["arguments"],
                        "properties": {
                            "name": {"type": "string"},
                            "arguments": {"type": "string", "description": "A piece of it."},
                        },
                    },
                },
            },
        },
    },
}
CHAT_COMPLETION_CHUNK: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        **{k: CHAT_COMPLETION["properties"][k] for k in ("id", "created", "model")},
        "object": {"const": "chat.completion.chunk"},
        "choices": {
            "type": "array",
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["index", "delta", "finish_reason"],
                "properties": {
                    "index": {"const": 0},
                    "delta": _DELTA,
                    "finish_reason": {"type": ["string", "null"]},
                    "logprobs": {"type": "null"},
                },
            },
            "description": "Empty in the last chunk, which says the usage (include_usage).",
        },
        "usage": {"anyOf": [_USAGE, {"type": "null"}]},
    },
}
_CHUNK_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"const": "message"},
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "type": "string",
                    "pattern": "^\\{",
                    "contentMediaType": "application/json",
                    "contentSchema": {"anyOf": [ref("ChatCompletionChunk"), ref("OpenAIError")]},
                },
            ]
        },
    },
    "description": """\
With `stream: true`: `chat.completion.chunk` objects, each as `data: {...}`, ending
with `data: [DONE]`; a job that fails, is cancelled or restarts after part of its
answer was sent ends the stream with `data: {"error": {...}}` instead (code
`job_failed`, `job_cancelled`, `job_reset`).""",
}


def chat_paths(keys: bool) -> dict[str, Any]:
    """``/v1/chat/completions``."""
    job_header = {
        JOB_HEADER: {
            "description": "The job answering: follow, read or cancel it at /v1/jobs.",
            "schema": {"type": "string"},
        }
    }
    operation = {
        "operationId": "createChatCompletion",
        "summary": "A chat completion, as OpenAI's API makes it; each request a job",
        "parameters": [
            {
                "name": KEEP_RUNNING_HEADER,
                "in": "header",
                "schema": {"type": "string"},
                "description": "`true`: a client that leaves before the reply ends does "
                "not cancel the job (anything else: it does).",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ref("ChatCompletionRequest")}},
        },
        "responses": {
            "200": {
                "description": "The completion, once the job is done; or its chunks.",
                "headers": job_header,
                "content": {
                    "application/json": {"schema": ref("ChatCompletion")},
                    "text/event-stream": {"schema": _CHUNK_EVENT},
                },
            },
            "400": openai_error(
                "Not JSON (invalid_json), a field not taken or not valid, naming it "
                "(bad_request), or a job this deployment cannot run (invalid_job)."
            ),
            "404": openai_error("`assistant:NAME` names no template (model_not_found)."),
            "409": openai_error("The job was cancelled before its end (job_cancelled)."),
            **common_replies(keys),
            **adding_replies(),
            "500": openai_error(
                "The job failed (job_failed: the message says why), or a bug of ours "
                "(internal_error)."
            ),
        },
    }
    return {"/v1/chat/completions": {"post": operation}}
