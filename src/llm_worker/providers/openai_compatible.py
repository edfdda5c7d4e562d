"""Chat completions over HTTP with the official ``openai`` SDK.

Serves OpenAI itself and every server that speaks its API: vLLM, Ollama,
llama.cpp's server, LM Studio. Clients are shared per (base URL, key) so that
jobs reuse warm connections instead of paying a TLS and TCP handshake each.

Messages go as the API takes them (content parts, tool calls, tool results), and
settings the worker does not own as they are (``tools``, ``tool_choice``,
``parallel_tool_calls``, ``response_format``, a server's own such as ``top_k``). The
reply comes back as text, reasoning, refusal and tool-call fragments
(:class:`ChatChunks`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import openai
import orjson

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import TemplateError
from llm_worker.providers.base import CallEnd, Part, Reasoning, Refusal, ToolCallDelta
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
from llm_worker.providers.http_replies import (
    ReplyProblem,
    ReplyReader,
    count,
    error_code,
    error_detail,
)

log = logging.getLogger(__name__)

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
    # How long the server's list of models is trusted, and waited for.
    MODELS_KEPT_SECONDS = 60.0
    MODELS_TIMEOUT_SECONDS = 5.0
    _models: tuple[float, list[str]] | None = None

    async def served_models(self) -> list[str]:
        """The ids the server's ``GET /models`` lists (a vLLM's or Ollama's models),
        asked at most once a minute; none while it is not configured or does not say
        (unreachable, an error, another shape), which is logged, not raised: the list
        is what is known, not a limit."""
        now = time.monotonic()
        if self._models is not None and now - self._models[0] < self.MODELS_KEPT_SECONDS:
            return self._models[1]
        models: list[str] = []
        if self.configuration_problem() is None:
            try:
                client = (await self._client()).with_options(timeout=self.MODELS_TIMEOUT_SECONDS)
                page = await client.models.list()
                models = sorted({model.id for model in page.data if isinstance(model.id, str)})
            except Exception as exc:  # whatever the server did, the list is empty
                log.info("%s: its models could not be listed: %s", self._where(), exc)
        self._models = (now, models)
        return models

    def check_message(self, message: ChatMessage, where: str, name: str) -> None:
        """Every message is sent as it is: content parts of any type, tool calls, tool
        results (an endpoint that cannot take one says so in its answer)."""

    def message_schema(self) -> dict[str, Any] | None:
        return None

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
    """What the chunks of one streamed chat completion said so far, besides its parts.

    A chunk's delta reads as its text (``content``), its reasoning (``reasoning_content``
    as vLLM and DeepSeek name it, or ``reasoning`` as OpenRouter and newer vLLM do), its
    refusal and fragments of its tool calls; only the first choice (``index`` 0) counts,
    as a job streams one reply.
    """

    __slots__ = ("_calls", "finish_reason", "usage")

    def __init__(self) -> None:
        super().__init__()
        self.finish_reason: str | None = None
        self.usage: Any = None
        self._calls = _ToolCallIndexes()

    def read(self, data: str) -> str | list[Part] | None:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            if data == "[DONE]":  # no JSON: asked here, off the token path
                self.finished = self.whole = True
                return None
            raise ReplyProblem("sent a chunk that is not JSON", kind="bad_reply") from None
        try:
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            if chunk.get("error"):
                raise _stream_error(chunk)
            choices = chunk.get("choices")
            if not choices:
                return None
            choice = choices[0]
            if choice.get("index"):  # another choice's chunk, or several choices
                choice = next((c for c in choices if not c.get("index")), None)
                if choice is None:
                    return None
            if choice.get("finish_reason") is not None:
                self.finished = True
                self.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta")
            if not delta:
                return None
            content = delta.get("content")
            # The token path: a delta of text alone, or beside its role (Ollama's).
            if type(content) is str:
                size = len(delta)
                if size == 1 or (size == 2 and "role" in delta):
                    return content
            return self._parts(delta)
        except (AttributeError, KeyError, IndexError, TypeError):
            if not isinstance(chunk, dict):
                return None  # JSON, but no chunk: nothing to read
            raise ReplyProblem(
                "sent a chunk not shaped as a chat completion chunk", kind="bad_reply"
            ) from None

    def _parts(self, delta: dict[str, Any]) -> str | list[Part] | None:
        """The parts of a delta that may say more than text, in the order a model makes
        them: reasoning, text, refusal, tool calls."""
        # vLLM has sent the same text under both names: one is read, not both.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        content = delta.get("content")
        refusal = delta.get("refusal")
        calls = delta.get("tool_calls")
        if not (reasoning or refusal or calls) and type(content) is str:
            return content  # text beside a role or empty fields (Ollama sends them each time)
        parts: list[Part] = []
        if reasoning and type(reasoning) is str:
            parts.append(Reasoning(reasoning))
        if content:
            if type(content) is str:
                parts.append(content)
            else:  # Mistral's reasoning models stream content as a list of parts
                parts.extend(_content_parts(content))
        if refusal and type(refusal) is str:
            parts.append(Refusal(refusal))
        if calls:
            parts.extend(self._calls.read(call) for call in calls)
        return parts

    def end(self) -> CallEnd:
        return _call_end(self.finish_reason, self.usage)


class _ToolCallIndexes:
    """Which of the reply's tool calls each fragment belongs to: its ``index``, or, from
    servers that leave it out (whole calls in one fragment each, as Gemini's
    OpenAI-compatible API sends them), a call of its own for each ``id`` not yet seen
    and the last call for a fragment without one."""

    __slots__ = ("_by_id", "_last")

    def __init__(self) -> None:
        self._by_id: dict[str, int] = {}
        self._last = -1

    def read(self, call: dict[str, Any]) -> ToolCallDelta:
        function = call.get("function") or {}
        call_id = call.get("id") or None
        index = call.get("index")
        if type(index) is not int:
            if call_id is None:
                index = max(self._last, 0)
            else:
                index = self._by_id.get(call_id, len(self._by_id))
        if call_id is not None:
            self._by_id.setdefault(call_id, index)
        self._last = index
        arguments = function.get("arguments") or ""
        if type(arguments) is not str:  # an object, from servers that parse it
            arguments = orjson.dumps(arguments).decode()
        return ToolCallDelta(index, call_id, function.get("name") or None, arguments)


def _content_parts(content: list[Any]) -> list[Part]:
    """Text and thinking of a content delta given as a list of parts (Mistral's
    ``{"type": "text"}`` and ``{"type": "thinking", "thinking": [text parts]}``)."""
    parts: list[Part] = []
    for item in content:
        kind = item.get("type")
        if kind == "text" and item.get("text"):
            parts.append(str(item["text"]))
        elif kind == "thinking":
            text = "".join(str(inner.get("text") or "") for inner in item.get("thinking") or ())
            if text:
                parts.append(Reasoning(text))
    return parts


def _stream_error(chunk: dict[str, Any]) -> ReplyProblem:
    """An ``error`` the stream sent instead of a chunk (OpenAI's shape, which vLLM,
    OpenRouter and LiteLLM send too, after their 200)."""
    detail = error_detail(chunk) or "an error occurred during streaming"
    return ReplyProblem(f"reported an error: {detail}", code=error_code(chunk))


def _call_end(finish_reason: str | None, usage: Any) -> CallEnd:
    """The call's end with the tokens of an OpenAI ``usage`` object, where it says them:
    of the prompt's, those read from the cache (``prompt_tokens_details.cached_tokens``,
    DeepSeek's ``prompt_cache_hit_tokens``); of the completion's, those spent reasoning
    (``completion_tokens_details.reasoning_tokens``)."""
    if not isinstance(usage, dict):
        return CallEnd(finish_reason)
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    cached = count(prompt.get("cached_tokens")) if isinstance(prompt, dict) else None
    if cached is None:
        cached = count(usage.get("prompt_cache_hit_tokens"))
    return CallEnd(
        finish_reason,
        count(usage.get("prompt_tokens")),
        count(usage.get("completion_tokens")),
        cached_tokens=cached,
        reasoning_tokens=(
            count(completion.get("reasoning_tokens")) if isinstance(completion, dict) else None
        ),
    )
