"""Requests the gateway will not honour: the message for the client, and the HTTP
status that says the same (the WebSocket sends the message alone)."""

from __future__ import annotations

from llm_worker.store import QueueFull, RateLimited, StoreError, UnknownJob, Unstorable


class Refused(Exception):
    """A request refused before it reached the store: bad, unauthorized, not allowed."""

    def __init__(self, message: str, status: int = 400, *, challenge: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.challenge = challenge
        """Whether to ask for a key (``WWW-Authenticate``): a 401."""

    def headers(self) -> dict[str, str] | None:
        return {"www-authenticate": "Bearer"} if self.challenge else None


def http_status(exc: StoreError) -> tuple[int, dict[str, str] | None]:
    """The status (and headers) of an HTTP response refusing what the store refused."""
    if isinstance(exc, UnknownJob):
        return 404, None
    if isinstance(exc, Unstorable):
        return 400, None
    if isinstance(exc, RateLimited):
        return 429, {"retry-after": str(max(1, round(exc.retry_after + 0.5)))}
    if isinstance(exc, QueueFull):
        # A tenant over its own share has to wait for its jobs; a full queue, for anyone's.
        return (429 if exc.per_tenant else 503), {"retry-after": "1"}
    return 503, None  # the store is away, or cannot take the job now
