"""Idempotent submission in Redis (:mod:`llm_worker.store.idempotency`), and the
tombstones of expired jobs read back (:mod:`llm_worker.store.tombstones`).

A key's first job is a string in the queue's slot (``P:{queue}:once:D``,
:mod:`.layout`), so the script that queues a job (:data:`.scripts.SUBMIT`) can read
and set it in the same step, on a Redis Cluster too: :data:`SUBMIT_ONCE` is that
script, run only when the key holds no other job, and setting the key (for its
window, ``PX``) when it queued this one. Two gateways adding with one key at once
make one job; the one that lost deletes the record it wrote for its own job, which
was never queued, and answers with the first.
"""

from __future__ import annotations

from typing import Any

from llm_worker.store.idempotency import FirstJob, IdempotencyKey
from llm_worker.store.redis.connection import Connection
from llm_worker.store.redis.layout import decoded
from llm_worker.store.redis.scripts import SUBMIT, Script, Submitted
from llm_worker.store.tombstones import Tombstone


def _once_reply(reply: Any) -> Submitted | FirstJob:
    """The job queued (its ticket, or what was full), or the key's first job."""
    if len(reply) == 2:
        return FirstJob.decoded(decoded(reply[1]))
    return SUBMIT.reply(reply[0])


SUBMIT_ONCE = Script(
    "submit_once",
    keys=(*SUBMIT.keys, "once_key"),
    args=(*SUBMIT.args, "first", "window_ms"),
    reply=_once_reply,
    # SUBMIT, unless the key names another job: then that job. A retry of this very
    # add (the key names its job) is SUBMIT's retry.
    body="""
local held = redis.call('GET', once_key)
if held and string.sub(held, 1, #job_id + 1) ~= job_id .. ' ' then return {0, held} end
local function submit()
"""
    + SUBMIT.body
    + """
end
local ticket = submit()
if ticket > 0 then redis.call('SET', once_key, first, 'PX', window_ms) end
return {ticket}
""",
)


async def first_job(conn: Connection, tenant: str, key: str) -> FirstJob | None:
    """The key's first job, while its window lasts."""
    name = conn.keys.once_key(tenant, key)
    held = await conn.reach.for_client(lambda: conn.client.get(name))
    return None if held is None else FirstJob.decoded(decoded(held))


async def read_tombstone(conn: Connection, job_id: str) -> Tombstone | None:
    """The job's tombstone, once its record has expired (none while it is kept)."""
    keys, client = conn.keys, conn.client
    held = await conn.reach.for_client(lambda: client.get(keys.gone_key(job_id)))
    if held is None or await conn.reach.for_client(lambda: client.exists(keys.job_key(job_id))):
        return None
    return Tombstone.decoded(job_id, decoded(held))


def once_args(
    conn: Connection, tenant: str, key: IdempotencyKey, first: FirstJob
) -> dict[str, Any]:
    """What :data:`SUBMIT_ONCE` takes beyond :data:`.scripts.SUBMIT`'s, for ``first``
    (the job it queues) under the ``tenant``'s ``key``."""
    return {
        "once_key": conn.keys.once_key(tenant, key.key),
        "first": first.encoded(),
        "window_ms": max(1, round(key.window * 1000)),
    }
