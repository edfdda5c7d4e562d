"""Chat completions over HTTP with the official ``openai`` SDK.

Serves OpenAI itself and every server that speaks its API: vLLM, Ollama,
llama.cpp's server, LM Studio. Clients are shared per (base URL, key) so that
jobs reuse warm connections instead of paying a TLS and TCP handshake each.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

import httpx2
import openai
import orjson

from llm_worker.jobs.templates import ChatMessage, TemplateError
from llm_worker.ops.redaction import redact_url, scrub, url_secrets
from llm_worker.providers.base import CallEnd, Provider, ProviderError
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
from llm_worker.providers.http_replies import retry_after, root_cause, sse_data

log = logging.getLogger(__name__)

# Owned by the worker: the messages come from the template, the reply must stream,
# and one job has one reply.
_RESERVED_SETTINGS = {
    "messages": "messages come from the template",
    "stream": "replies are always streamed",
    "extra_body": "put extra parameters directly in settings",
}
_RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class ClientPool:
    """One ``AsyncOpenAI`` client per (base URL, API key), created on first use.

    The clients use the SDK's aiohttp transport (``openai[aiohttp]``), which
    costs about half of what its default one does per request, and keep up
    to ``max_connections`` connections alive for reuse.
    """

    def __init__(self, *, timeout: float, connect_timeout: float, max_connections: int) -> None:
        self._timeout = openai.Timeout(timeout, connect=connect_timeout)
        self._limits = httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._clients: dict[tuple[str, str], openai.AsyncOpenAI] = {}

    def get(self, base_url: str, api_key: str) -> openai.AsyncOpenAI:
        key = (base_url, api_key)
        client = self._clients.get(key)
        if client is None:
            try:
                http_client = openai.DefaultAioHttpClient(
                    timeout=self._timeout, limits=self._limits
                )
            except RuntimeError:  # the aiohttp extra is missing
                http_client = openai.DefaultAsyncHttpxClient(
                    timeout=self._timeout, limits=self._limits
                )
            # A query in the base URL (Azure's ``?api-version=...&api-key=...``)
            # goes with every request: the SDK would append paths after it.
            path, _, query = base_url.partition("?")
            # Retries are the runner's: it knows whether output already reached listeners.
            client = openai.AsyncOpenAI(
                base_url=path,
                default_query=dict(parse_qsl(query, keep_blank_values=True)) or None,
                api_key=api_key,
                max_retries=0,
                timeout=self._timeout,
                http_client=http_client,
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


class OpenAICompatibleProvider(Provider):
    """A chat-completions endpoint at ``base_url``.

    ``api_key`` is ``None`` when the deployment configured none; ``missing_key``
    then says how to set one, and jobs fail with that message. Endpoints that
    take no key (a local vLLM or Ollama) get a placeholder key instead.
    """

    def __init__(
        self,
        name: str,
        *,
        clients: ClientPool,
        base_url: str | None,
        api_key: str | None,
        missing_key: str | None = None,
        missing_base_url: str | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self._clients = clients
        self._api_key = api_key
        self._missing_key = missing_key
        self._missing_base_url = missing_base_url
        self.defaults = dict(defaults or {})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} at {redact_url(self.base_url or '')}>"

    def configuration_problem(self) -> str | None:
        if not self.base_url:
            return self._missing_base_url or f"provider {self.name!r} has no base URL configured"
        if self._api_key is None:
            return self._missing_key or f"provider {self.name!r} has no API key configured"
        return None

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        problem = self.configuration_problem()
        if problem is not None:
            raise TemplateError(problem)
        for key, why in _RESERVED_SETTINGS.items():
            if key in settings:
                raise TemplateError(f"settings.{key} is not allowed: {why}")
        merged = {**self.defaults, **settings}
        model = merged.get("model")
        if not isinstance(model, str) or not model:
            raise TemplateError(
                f"settings.model must name a model of provider {self.name!r}"
                + ("" if model is None else f", not {model!r}")
            )
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

    def _client(self) -> openai.AsyncOpenAI:
        # Checked at add too; a job queued before a restart with other settings lands here.
        problem = self.configuration_problem()
        if problem is not None:
            raise ProviderError(problem, kind="configuration")
        assert self.base_url is not None and self._api_key is not None
        return self._clients.get(self.base_url, self._api_key)

    async def stream(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[str | CallEnd]:
        client = self._client()
        body = {**self.defaults, **settings}
        body["messages"] = [m.to_openai() for m in messages]
        body["stream"] = True
        # The last chunk then says what the call took (OpenAI, vLLM, llama.cpp, Ollama);
        # a server that ignores it leaves the job's usage unknown. For one that refuses
        # it, the provider's settings say "stream_options": null.
        options = body.setdefault("stream_options", {"include_usage": True})
        if options is None:
            del body["stream_options"]
        try:
            # The SDK's generic request: its base URL, auth, timeouts and error types,
            # without the per-request parameter transform and the per-chunk models
            # of chat.completions.create(), which cost several times our whole token
            # path (bench/sdk_paths.py).
            response = await client.post(
                "/chat/completions",
                body=body,
                cast_to=httpx2.Response,
                stream=True,
                stream_cls=openai.AsyncStream[httpx2.Response],
            )
        except openai.APIError as exc:
            raise self._translate(exc) from exc
        except (ValueError, TypeError) as exc:
            # The transport refusing the request as configured (a base URL with
            # credentials in it, say): the job fails saying so, not as a crash.
            raise self._failure(f"cannot ask {self._where()}: {exc}", kind="configuration") from exc

        finished = False
        said_anything = False
        finish_reason: str | None = None
        usage: Any = None
        try:
            async for data in sse_data(response):
                said_anything = True
                if data == "[DONE]":
                    finished = True
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise self._failure(
                        f"{self._where()} sent a chunk that is not JSON", kind="bad_reply"
                    ) from None
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if chunk.get("error"):
                    detail = _error_detail(chunk) or "an error occurred during streaming"
                    raise self._failure(f"{self._where()} reported an error: {detail}")
                choices = chunk.get("choices")
                if not choices:
                    continue
                choice = choices[0]
                delta = choice.get("delta")
                if delta:
                    content = delta.get("content")
                    if content:
                        yield content
                if choice.get("finish_reason") is not None:
                    finished = True
                    finish_reason = str(choice["finish_reason"])
        except httpx2.TimeoutException as exc:
            raise self._failure(
                f"{self._where()} timed out", retryable=True, kind="timeout"
            ) from exc
        except httpx2.HTTPError as exc:
            reason = f": {exc}" if str(exc) else ""
            raise self._failure(
                f"lost the reply from {self._where()}{reason}", retryable=True, kind="connection"
            ) from exc
        finally:
            await response.aclose()
        if not said_anything:
            # llama.cpp's server does this when the prompt is longer than its context;
            # the same request would get the same answer, so it is not retried.
            raise self._failure(
                f"{self._where()} sent no output: its reply stream was empty (some servers "
                "answer so when the prompt is longer than the model's context)",
                kind="empty",
            )
        if not finished:
            raise self._failure(
                f"the reply from {self._where()} ended before the model finished "
                "(no finish_reason): the stream was cut",
                retryable=True,
                kind="cut",
            )
        yield CallEnd(finish_reason, *_token_counts(usage))

    def _where(self) -> str:
        return f"provider {self.name!r} at {redact_url(self.base_url or '')}"

    def _failure(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        kind: str = "error",
    ) -> ProviderError:
        """The error for clients, the log and the store: without the key (whole, quoted
        or masked) or the credentials of any URL in it."""
        told = scrub(message, [self._api_key or "", *url_secrets(self.base_url)])
        if told != message:
            log.warning("provider %r quoted a secret (redacted): %s", self.name, told)
        return ProviderError(told, retryable=retryable, retry_after=retry_after, kind=kind)

    def _translate(self, exc: openai.APIError) -> ProviderError:
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = _error_detail(exc.body) or exc.response.reason_phrase or ""
            return self._failure(
                f"{self._where()} answered HTTP {status}" + (f": {detail}" if detail else ""),
                retryable=status in _RETRYABLE_STATUS,
                retry_after=retry_after(exc.response.headers.get("retry-after")),
                kind="rate_limited" if status == 429 else f"http_{status // 100}xx",
            )
        if isinstance(exc, openai.APIConnectionError):
            # Judge by the innermost cause: transports label some refusals as timeouts.
            cause = root_cause(exc)
            if isinstance(cause, TimeoutError) and not isinstance(cause, ConnectionError):
                return self._failure(f"{self._where()} timed out", retryable=True, kind="timeout")
            reason = f": {cause}" if cause is not exc and str(cause) else ""
            return self._failure(
                f"cannot reach {self._where()}{reason}", retryable=True, kind="connection"
            )
        return self._failure(f"{self._where()} reported an error: {exc.message}")


def _token_counts(usage: Any) -> tuple[int | None, int | None]:
    """The prompt and completion tokens of an OpenAI ``usage`` object, where it says."""
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else None,
        completion if isinstance(completion, int) and not isinstance(completion, bool) else None,
    )


def _error_detail(body: object) -> str | None:
    """The human part of an error body, in the shapes servers send: OpenAI's
    ``{"error": {"message": ...}}``, vLLM's ``{"message": ...}``, FastAPI's
    ``{"detail": "..."}`` and its validation errors ``{"detail": [{"loc", "msg"}]}``
    (``transformers serve`` and many OpenAI-compatible servers)."""
    if isinstance(body, str):
        return body[:500] or None
    if not isinstance(body, Mapping):
        return None
    for key in ("error", "message", "detail"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value[:500]
        if isinstance(value, Mapping) and (inner := _error_detail(value)):
            return inner
        if isinstance(value, list) and value:
            problems = [_problem(item) for item in value[:3]]
            more = f"; and {len(value) - 3} more" if len(value) > 3 else ""
            return "; ".join(problems)[:500] + more
    return None


def _problem(item: object) -> str:
    """One entry of a list of errors; FastAPI's name a location and say what is wrong."""
    if isinstance(item, Mapping) and isinstance(item.get("msg"), str):
        location = item.get("loc")
        if isinstance(location, list) and location:
            return f"{'.'.join(str(part) for part in location)}: {item['msg']}"
        return item["msg"]
    return str(item)
