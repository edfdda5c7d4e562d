"""Forgetting an ended job before its TTL, in Redis (:meth:`JobStore.forget`).

The job's hash and log stream share its hash tag (:mod:`.layout`), so one script
checks that the job has ended and deletes both at once: every gateway finds it
unknown from then on. The index of recent jobs lives in the queue's slot, so its
id is removed from it after, apart; a listing that met the id in between would
drop it anyway, as it drops the ids of expired jobs.
"""

from __future__ import annotations

from llm_worker.store.redis.connection import Connection
from llm_worker.store.redis.scripts import Script

DISCARD = Script(
    "discard",
    keys=("job_key", "events_key", "gone_key"),
    args=(),
    reply=bool,  # Redis answers 0 or 1
    # An ended job's record and log, gone; false (and nothing changed) for a job that
    # has not ended or that Redis does not hold.
    body="""
local state = redis.call('HGET', job_key, 'state')
if state ~= 'done' and state ~= 'failed' and state ~= 'cancelled' then return 0 end
redis.call('DEL', job_key, events_key, gone_key)
return 1
""",
)


async def forget(conn: Connection, job_id: str) -> bool:
    """Delete the ended job ``job_id``'s record and log, then its id from the listing;
    whether it was deleted (not if it has not ended, or is unknown)."""
    keys, reach = conn.keys, conn.reach
    deleted = await reach.for_client(
        lambda: conn.run(
            DISCARD,
            job_key=keys.job_key(job_id),
            events_key=keys.events_key(job_id),
            gone_key=keys.gone_key(job_id),  # forgotten on purpose: no tombstone
        )
    )
    if deleted:
        await reach.for_client(lambda: conn.client.zrem(keys.recent_key, job_id))
    return deleted
