"""The base of the providers that call a model over HTTP through an official SDK
(``openai``, ``anthropic``; both are generated alike, with the same error types):
one client per (base URL, key), the request, the answer's status judged by one table,
transport errors named, the reply stream read and its end checked, and every error's
text kept free of the key. A provider adds only what differs: its SDK and client, its
settings, its request body and how its reply's events read (a
:class:`~llm_worker.providers.http_replies.ReplyReader`).

Retries are the runner's, as for every provider: it knows whether output already
reached listeners. The SDKs' own are off; the rules they follow to judge an error
(:func:`~llm_worker.providers.http_replies.should_retry`) are kept.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import httpx2

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import TemplateError
from llm_worker.ops.redaction import redact_url, scrub, url_secrets
from llm_worker.providers.base import CallEnd, Part, Provider, ProviderError
from llm_worker.providers.http_replies import (
    ReplyProblem,
    ReplyReader,
    error_code,
    error_detail,
    retry_after,
    root_cause,
    should_retry,
    status_kind,
)
from llm_worker.providers.sse import EventStreamDecoder

log = logging.getLogger(__name__)


class SdkClients(abc.ABC):
    """One SDK client per (base URL, API key), created on first use, so that jobs
    reuse warm connections instead of paying a TLS and TCP handshake each.

    The clients use the SDK's aiohttp transport (its ``aiohttp`` extra), which costs
    about half of what its default one does per request, and keep up to
    ``max_connections`` connections alive for reuse.
    """

    def __init__(self, *, timeout: float, connect_timeout: float, max_connections: int) -> None:
        self._timeout = httpx2.Timeout(timeout, connect=connect_timeout)
        self._limits = httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._clients: dict[tuple[str, str], Any] = {}

    @abc.abstractmethod
    async def sdk(self) -> ModuleType:
        """The SDK's module, imported."""

    @abc.abstractmethod
    def _new_client(self, sdk: ModuleType, base_url: str, **common: Any) -> Any:
        """A client of ``sdk`` for ``base_url``, made with the ``common`` arguments
        (``api_key``, ``max_retries``, ``timeout``, ``http_client``)."""

    async def get(self, base_url: str, api_key: str) -> Any:
        """The client for ``base_url`` and ``api_key``, made on first use."""
        key = (base_url, api_key)
        client = self._clients.get(key)
        if client is None:
            sdk = await self.sdk()
            # Another job may have made it while this one waited for the import.
            if (client := self._clients.get(key)) is not None:
                return client
            try:
                http_client = sdk.DefaultAioHttpClient(timeout=self._timeout, limits=self._limits)
            except RuntimeError:  # the aiohttp extra is missing
                http_client = sdk.DefaultAsyncHttpxClient(
                    timeout=self._timeout, limits=self._limits
                )
            client = self._new_client(
                sdk,
                base_url,
                api_key=api_key,
                max_retries=0,  # the runner's: see the module's docstring
                timeout=self._timeout,
                http_client=http_client,
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


class HttpProvider(Provider):
    """A model behind an HTTP API at ``base_url``, asked through an official SDK.

    ``api_key`` is ``None`` when the deployment configured none; ``missing_key`` then
    says how to set one, and jobs fail with that message (``missing_base_url`` alike).
    A subclass sets :attr:`path`, :attr:`finish_marker` and the hooks below.
    """

    path: str
    """Where replies are asked for, under the base URL."""
    finish_marker: str
    """What a whole reply says last, named in the error when a stream lacks it."""
    empty_reply_is_final = False
    """An empty reply stream is the server's answer (not retried), not a cut."""
    read_past_whole = False
    """Read the body to its end after the reply is whole, so that its connection is
    kept for the next job rather than closed."""

    def __init__(
        self,
        name: str,
        *,
        clients: SdkClients,
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

    # -- what a subclass says ------------------------------------------------------

    @abc.abstractmethod
    def request_body(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The API's request for ``messages`` with ``settings`` over the defaults."""

    @abc.abstractmethod
    def new_reply(self) -> ReplyReader:
        """A reader for the events of one reply."""

    def error_code(self, body: object) -> str | None:
        """The upstream's code for the error whose body (as the SDK read it) this is; by
        default OpenAI's ``error.code`` (:func:`~llm_worker.providers.http_replies.error_code`)."""
        return error_code(body)

    def _check_names(self, settings: Mapping[str, Any], merged: Mapping[str, Any]) -> None:
        """Refuse settings this provider does not take (``merged``: over the defaults)."""

    def _check_values(self, merged: Mapping[str, Any]) -> None:
        """Refuse values of settings that cannot work (``merged``: over the defaults)."""

    # -- add time ------------------------------------------------------------------

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
        merged = {**self.defaults, **settings}
        self._check_names(settings, merged)
        model = merged.get("model")
        if not isinstance(model, str) or not model:
            raise TemplateError(
                f"settings.model must name a model of provider {self.name!r}"
                + ("" if model is None else f", not {model!r}")
            )
        self._check_values(merged)

    # -- a call --------------------------------------------------------------------

    async def stream(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[Part | CallEnd]:
        client = await self._client()
        response = await self._open(client, self.request_body(messages, settings))
        reply = self.new_reply()
        # Bound once, not per event: this loop is the token path. The body's events are
        # read here rather than through an async generator (sse_data), which costs
        # 60 ns an event.
        read, decoder = reply.read, EventStreamDecoder()
        feed, next_piece = decoder.feed, response.aiter_bytes().__anext__
        heard = ended = False
        try:
            while not ended:
                try:
                    events = feed(await next_piece())
                except StopAsyncIteration:
                    events, ended = decoder.end(), True
                for data in events:
                    heard = True
                    said = read(data)
                    if not said:
                        if reply.whole and not self.read_past_whole:
                            ended = True
                            break
                    elif type(said) is str:
                        yield said
                    else:
                        for part in said:
                            yield part
        except ReplyProblem as problem:
            raise self._failure(
                f"{self._where()} {problem.said}",
                retryable=problem.retryable,
                kind=problem.kind,
                code=problem.code,
            ) from None
        except httpx2.HTTPError as exc:
            if not reply.whole:
                raise self._lost(exc) from exc
        finally:
            # Also when the job is cancelled: closing the response hangs up, and the
            # server stops generating.
            await response.aclose()
        if not reply.finished:
            raise self._unfinished(heard)
        yield reply.end()

    async def _client(self) -> Any:
        # Checked at add too; a job queued before a restart with other settings lands here.
        problem = self.configuration_problem()
        if problem is not None:
            raise ProviderError(problem, kind="configuration")
        assert self.base_url is not None and self._api_key is not None
        return await self._clients.get(self.base_url, self._api_key)

    async def _open(self, client: Any, body: dict[str, Any]) -> httpx2.Response:
        """The reply's response, its body still to read; a :class:`ProviderError` when
        the API answers with an error status or cannot be reached."""
        sdk = await self._clients.sdk()
        try:
            # The SDK's generic request (its base URL, auth, headers, timeouts and error
            # types) answered with the raw response, read with orjson: its typed stream
            # builds a model per event, which costs several times our whole token path
            # (bench/sdk_paths.py; for Anthropic's, 62 us of CPU a token against 22 us
            # this way, the loopback server's share included).
            return await client.post(
                self.path,
                body=body,
                cast_to=httpx2.Response,
                stream=True,
                stream_cls=sdk.AsyncStream[httpx2.Response],
            )
        except sdk.APIError as exc:
            raise self._translate(sdk, exc) from exc
        except (ValueError, TypeError) as exc:
            # The transport refusing the request as configured (a base URL with
            # credentials in it, say): the job fails saying so, not as a crash.
            raise self._failure(f"cannot ask {self._where()}: {exc}", kind="configuration") from exc

    # -- errors --------------------------------------------------------------------

    def _where(self) -> str:
        return f"provider {self.name!r} at {redact_url(self.base_url or '')}"

    def _failure(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        kind: str = "error",
        code: str | None = None,
    ) -> ProviderError:
        """The error for clients, the log and the store: without the key (whole, quoted
        or masked) or the credentials of any URL in it; the upstream's ``code`` for the
        error, where it said one, kept and named at the end (``(code ...)``)."""
        if code:
            message += f" (code {code})"
        secrets = [self._api_key or "", *url_secrets(self.base_url)]
        told = scrub(message, secrets)
        if told != message:
            log.warning("provider %r quoted a secret (redacted): %s", self.name, told)
        if code:
            code = scrub(code, secrets)
        return ProviderError(
            told, retryable=retryable, retry_after=retry_after, kind=kind, code=code
        )

    def _translate(self, sdk: ModuleType, exc: Any) -> ProviderError:
        """The error for what the SDK raised asking for a reply."""
        if isinstance(exc, sdk.APIStatusError):
            status, headers = exc.status_code, exc.response.headers
            detail = error_detail(exc.body) or exc.response.reason_phrase or ""
            return self._failure(
                f"{self._where()} answered HTTP {status}" + (f": {detail}" if detail else ""),
                retryable=should_retry(status, headers),
                retry_after=retry_after(headers),
                kind=status_kind(status),
                code=self.error_code(exc.body),
            )
        if isinstance(exc, sdk.APIConnectionError):
            # Judge by the innermost cause too: transports label some refusals as timeouts.
            cause = root_cause(exc)
            timed_out = isinstance(exc, sdk.APITimeoutError) or isinstance(cause, TimeoutError)
            if timed_out and not isinstance(cause, ConnectionError):
                return self._failure(f"{self._where()} timed out", retryable=True, kind="timeout")
            reason = f": {cause}" if cause is not exc and str(cause) else ""
            return self._failure(
                f"cannot reach {self._where()}{reason}", retryable=True, kind="connection"
            )
        return self._failure(f"{self._where()} reported an error: {exc.message}")

    def _lost(self, exc: httpx2.HTTPError) -> ProviderError:
        """The error for a transport failing while the reply streams."""
        if isinstance(exc, httpx2.TimeoutException):
            return self._failure(f"{self._where()} timed out", retryable=True, kind="timeout")
        reason = f": {exc}" if str(exc) else ""
        return self._failure(
            f"lost the reply from {self._where()}{reason}", retryable=True, kind="connection"
        )

    def _unfinished(self, heard: bool) -> ProviderError:
        """The error for a reply stream that ended before the model finished."""
        if not heard and self.empty_reply_is_final:
            # llama.cpp's server does this when the prompt is longer than its context;
            # the same request would get the same answer, so it is not retried.
            return self._failure(
                f"{self._where()} sent no output: its reply stream was empty (some servers "
                "answer so when the prompt is longer than the model's context)",
                kind="empty",
            )
        return self._failure(
            f"the reply from {self._where()} ended before the model finished "
            f"({self.finish_marker}): the stream was cut",
            retryable=True,
            kind="cut",
        )
