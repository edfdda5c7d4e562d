"""What every HTTP provider reads the same way, sans-I/O where it can be: a reply's
server-sent events, one reader per reply turning their data into the reply's parts,
the status table that says whether another try may cure an error answer, the wait a
server asks for, the human part and the code of an error body and the root cause of a
transport's error."""

from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator, Mapping

import httpx2

from llm_worker.jobs.parts import Part
from llm_worker.jobs.usage import CallEnd
from llm_worker.providers.sse import EventStreamDecoder

# The longest wait a server's retry-after may impose before a retry.
MAX_RETRY_AFTER = 60.0
# What another try may cure, as the official SDKs (openai, anthropic) judge it: a request
# timeout, a lock conflict, a rate limit, any server error.
RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


async def sse_data(response: httpx2.Response) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event of ``response``, the last one's too when
    the body ends without the empty line that closes it.

    Read from the body's bytes, whose lines end only at CRLF, LF or CR: a text
    decoder's lines (``aiter_lines()``) also end at U+2028, U+2029 and U+0085, which
    JSON strings may hold unescaped, and would cut such an event in two."""
    decoder = EventStreamDecoder()
    async for piece in response.aiter_bytes():
        for data in decoder.feed(piece):
            yield data
    for data in decoder.end():
        yield data


class ReplyProblem(Exception):
    """What a reply's events said that fails the call: ``said`` follows the provider's
    name and address in the error (``sent a chunk that is not JSON``); ``code`` is the
    upstream's own code for the error, where it said one."""

    def __init__(
        self, said: str, *, retryable: bool = False, kind: str = "error", code: str | None = None
    ) -> None:
        super().__init__(said)
        self.said = said
        self.retryable = retryable
        self.kind = kind
        self.code = code


class ReplyReader(abc.ABC):
    """The events of one reply in, the reply's parts out, and what else they said kept:
    no I/O, one reader per call.

    ``finished``: the model said its reply is finished, so the stream may end here
    without being cut. ``whole``: nothing the reply needs is still to come, so a
    transport failing past this point loses nothing.
    """

    __slots__ = ("finished", "whole")

    def __init__(self) -> None:
        self.finished = False
        self.whole = False

    @abc.abstractmethod
    def read(self, data: str) -> str | list[Part] | None:
        """What the event whose ``data`` this is adds to the reply: its text (a ``str``,
        the common case, kept cheap), its parts in the model's order (a list, for an
        event that says more than text), or nothing (``None`` or empty); raises
        :class:`ReplyProblem` for an event that fails the call."""

    @abc.abstractmethod
    def end(self) -> CallEnd:
        """Why the model stopped and what the call took, as far as the events said."""


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """Whether another try may cure an answer of HTTP ``status``: what the server says
    in ``x-should-retry`` (``true`` or ``false``) when it says, else whether the status
    is one of :data:`RETRYABLE_STATUS`; as the official SDKs judge it."""
    said = headers.get("x-should-retry")
    if said == "true":
        return True
    if said == "false":
        return False
    return status in RETRYABLE_STATUS


def status_kind(status: int) -> str:
    """The failure kind (:data:`~llm_worker.providers.base.KINDS`) of an HTTP status."""
    return "rate_limited" if status == 429 else f"http_{status // 100}xx"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The seconds a server asks to wait before a retry (up to :data:`MAX_RETRY_AFTER`):
    its ``retry-after-ms`` when it sends one (OpenAI's and Anthropic's APIs do, as the
    more precise), else its ``retry-after`` in seconds."""
    for name, unit in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            seconds = float(value) * unit
        except ValueError:
            continue
        if not math.isnan(seconds):
            return min(max(seconds, 0.0), MAX_RETRY_AFTER)
    return None


def error_detail(body: object) -> str | None:
    """The human part of an error body, in the shapes servers send: OpenAI's and
    Anthropic's ``{"error": {"message": ...}}``, vLLM's ``{"message": ...}``, FastAPI's
    ``{"detail": "..."}`` and its validation errors ``{"detail": [{"loc", "msg"}]}``
    (``transformers serve`` and many OpenAI-compatible servers), a proxy's page."""
    if isinstance(body, str):
        return body.strip()[:500] or None
    if not isinstance(body, Mapping):
        return None
    for key in ("error", "message", "detail"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value[:500]
        if isinstance(value, Mapping) and (inner := error_detail(value)):
            return inner
        if isinstance(value, list) and value:
            problems = [_problem(item) for item in value[:3]]
            more = f"; and {len(value) - 3} more" if len(value) > 3 else ""
            return "; ".join(problems)[:500] + more
    return None


def error_code(body: object) -> str | None:
    """The code an error body gives the error, in OpenAI's shape: ``{"error": {"code":
    "context_length_exceeded", ...}}``, or the inner object alone (as the ``openai`` SDK
    keeps it). Only a code in words counts: the number some servers put there (vLLM:
    ``400``) repeats the HTTP status."""
    if not isinstance(body, Mapping):
        return None
    code = body.get("code")
    if isinstance(code, str) and code:
        return code[:100]
    inner = body.get("error")
    return error_code(inner) if isinstance(inner, Mapping) else None


def _problem(item: object) -> str:
    """One entry of a list of errors; FastAPI's name a location and say what is wrong."""
    if isinstance(item, Mapping) and isinstance(item.get("msg"), str):
        location = item.get("loc")
        if isinstance(location, list) and location:
            return f"{'.'.join(str(part) for part in location)}: {item['msg']}"
        return item["msg"]
    return str(item)


def count(value: object) -> int | None:
    """``value`` when it is a count of tokens (an integer, not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception ``exc`` was raised from: transports wrap what happened."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc
