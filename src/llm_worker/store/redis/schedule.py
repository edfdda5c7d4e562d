"""Scheduled jobs in Redis: kept apart until due, then queued by whichever process
is first to see them due.

:data:`.scripts.SUBMIT` puts a job given a ``run_at_ms`` in ``P:{queue}:scheduled``
(by that time) instead of the stream; it counts against its tenant's share and the
queue's bytes as a waiting job does, not against ``QUEUE_MAX`` (the jobs waiting to
run now), and has no place in the queue (no ``pending`` frames) until due. Then
:data:`PROMOTE` moves it to the stream's end with a new ticket, as if added that
moment. Every process (gateway or worker) runs a :class:`Scheduler`: one timer, set
for the earliest due time it knows of (from :data:`PROMOTE`'s answer and from the
wake notices new scheduled jobs publish), so nobody polls; a slow look every few
seconds covers notices lost while Redis was away. The first to run
:data:`PROMOTE` moves the job; the others find nothing. All the keys are in the
``{queue}`` slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from llm_worker.aio.tasks import cancel_requested
from llm_worker.store.redis.connection import Connection
from llm_worker.store.redis.scripts import DEQUEUE, Script

log = logging.getLogger(__name__)

# A look at the scheduled jobs at least this often, whatever the notices said.
SAFETY_LOOK_SECONDS = 5.0

# Jobs moved per PROMOTE: its run stays short; a busy second is run again at once.
PROMOTE_BATCH = 100

PROMOTE = Script(
    "promote",
    keys=("scheduled_key", "jobs_key", "pending_key", "tickets_key", "counts_key"),
    args=("now_ms", "batch", "wake_channel", "publish"),
    reply=lambda reply: (int(reply[0]), int(reply[1])),
    # The jobs due by now_ms join the queue's end (new tickets); answers how many, and
    # the time the next one is due (-1: none). A job cancelled meanwhile left the set.
    body="""
local due = redis.call('ZRANGEBYSCORE', scheduled_key, '-inf', now_ms, 'LIMIT', 0, batch)
for _, job_id in ipairs(due) do
  redis.call('ZREM', scheduled_key, job_id)
  local of = redis.call('HGET', counts_key, 'of:' .. job_id)
  if of then
    local tenant = string.match(of, '^(.*) %d+$')
    redis.call('XADD', jobs_key, '*', 'job', job_id, 'tenant', tenant)
    redis.call('ZADD', pending_key, redis.call('INCR', tickets_key), job_id)
  end
end
if #due > 0 then redis.call(publish, wake_channel, '0') end
local head = redis.call('ZRANGE', scheduled_key, 0, 0, 'WITHSCORES')
return {#due, tonumber(head[2] or -1)}
""",
)

UNQUEUE = Script(
    "unqueue",
    keys=(*DEQUEUE.keys, "scheduled_key"),
    args=DEQUEUE.args,
    reply=DEQUEUE.reply,
    # DEQUEUE, of a job waiting or scheduled: a scheduled one is put among the waiting
    # (in this same step, so nobody sees it there) for DEQUEUE to take it out.
    body="""
if redis.call('ZREM', scheduled_key, job_id) == 1 then
  redis.call('ZADD', pending_key, 0, job_id)
end
"""
    + DEQUEUE.body,
)


def run_at_ms(run_at: float | None) -> int:
    """SUBMIT's ``run_at_ms`` for a job of this ``run_at``: 0 (queue it now) unless ahead."""
    if run_at is None or run_at <= time.time():
        return 0
    return max(1, round(run_at * 1000))


class Scheduler:
    """This process's timer for the scheduled jobs: promote them when due."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._next_due = 0.0
        """The earliest time (``time.time()``'s) a job is known to fall due; 0: look now."""
        self._changed = asyncio.Event()

    def heard(self, data: bytes | str) -> None:
        """A wake notice: one naming a time (a job scheduled) may bring the timer forward."""
        with contextlib.suppress(ValueError):
            due_ms = int(data or 0)
            if due_ms > 0 and due_ms / 1000 < self._next_due:
                self._next_due = due_ms / 1000
                self._changed.set()

    def lost_notices(self) -> None:
        """Notices may have been lost (the connection was down): look at once."""
        self._next_due = 0.0
        self._changed.set()

    async def run_forever(self) -> None:
        """Promote the scheduled jobs as they fall due, until cancelled."""
        # A cancel redis-py swallowed ends the loop too (see cancel_requested).
        while not cancel_requested():
            wait = self._next_due - time.time()
            if wait > 0:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(wait, SAFETY_LOOK_SECONDS)):
                        await self._changed.wait()
                if self._changed.is_set():
                    continue  # an earlier time: wait for it instead
            try:
                moved, next_ms = await self.promote()
            except Exception as exc:  # Redis away (its reachability says so): try later
                log.debug("scheduled jobs not looked at: %s", exc)
                self._next_due = time.time() + 1.0
                continue
            if moved >= PROMOTE_BATCH:
                self._next_due = 0.0  # more may be due: at once
            else:
                self._next_due = next_ms / 1000 if next_ms >= 0 else math.inf

    async def promote(self) -> tuple[int, int]:
        """Queue the jobs due now; how many, and when the next is due (ms, -1: none)."""
        keys = self._conn.keys
        return await self._conn.reach.retry(
            lambda: self._conn.run(
                PROMOTE,
                scheduled_key=keys.scheduled_key,
                jobs_key=keys.jobs_key,
                pending_key=keys.pending_key,
                tickets_key=keys.tickets_key,
                counts_key=keys.counts_key,
                now_ms=round(time.time() * 1000),
                batch=PROMOTE_BATCH,
                wake_channel=keys.wake_channel,
                publish=self._conn.publish_command,
            )
        )
