"""What every HTTP provider reads the same way: a reply's server-sent events, the
``retry-after`` a server asks for, and the root cause of a transport's error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2

from llm_worker.providers.sse import EventStreamDecoder

# The longest wait a server's retry-after may impose before a retry.
MAX_RETRY_AFTER = 60.0


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


def retry_after(value: str | None) -> float | None:
    """The seconds a ``retry-after`` header asks for (up to :data:`MAX_RETRY_AFTER`)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception ``exc`` was raised from: transports wrap what happened."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc
