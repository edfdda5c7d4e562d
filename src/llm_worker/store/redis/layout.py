"""Where a Redis job store keeps what it keeps (the scripts that change it are
:mod:`.scripts`').

Key layout (``P`` is ``REDIS_PREFIX``; ``{...}`` are Redis Cluster hash tags,
so each Lua script touches one slot):

``P:{queue}:jobs``      stream, one entry per queued job; consumer group ``workers``
``P:{queue}:pending``   sorted set of waiting job ids by ticket: positions
``P:{queue}:scheduled`` sorted set of scheduled job ids by the time (ms) each is due:
                        out of the stream until then (:mod:`.schedule`)
``P:{queue}:tickets``   counter: the order of submission
``P:{queue}:counts``    hash: bytes of waiting requests; per tenant ``q:T`` its waiting
                        jobs; per waiting job ``of:ID`` its tenant and size
``P:{queue}:running:T`` sorted set: tenant T's running jobs (with a limit), by the
                        end of the lease their worker keeps renewing
``P:{queue}:recent``    sorted set of job ids by created_at: the listing of recent jobs;
                        ids whose job expired are dropped as they are found
``P:{queue}:workers``   sorted set of workers by when each was last heard from (Redis's
                        clock, ms): who is alive; a worker silent for long is dropped
``P:job:{ID}``          hash: state, attempt, seq, start, spec, tenant, size, times,
                        error, owner
``P:events:{ID}``       stream: the job's log, entry ``0-SEQ`` per event
``P:rate:{T}``          the time tenant T's allowance of adds is whole again (GCRA)
``P:gone:{ID}``         an ended job's tombstone: when its record expires, and its
                        tenant; expires TOMBSTONE_SECONDS after the record
``P:{queue}:once:D``    an idempotency key's first job (D: a digest of tenant and key),
                        for its window; set by the script that queues the job

Channels: ``P:{events}`` (jobs' logs grew: one message per round of writes,
covering every job the round wrote to, with the events themselves where it has
them; see :func:`encode_notice`), ``P:{queue}:cancel`` (a running job was
cancelled; payload its id), ``P:{queue}:moved`` (a job left the queue),
``P:{queue}:wake`` (a job was queued, or one holding a place among its tenant's
running jobs ended: workers waiting for either look again). On a
Redis Cluster they are sharded channels, each in the slot of its hash tag: the
queue's channels are published by the scripts that change the queue.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

GROUP = "workers"


class Keys:
    """The keys and channels of one store, under its prefix."""

    __slots__ = (
        "cancel_channel",
        "counts_key",
        "events_channel",
        "jobs_key",
        "moved_channel",
        "pending_key",
        "prefix",
        "recent_key",
        "scheduled_key",
        "tickets_key",
        "wake_channel",
        "workers_key",
    )

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.jobs_key = f"{prefix}:{{queue}}:jobs"
        self.pending_key = f"{prefix}:{{queue}}:pending"
        self.scheduled_key = f"{prefix}:{{queue}}:scheduled"
        self.tickets_key = f"{prefix}:{{queue}}:tickets"
        self.counts_key = f"{prefix}:{{queue}}:counts"
        self.recent_key = f"{prefix}:{{queue}}:recent"
        self.workers_key = f"{prefix}:{{queue}}:workers"
        self.events_channel = f"{prefix}:{{events}}"
        self.cancel_channel = f"{prefix}:{{queue}}:cancel"
        self.moved_channel = f"{prefix}:{{queue}}:moved"
        self.wake_channel = f"{prefix}:{{queue}}:wake"

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}"

    def events_key(self, job_id: str) -> str:
        return f"{self.prefix}:events:{{{job_id}}}"

    def running_key(self, tenant: str) -> str:
        return f"{self.prefix}:{{queue}}:running:{tenant}"

    def gone_key(self, job_id: str) -> str:
        return f"{self.prefix}:gone:{{{job_id}}}"

    def once_key(self, tenant: str, key: str) -> str:
        digest = hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()
        return f"{self.prefix}:{{queue}}:once:{digest}"

    def rate_key(self, tenant: str) -> str:
        return f"{self.prefix}:rate:{{{tenant}}}"


def encode_notice(entries: list[list[Any]]) -> bytes:
    """A message on the events channel: for each job, ``[job_id, last seq]``, and when
    the message carries them, ``attempt`` and the events themselves (``[kind,
    message]`` each, ending at that seq)."""
    return orjson.dumps(entries)


def decoded(value: Any) -> str:
    """A string Redis returned, as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)
