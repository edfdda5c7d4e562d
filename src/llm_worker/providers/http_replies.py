"""What every HTTP provider reads the same way: a reply's server-sent events, the
``retry-after`` a server asks for, and the root cause of a transport's error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2

# The longest wait a server's retry-after may impose before a retry.
MAX_RETRY_AFTER = 60.0


async def sse_data(response: httpx2.Response) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event of ``response``."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        # event:, id:, retry: and comments carry nothing a reply needs.
    if data:
        yield "\n".join(data)


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
