"""The error codes of the HTTP API and the WebSocket, and the one shape of the HTTP
API's error bodies:

    {"type": "error", "code": "job_not_found", "message": "unknown job 'x'"}

``code`` is stable (clients branch on it); ``message`` is for people and may
change. Every error the HTTP side answers, whichever layer refuses (the routes,
the origin check, the router's 404 and 405, the server's connection limits, a
WebSocket upgrade's denial), has this shape. A WebSocket of the full protocol gets
the protocol's ``error`` frame (:func:`llm_worker.wire.protocol.error`) with the same
codes, and a few of its own (:data:`FRAME_ONLY`); a seed-dialect one, none (its
frames are the seed's to the byte). Pure: no I/O.
"""

from __future__ import annotations

import orjson

# 400
BAD_REQUEST = "bad_request"
"""A parameter or header that is not valid; the message names it."""
INVALID_JSON = "invalid_json"
"""A body that is not JSON, or not a JSON object."""
INVALID_JOB = "invalid_job"
"""A job this deployment cannot run: its fields, template, providers, settings or size."""
UNKNOWN_PROTOCOL = "unknown_protocol"
"""A WebSocket asking for a dialect not spoken."""
HOST_NOT_ALLOWED = "host_not_allowed"
"""A ``Host`` header naming none of the names the worker serves (``ALLOWED_HOSTS``)."""
# 401
UNAUTHORIZED = "unauthorized"
"""No valid API key (only when keys are configured)."""
# 403
ORIGIN_NOT_ALLOWED = "origin_not_allowed"
"""A page from an origin not in ``ALLOWED_ORIGINS``."""
LISTEN_ONLY = "listen_only"
"""A listen token asking more than to follow its job and ask its status."""
ADMIN_ONLY = "admin_only"
"""A key that is not an admin's asking for every tenant's jobs."""
# 404, 405
NOT_FOUND = "not_found"
"""No such route."""
JOB_NOT_FOUND = "job_not_found"
"""No such job: never added, forgotten, another tenant's, or expired so long ago that
even its tombstone is gone (``TOMBSTONE_SECONDS``; before, it is ``expired``)."""
METHOD_NOT_ALLOWED = "method_not_allowed"
"""A method the route does not serve (``Allow`` lists those it does)."""
# 408, 409, 410, 413
REQUEST_TIMEOUT = "request_timeout"
"""The request's headers took longer than ``HANDSHAKE_TIMEOUT_SECONDS`` to arrive, or
its body arrived too slowly (``BODY_TIMEOUT_SECONDS``, ``BODY_MIN_BYTES_PER_SECOND``)."""
JOB_ENDED = "job_ended"
"""A cancel of a job that had already ended."""
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
"""An idempotency key used, within its window, for a different request."""
AFTER_BEYOND_END = "after_beyond_end"
"""A resume point (``Last-Event-ID``, ``after``) past the last event of a job that ended."""
# 410
EXPIRED = "expired"
"""A job that ended over ``JOB_TTL_SECONDS`` ago: its record and log are gone."""
PAYLOAD_TOO_LARGE = "payload_too_large"
"""A body above ``MAX_MESSAGE_BYTES``."""
# 429
RATE_LIMITED = "rate_limited"
"""The tenant is over its rate (``Retry-After`` says when to try again)."""
TENANT_QUEUE_FULL = "tenant_queue_full"
"""The tenant has as many jobs queued as it may."""
# 500, 503
INTERNAL_ERROR = "internal_error"
"""A bug of ours; the log has the traceback."""
QUEUE_FULL = "queue_full"
"""The queue holds as many jobs as it may."""
STORE_UNAVAILABLE = "store_unavailable"
"""The job store does not answer."""
SHUTTING_DOWN = "shutting_down"
"""The process is stopping and takes no new jobs or connections."""
TOO_MANY_CONNECTIONS = "too_many_connections"
"""``MAX_CONNECTIONS`` connections are open."""
NO_WORKERS = "no_workers"
"""No worker sharing the store has been heard from lately (``/healthz``)."""

# WebSocket frames only
TOO_MANY_FOLLOWED_JOBS = "too_many_followed_jobs"
"""A ``listen`` or ``add`` on a connection that follows ``MAX_FOLLOWED_JOBS`` jobs."""
WORKER_QUIET = "worker_quiet"
"""Not a refusal: the worker running a followed job has not been heard from lately
(the job goes on once it is back or another worker takes it over)."""

CODES: dict[str, int] = {
    BAD_REQUEST: 400,
    INVALID_JSON: 400,
    INVALID_JOB: 400,
    UNKNOWN_PROTOCOL: 400,
    HOST_NOT_ALLOWED: 400,
    UNAUTHORIZED: 401,
    ORIGIN_NOT_ALLOWED: 403,
    LISTEN_ONLY: 403,
    ADMIN_ONLY: 403,
    NOT_FOUND: 404,
    JOB_NOT_FOUND: 404,
    METHOD_NOT_ALLOWED: 405,
    REQUEST_TIMEOUT: 408,
    JOB_ENDED: 409,
    IDEMPOTENCY_KEY_REUSED: 409,
    AFTER_BEYOND_END: 409,
    EXPIRED: 410,
    PAYLOAD_TOO_LARGE: 413,
    RATE_LIMITED: 429,
    TENANT_QUEUE_FULL: 429,
    INTERNAL_ERROR: 500,
    QUEUE_FULL: 503,
    STORE_UNAVAILABLE: 503,
    SHUTTING_DOWN: 503,
    TOO_MANY_CONNECTIONS: 503,
    NO_WORKERS: 503,
}
"""Every code of the HTTP API, with the HTTP status it comes with."""
FRAME_ONLY = frozenset({TOO_MANY_FOLLOWED_JOBS, WORKER_QUIET})
"""The codes only WebSocket frames carry; they come with no HTTP status."""


def error_body(code: str, message: str) -> bytes:
    """The body of an HTTP error response: ``{"type": "error", "code": ..., "message": ...}``."""
    assert code in CODES, code
    return orjson.dumps({"type": "error", "code": code, "message": message})
