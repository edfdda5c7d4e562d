"""The ``anthropic`` provider: Claude through the Messages API, with the official SDK.

Settings: ``model`` (required), ``max_tokens`` (:data:`DEFAULT_MAX_TOKENS` when
unset: the API requires one), ``stop`` (a string or a list, sent as
``stop_sequences``), ``temperature`` and ``top_p`` (0 to 1), ``top_k`` and
``metadata`` (an object, such as ``{"user_id": ...}``); any other is refused when
the job is added.

The API takes the chat apart from OpenAI's shape, so messages are folded to fit
it (:func:`to_anthropic`): system messages go to its ``system`` parameter,
function and tool messages speak as the user, consecutive turns of one role
merge, and assistant turns before the first user turn join the system text (the
API wants the conversation to open with a user turn; nothing is invented).

Needs the ``anthropic`` extra (``pip install 'llm-worker[anthropic]'``): the SDK
is imported when the first job asks for a client, not before, and in a thread, as
its import takes about 2 s here. Retries are the runner's, as for every provider:
the SDK's own are off.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx2
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

if TYPE_CHECKING:
    import anthropic

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024
SETTINGS = frozenset({"model", "max_tokens", "stop", "temperature", "top_p", "top_k", "metadata"})
INSTALL_HINT = "install llm-worker[anthropic] (the anthropic SDK) to use provider {name!r}"
MESSAGES_PATH = "/v1/messages"

# Why the model stopped, in the words the rest of the worker uses (OpenAI's).
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
# Error types of an ``error`` event inside a reply stream that another try may cure,
# with the kind each counts as. Anthropic's HTTP statuses for them: 529, 500, 429, 504.
_RETRYABLE_STREAM_ERRORS = {
    "overloaded_error": "http_5xx",
    "api_error": "http_5xx",
    "rate_limit_error": "rate_limited",
    "timeout_error": "timeout",
}


@functools.cache
def sdk_installed() -> bool:
    return importlib.util.find_spec("anthropic") is not None


_sdk_imported = False


async def _import_sdk() -> Any:
    """The ``anthropic`` module. Its first import (2.6 s here: pydantic models by the
    hundred) runs in a thread, so that running jobs keep streaming meanwhile: the event
    loop's longest stall during it was 0.13 s."""
    global _sdk_imported
    if not _sdk_imported:
        await asyncio.to_thread(importlib.import_module, "anthropic")
        _sdk_imported = True
    import anthropic

    return anthropic


class AnthropicClients:
    """One ``AsyncAnthropic`` client per (base URL, API key), created on first use, so
    that jobs reuse warm connections (as :class:`~llm_worker.providers.openai_compatible.
    ClientPool` does for the openai SDK)."""

    def __init__(self, *, timeout: float, connect_timeout: float, max_connections: int) -> None:
        self._timeout = httpx2.Timeout(timeout, connect=connect_timeout)
        self._limits = httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._clients: dict[tuple[str, str], anthropic.AsyncAnthropic] = {}

    async def get(self, base_url: str, api_key: str) -> anthropic.AsyncAnthropic:
        key = (base_url, api_key)
        client = self._clients.get(key)
        if client is None:
            anthropic = await _import_sdk()
            # Another job may have made it while this one waited for the import.
            if (client := self._clients.get(key)) is not None:
                return client
            try:
                http_client = anthropic.DefaultAioHttpClient(
                    timeout=self._timeout, limits=self._limits
                )
            except RuntimeError:  # aiohttp is missing
                http_client = anthropic.DefaultAsyncHttpxClient(
                    timeout=self._timeout, limits=self._limits
                )
            # Retries are the runner's: it knows whether output already reached listeners.
            client = anthropic.AsyncAnthropic(
                api_key=api_key,
                base_url=base_url,
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


def to_anthropic(messages: Sequence[ChatMessage]) -> tuple[str | None, list[dict[str, str]]]:
    """The ``system`` text and the ``messages`` of a Messages API request.

    System messages, joined by blank lines, make the system text. Function and
    tool messages speak as the user. Assistant turns before the first user turn
    join the system text, after the system messages: the API wants a user turn
    first, and inventing one would put words in the user's mouth. Consecutive
    turns of one role are merged with blank lines, as the API wants them to
    alternate; messages with no text are left out, as the API refuses them.
    """
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for message in messages:
        if not message.content.strip():
            continue
        if message.role == "system":
            system.append(message.content)
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if role == "assistant" and not turns:
            system.append(message.content)
        elif turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + message.content
        else:
            turns.append({"role": role, "content": message.content})
    return ("\n\n".join(system) or None), turns


class AnthropicProvider(Provider):
    """Claude at ``base_url`` (the API's root, without ``/v1``).

    ``api_key`` is ``None`` when the deployment configured none; ``missing_key``
    then says how to set one, and templates naming the provider are refused.
    """

    def __init__(
        self,
        name: str,
        *,
        clients: AnthropicClients,
        base_url: str,
        api_key: str | None,
        missing_key: str | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self._clients = clients
        self._api_key = api_key
        self._missing_key = missing_key
        self.defaults = dict(defaults or {})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} at {redact_url(self.base_url)}>"

    def configuration_problem(self) -> str | None:
        if not sdk_installed():
            return INSTALL_HINT.format(name=self.name)
        if self._api_key is None:
            return self._missing_key or f"provider {self.name!r} has no API key configured"
        return None

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        problem = self.configuration_problem()
        if problem is not None:
            raise TemplateError(problem)
        merged = {**self.defaults, **settings}
        unknown = sorted(set(merged) - SETTINGS)
        if unknown:
            known = ", ".join(sorted(SETTINGS))
            raise TemplateError(
                f"settings.{unknown[0]} is not a setting of provider {self.name!r} (known: {known})"
            )
        model = merged.get("model")
        if not isinstance(model, str) or not model:
            raise TemplateError(
                f"settings.model must name a model of provider {self.name!r}"
                + ("" if model is None else f", not {model!r}")
            )
        check_integer(merged, "max_tokens", low=1)
        check_number(merged, "temperature", low=0, high=1)
        check_number(merged, "top_p", low=0, high=1)
        check_integer(merged, "top_k", low=0)
        check_stop(merged)
        metadata = merged.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise TemplateError(
                'settings.metadata must be an object (such as {"user_id": "..."}), '
                f"not {metadata!r}"
            )

    def settings_schema(self) -> dict[str, Any]:
        return settings_schema(
            {
                "model": MODEL_SCHEMA,
                "max_tokens": integer_schema(1),
                "temperature": number_schema(0, 1),
                "top_p": number_schema(0, 1),
                "top_k": integer_schema(0),
                "stop": STOP_SCHEMA,
                "metadata": {"type": ["object", "null"]},
            },
            self.defaults,
            closed=True,
        )

    def request_body(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The Messages API request for ``messages`` with ``settings`` over the defaults."""
        merged = {**self.defaults, **settings}
        system, turns = to_anthropic(messages)
        body: dict[str, Any] = {
            "model": merged.get("model"),
            "max_tokens": merged.get("max_tokens") or DEFAULT_MAX_TOKENS,
            "messages": turns,
            "stream": True,
        }
        if system is not None:
            body["system"] = system
        stop = merged.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        for key in ("temperature", "top_p", "top_k", "metadata"):
            if merged.get(key) is not None:
                body[key] = merged[key]
        return body

    async def _client(self) -> anthropic.AsyncAnthropic:
        # Checked at add too; a job queued before a restart with other settings lands here.
        problem = self.configuration_problem()
        if problem is not None:
            raise ProviderError(problem, kind="configuration")
        assert self._api_key is not None
        return await self._clients.get(self.base_url, self._api_key)

    async def stream(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[str | CallEnd]:
        client = await self._client()
        response = await self._open(client, self.request_body(messages, settings))
        reply = _Reply()
        try:
            # Read on past message_stop to the end of the body: a connection whose
            # response was left unread is closed, not kept for the next job.
            async for data in sse_data(response):
                text = reply.read(self._event(data))
                if text:
                    yield text
                elif reply.error is not None:
                    raise self._stream_error(reply.error)
        except httpx2.TimeoutException as exc:
            if not reply.finished:
                raise self._failure(
                    f"{self._where()} timed out", retryable=True, kind="timeout"
                ) from exc
        except httpx2.HTTPError as exc:
            if not reply.finished:
                reason = f": {exc}" if str(exc) else ""
                raise self._failure(
                    f"lost the reply from {self._where()}{reason}",
                    retryable=True,
                    kind="connection",
                ) from exc
        finally:
            # Also when the job is cancelled: closing the response hangs up, and the
            # API stops generating.
            await response.aclose()
        if not reply.finished:
            raise self._failure(
                f"the reply from {self._where()} ended before the model finished "
                "(no message_stop): the stream was cut",
                retryable=True,
                kind="cut",
            )
        yield reply.end()

    async def _open(
        self, client: anthropic.AsyncAnthropic, body: dict[str, Any]
    ) -> httpx2.Response:
        """The reply's response, its body still to read; a :class:`ProviderError` when
        the API answers with an error status or cannot be reached."""
        import anthropic  # imported by now: the client was made

        try:
            # The SDK's generic request (its base URL, auth, version header, timeouts
            # and error types) answered with the raw response, read with orjson: its
            # typed stream builds a pydantic model per event. A token costs 22 us of
            # CPU this way against 62 us so, the loopback server's share included
            # (5000 tokens, this 2-core machine).
            return await client.post(
                MESSAGES_PATH,
                body=body,
                cast_to=httpx2.Response,
                stream=True,
                stream_cls=anthropic.AsyncStream[httpx2.Response],
            )
        except anthropic.APIError as exc:
            raise self._translate(exc) from exc
        except (ValueError, TypeError) as exc:
            # The transport refusing the request as configured (a base URL with
            # credentials in it, say): the job fails saying so, not as a crash.
            raise self._failure(f"cannot ask {self._where()}: {exc}", kind="configuration") from exc

    def _event(self, data: str) -> dict[str, Any]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise self._failure(
                f"{self._where()} sent an event that is not JSON", kind="bad_reply"
            ) from None
        return event if isinstance(event, dict) else {}

    async def aclose(self) -> None:
        await self._clients.aclose()

    def _where(self) -> str:
        return f"provider {self.name!r} at {redact_url(self.base_url)}"

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

    def _stream_error(self, error: object) -> ProviderError:
        """An ``error`` event inside the reply (the API's way to fail after its 200)."""
        error_type = message = None
        if isinstance(error, dict):
            error_type, message = error.get("type"), error.get("message")
        said = ": ".join(str(part) for part in (error_type, message) if part)
        kind = _RETRYABLE_STREAM_ERRORS.get(str(error_type))
        return self._failure(
            f"{self._where()} reported an error during the reply: " + (said or "no details given"),
            retryable=kind is not None,
            kind=kind or "error",
        )

    def _translate(self, exc: anthropic.APIError) -> ProviderError:
        import anthropic

        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            detail = _error_message(exc.body) or exc.response.reason_phrase or ""
            return self._failure(
                f"{self._where()} answered HTTP {status}" + (f": {detail}" if detail else ""),
                retryable=status == 429 or status >= 500,
                retry_after=retry_after(exc.response.headers.get("retry-after")),
                kind="rate_limited" if status == 429 else f"http_{status // 100}xx",
            )
        if isinstance(exc, anthropic.APIConnectionError):
            # Judge by the innermost cause: transports label some refusals as timeouts.
            cause = root_cause(exc)
            if isinstance(exc, anthropic.APITimeoutError) and not isinstance(
                cause, ConnectionError
            ):
                return self._failure(f"{self._where()} timed out", retryable=True, kind="timeout")
            reason = f": {cause}" if cause is not exc and str(cause) else ""
            return self._failure(
                f"cannot reach {self._where()}{reason}", retryable=True, kind="connection"
            )
        return self._failure(f"{self._where()} reported an error: {exc.message}")


class _Reply:
    """What the events of one reply said so far, besides its text."""

    __slots__ = ("error", "finished", "stop_reason", "usage")

    def __init__(self) -> None:
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.finished = False
        self.error: object = None

    def read(self, event: dict[str, Any]) -> str | None:
        """The text ``event`` adds to the reply, if any; what else it says is kept."""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                return delta.get("text")
            return None  # thinking, a tool's input: not the reply's text
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                _add_usage(self.usage, message.get("usage"))
        elif kind == "message_delta":
            _add_usage(self.usage, event.get("usage"))
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.stop_reason = str(delta["stop_reason"])
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error":
            self.error = event.get("error") or {}
        return None

    def end(self) -> CallEnd:
        reason = self.stop_reason
        return CallEnd(
            FINISH_REASONS.get(reason, reason) if reason else None, *_token_counts(self.usage)
        )


def _add_usage(usage: dict[str, Any], update: object) -> None:
    """The usage so far with what an event says; later counts are cumulative, so win."""
    if isinstance(update, dict):
        usage.update((key, value) for key, value in update.items() if value is not None)


def _count(usage: Mapping[str, Any], key: str) -> int | None:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _token_counts(usage: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Prompt and completion tokens: the prompt's are the uncached input tokens plus
    those written to and read from the prompt cache, all of which the model read."""
    prompt = _count(usage, "input_tokens")
    if prompt is not None:
        for key in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            prompt += _count(usage, key) or 0
    return prompt, _count(usage, "output_tokens")


def _error_message(body: object) -> str | None:
    """What an error body says: the API's ``{"type": "error", "error": {"type",
    "message"}}``, or the text of a proxy's page."""
    if isinstance(body, str):
        return body.strip()[:500] or None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:500] or None
        if isinstance(body.get("message"), str):
            return body["message"][:500] or None
    return None
