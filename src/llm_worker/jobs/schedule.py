"""When a job may start: the ``run_at`` or ``delay`` a client gives on submit, read.

A job given one of them is *scheduled* until that time: it waits apart from the queue,
and joins the queue's end once due (its place among the jobs waiting then is that of a
job added at that moment). Pure: the time now is the caller's to give.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

MAX_DELAY_SECONDS = 30 * 24 * 3600.0
"""How far ahead a ``delay`` may go (30 days): further, and a mistake (milliseconds
taken for seconds) is far likelier than a plan."""


RUN_AT_MAX_LENGTH = 40
"""The longest ``run_at`` read (an RFC 3339 time with nanoseconds is 35 characters)."""


class BadSchedule(ValueError):
    """A ``run_at`` or ``delay`` that is not one; the message says why, for the client."""


def start_time(run_at: object, delay: object, now: float) -> float | None:
    """The time (``time.time()``'s) the job may start, ``None`` for at once.

    ``run_at`` is an RFC 3339 date-time with its offset (``2026-12-08T09:30:00Z``),
    however far ahead (a date is a plan: it is taken as given); ``delay``, seconds
    from ``now`` (0 to :data:`MAX_DELAY_SECONDS`). One or the other, not both; ``None``
    is neither. A ``run_at`` already past is at once.
    """
    if run_at is not None and delay is not None:
        raise BadSchedule("give run_at or delay, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or math.isnan(delay):
            raise BadSchedule("delay: a number of seconds")
        if not 0 <= delay <= MAX_DELAY_SECONDS:
            raise BadSchedule(f"delay: from 0 to {MAX_DELAY_SECONDS:.0f} seconds (30 days)")
        return now + delay if delay > 0 else None
    if run_at is None:
        return None
    when = _rfc3339(run_at)
    return when if when > now else None


def _rfc3339(value: object) -> float:
    """An RFC 3339 date-time as seconds since the epoch; :class:`BadSchedule` for
    anything else (a time without its offset is ambiguous: refused)."""
    problem = BadSchedule("run_at: an RFC 3339 date-time with its offset, as 2026-12-08T09:30:00Z")
    if not isinstance(value, str) or len(value) > RUN_AT_MAX_LENGTH or "T" not in value.upper():
        raise problem
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise problem from None
    if parsed.tzinfo is None:
        raise problem
    return parsed.timestamp()


def rfc3339(when: float) -> str:
    """A time (``time.time()``'s) as RFC 3339, in UTC, to the millisecond."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
