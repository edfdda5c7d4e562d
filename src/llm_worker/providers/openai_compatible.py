"""Chat completions over HTTP with the official ``openai`` SDK.

Serves OpenAI itself and every server that speaks its API: vLLM, Ollama,
llama.cpp's server, LM Studio. Clients are shared per (base URL, key) so that
jobs reuse warm connections instead of paying a TLS and TCP handshake each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import openai
import orjson

from llm_worker.jobs.templates import ChatMessage, TemplateError
from llm_worker.providers.base import CallEnd
from llm_worker.providers.checks import (
    MODEL_SCHEMA,
    STOP_SCHEMA,
    check_integer,
    check_number,
    check_stop,
    integer_schema,
    number_schema,
    settings_schema,
)
from llm_worker.providers.http_base import HttpProvider, SdkClients
from llm_worker.providers.http_replies import ReplyProblem, ReplyReader, count, error_detail

# Owned by the worker: the messages come from the template, the reply must stream,
# and one job has one reply.
_RESERVED_SETTINGS = {
    "messages": "messages come from the template",
    "stream": "replies are always streamed",
    "extra_body": "put extra parameters directly in settings",
}


class ClientPool(SdkClients):
    """One ``AsyncOpenAI`` client per (base URL, API key), created on first use."""

    async def sdk(self) -> ModuleType:
        return openai

    def _new_client(self, sdk: ModuleType, base_url: str, **common: Any) -> openai.AsyncOpenAI:
        # A query in the base URL (Azure's ``?api-version=...&api-key=...``)
        # goes with every request: the SDK would append paths after it.
        path, _, query = base_url.partition("?")
        return openai.AsyncOpenAI(
            base_url=path,
            default_query=dict(parse_qsl(query, keep_blank_values=True)) or None,
            **common,
        )


class OpenAICompatibleProvider(HttpProvider):
    """A chat-completions endpoint at ``base_url``.

    Endpoints that take no key (a local vLLM or Ollama) get a placeholder key instead.
    """

    path = "/chat/completions"
    finish_marker = "no finish_reason"
    # llama.cpp's server answers so when the prompt is longer than its context.
    empty_reply_is_final = True

    def _check_names(self, settings: Mapping[str, Any], merged: Mapping[str, Any]) -> None:
        for key, why in _RESERVED_SETTINGS.items():
            if key in settings:
                raise TemplateError(f"settings.{key} is not allowed: {why}")

    def _check_values(self, merged: Mapping[str, Any]) -> None:
        n = merged.get("n", 1)
        if isinstance(n, bool) or n != 1:
            raise TemplateError("settings.n must be 1: a job streams one reply")
        for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            check_number(merged, key)
        check_integer(merged, "max_tokens", low=1)
        check_integer(merged, "max_completion_tokens", low=1)
        check_integer(merged, "seed")
        check_stop(merged)

    def settings_schema(self) -> dict[str, Any]:
        numbers = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
        return settings_schema(
            {
                "model": MODEL_SCHEMA,
                "n": {"const": 1},
                **dict.fromkeys(numbers, number_schema()),
                "max_tokens": integer_schema(1),
                "max_completion_tokens": integer_schema(1),
                "seed": integer_schema(),
                "stop": STOP_SCHEMA,
                **dict.fromkeys(_RESERVED_SETTINGS, False),
            },
            self.defaults,
            closed=False,
        )

    def request_body(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> dict[str, Any]:
        body = {**self.defaults, **settings}
        body["messages"] = [m.to_openai() for m in messages]
        body["stream"] = True
        # The last chunk then says what the call took (OpenAI, vLLM, llama.cpp, Ollama);
        # a server that ignores it leaves the job's usage unknown. For one that refuses
        # it, the provider's settings say "stream_options": null.
        options = body.setdefault("stream_options", {"include_usage": True})
        if options is None:
            del body["stream_options"]
        return body

    def new_reply(self) -> ChatChunks:
        return ChatChunks()


class ChatChunks(ReplyReader):
    """What the chunks of one streamed chat completion said so far, besides its text."""

    __slots__ = ("finish_reason", "usage")

    def __init__(self) -> None:
        super().__init__()
        self.finish_reason: str | None = None
        self.usage: Any = None

    def read(self, data: str) -> str | None:
        if data == "[DONE]":
            self.finished = self.whole = True
            return None
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ReplyProblem("sent a chunk that is not JSON", kind="bad_reply") from None
        if not isinstance(chunk, dict):
            return None
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("error"):
            detail = error_detail(chunk) or "an error occurred during streaming"
            raise ReplyProblem(f"reported an error: {detail}")
        choices = chunk.get("choices")
        if not choices:
            return None
        choice = choices[0]
        if choice.get("finish_reason") is not None:
            self.finished = True
            self.finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta")
        return delta.get("content") if delta else None

    def end(self) -> CallEnd:
        return CallEnd(self.finish_reason, *_token_counts(self.usage))


def _token_counts(usage: Any) -> tuple[int | None, int | None]:
    """The prompt and completion tokens of an OpenAI ``usage`` object, where it says."""
    if not isinstance(usage, dict):
        return None, None
    return count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
