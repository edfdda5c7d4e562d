"""What the client raises about the service, the connection or a job; and the refusal
an ``error`` frame stands for, recognised by its stable ``code``. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_worker.wire import errors

UNKNOWN_JOB = "unknown job_id"
"""How the refusal of a job the service does not know begins, from a service old
enough to send no ``code``."""


class ClientError(Exception):
    """Base of what the client raises about the service, the connection or a job."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectionLost(ClientError):
    """No connection to the service.

    It could not be opened, or it dropped and did not come back within the
    client's ``give_up_after`` seconds; or it dropped while an ``add`` or a
    ``cancel`` awaited its answer, which may or may not have been carried out.
    """


class RequestRefused(ClientError):
    """The service refused a request (an ``error`` naming it); the message says why.

    ``code`` is the refusal's stable code (``queue_full``, ``listen_only``, ... : see
    :mod:`llm_worker.wire.errors`), for code to branch on; ``None`` from a service
    that sends none.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class JobNotFound(RequestRefused):
    """The service knows no such job: it never existed, it expired, or it is another
    tenant's."""


class JobExpired(JobNotFound):
    """The job existed, and ended over ``JOB_TTL_SECONDS`` ago: its record and events
    are gone (code ``expired``)."""


class JobFailed(ClientError):
    """The job ended ``failed``; the message is the service's reason."""


class JobCancelled(ClientError):
    """The job was cancelled (by this client or another)."""


def refusal(frame: Mapping[str, Any]) -> RequestRefused:
    """The error an ``error`` frame stands for: :class:`JobNotFound` when its code is
    ``job_not_found``, :class:`JobExpired` when ``expired`` (both end a follow), else
    :class:`RequestRefused`; each carries the frame's code."""
    message = str(frame.get("message", ""))
    code = frame.get("code")
    if not isinstance(code, str):
        # A service from before error frames carried a code: its refusal of an unknown
        # job is known by how its message begins, and no other refusal by anything.
        code = errors.JOB_NOT_FOUND if message.startswith(UNKNOWN_JOB) else None
    kind = {errors.JOB_NOT_FOUND: JobNotFound, errors.EXPIRED: JobExpired}.get(
        code or "", RequestRefused
    )
    return kind(message, code)
