"""Idempotent adds as the gateway serves them (:mod:`llm_worker.store.idempotency`):
the key a request brings, checked, and the store asked to add its job once.

Over HTTP the key is the ``Idempotency-Key`` header (or the body's
``idempotency_key``); on a full-protocol WebSocket, the ``add``'s
``idempotency_key``. A replay is answered as the first add was: HTTP's 201 and
body, with ``Idempotent-Replayed: true``; the WebSocket's ``resp_add`` naming the
first job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_worker.jobs.model import JobRecord, JobSpec, spec_json
from llm_worker.server.refusals import Refused
from llm_worker.store import JobStore, Unstorable
from llm_worker.store.idempotency import (
    MAX_KEY_LENGTH,
    IdempotencyKey,
    key_problem,
    request_digest,
)
from llm_worker.wire import errors

HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"


@dataclass(slots=True)
class IdempotentAdd:
    """An add's idempotency key, and, once added, whether its job was a replay."""

    key: str
    replayed: bool = False


def idempotent_add(key: object, where: str = "Idempotency-Key") -> IdempotentAdd | None:
    """The add of ``key`` (``None`` without one); :class:`Refused` (400) for a key that
    is not a string of printable ASCII of 1 to 255 characters."""
    if key is None:
        return None
    problem = f"{where} must be a string" if not isinstance(key, str) else key_problem(key)
    if problem is not None:
        raise Refused(f"{where}: {problem}", errors.BAD_REQUEST)
    return IdempotentAdd(key)


async def submit(
    store: JobStore,
    spec: JobSpec,
    tenant: str,
    once: IdempotentAdd | None,
    window: float,
    webhook: str | None = None,
) -> JobRecord:
    """The job ``spec`` makes for ``tenant``: added once per key within ``window``
    seconds when ``once`` names one (which then says whether it was a replay). Where
    the job reports its end (``webhook``, kept beside its spec) is part of the request:
    the same key with another webhook is another request."""
    if once is None:
        return await store.submit(spec, tenant)
    try:
        text = spec_json(spec)
    except ValueError as exc:
        raise Unstorable(str(exc)) from None
    if webhook is not None:
        text += b"\0webhook " + webhook.encode()
    digest = request_digest(text)
    submitted = await store.submit_once(spec, tenant, IdempotencyKey(once.key, digest, window))
    once.replayed = submitted.replayed
    return submitted.record


# -- as the OpenAPI document says it (:mod:`.openapi`) ------------------------------

_PRINTABLE = "printable ASCII, 1 to 255 characters (a UUID does)"
BODY_SCHEMA: dict[str, Any] = {
    "type": ["string", "null"],
    "minLength": 1,
    "maxLength": MAX_KEY_LENGTH,
    "pattern": "^[ -~]+$",
    "description": f"An idempotency key ({_PRINTABLE}), for a client that cannot set the "
    "Idempotency-Key header (which wins). docs/retries-and-retention.md",
}
HEADER_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    # HTTP drops a header value's leading and trailing blanks: the key has none.
    "schema": {"type": "string", "maxLength": MAX_KEY_LENGTH, "pattern": "^[!-~]([ -~]*[!-~])?$"},
    "description": f"Add the job once per key ({_PRINTABLE}): an add of the same key and "
    "request within IDEMPOTENCY_WINDOW_SECONDS answers as the first did, with the first "
    "job; docs/retries-and-retention.md.",
}
REPLAYED_HEADERS: dict[str, Any] = {
    "Idempotent-Replayed": {
        "description": "`true` when an earlier add of the Idempotency-Key made this job.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
REUSED = (
    "The idempotency key was used, within its window, for another request (idempotency_key_reused)."
)
