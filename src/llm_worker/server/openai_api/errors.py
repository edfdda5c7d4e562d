"""Errors in OpenAI's shape, so that OpenAI's SDKs raise their own exception classes
(``BadRequestError``, ``AuthenticationError``, ``NotFoundError``, ``RateLimitError``...,
chosen by the HTTP status):

    {"error": {"message": "...", "type": "invalid_request_error", "param": "n", "code": "..."}}

The status is the one the rest of the API answers for the same refusal
(:mod:`llm_worker.wire.errors`), ``code`` our stable code unless the refusal names
OpenAI's own, and ``retry-after`` comes along with a 429 or 503 as it does there.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response

from llm_worker.server.refusals import Refused, store_refusal
from llm_worker.store import StoreError
from llm_worker.wire import errors
from llm_worker.wire.openai import InvalidParam

log = logging.getLogger(__name__)

# OpenAI's error types, by HTTP status (others: invalid_request_error).
_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


def error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a response of ``status``."""
    return _TYPES.get(status, "invalid_request_error")


def openai_error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> bytes:
    """The JSON of an error in OpenAI's shape."""
    error = {"message": message, "type": error_type(status), "param": param, "code": code}
    return orjson.dumps({"error": error})


def openai_error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error response in OpenAI's shape."""
    return Response(
        openai_error_body(status, message, param, code),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def refusal_error(exc: Refused | StoreError | InvalidParam) -> Response:
    """The response refusing what the gateway, the store or the request's reading
    refused, with the status and headers the rest of the API gives it."""
    if isinstance(exc, InvalidParam):
        return openai_error(exc.status, exc.message, exc.param, exc.code or errors.BAD_REQUEST)
    if isinstance(exc, Refused):
        return openai_error(errors.CODES[exc.code], exc.message, None, exc.code, exc.headers())
    code, headers = store_refusal(exc)
    # OpenAI's SDKs have no class for a 410: an expired response is their NotFoundError,
    # whose code and message say it expired.
    status = 404 if code == errors.EXPIRED else errors.CODES[code]
    return openai_error(status, str(exc), None, code, headers)


def answered(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """``handler``, its refusals answered in OpenAI's shape, and a bug of ours a 500 in
    that shape too (the traceback in the log)."""

    @functools.wraps(handler)
    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except (Refused, StoreError, InvalidParam) as exc:
            return refusal_error(exc)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return openai_error(
                500,
                f"internal error while handling {request.method} {request.url.path}",
                code=errors.INTERNAL_ERROR,
            )

    return answer
