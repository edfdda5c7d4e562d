"""Requests the gateway will not honour: the message for the client, the stable
``code`` and the HTTP status that say the same (the WebSocket sends the message
alone), and the JSON response every HTTP refusal is (:mod:`llm_worker.wire.errors`)."""

from __future__ import annotations

from starlette.responses import Response

from llm_worker.store import QueueFull, RateLimited, StoreError, UnknownJob, Unstorable
from llm_worker.store.base import ExpiredJob, KeyReused
from llm_worker.wire import errors


class Refused(Exception):
    """A request refused before it reached the store: bad, unauthorized, not allowed."""

    def __init__(
        self, message: str, code: str = errors.BAD_REQUEST, *, challenge: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = errors.CODES[code]
        self.challenge = challenge
        """Whether to ask for a key (``WWW-Authenticate``): a 401."""

    def headers(self) -> dict[str, str] | None:
        return {"www-authenticate": "Bearer"} if self.challenge else None


def store_refusal(exc: StoreError) -> tuple[str, dict[str, str] | None]:
    """The code (and headers) of an HTTP response refusing what the store refused."""
    if isinstance(exc, ExpiredJob):
        return errors.EXPIRED, None
    if isinstance(exc, UnknownJob):
        return errors.JOB_NOT_FOUND, None
    if isinstance(exc, KeyReused):
        return errors.IDEMPOTENCY_KEY_REUSED, None
    if isinstance(exc, Unstorable):
        return errors.INVALID_JOB, None
    if isinstance(exc, RateLimited):
        return errors.RATE_LIMITED, {"retry-after": str(max(1, round(exc.retry_after + 0.5)))}
    if isinstance(exc, QueueFull):
        # A tenant over its own share has to wait for its jobs; a full queue, for anyone's.
        code = errors.TENANT_QUEUE_FULL if exc.per_tenant else errors.QUEUE_FULL
        return code, {"retry-after": "1"}
    return errors.STORE_UNAVAILABLE, None  # the store is away, or cannot take the job now


def error_response(code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """An HTTP error: the status of ``code`` and the body ``errors.error_body`` gives."""
    return Response(
        errors.error_body(code, message),
        status_code=errors.CODES[code],
        media_type="application/json",
        headers=headers,
    )


def refusal_response(exc: Refused | StoreError) -> Response:
    """The response to a request refused by the gateway or the store."""
    if isinstance(exc, Refused):
        return error_response(exc.code, exc.message, exc.headers())
    code, headers = store_refusal(exc)
    return error_response(code, str(exc), headers)
