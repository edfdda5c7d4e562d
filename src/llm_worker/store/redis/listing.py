"""The listing of recent jobs, as Redis holds it.

Recent jobs come from an index kept for them, a sorted set of job ids by
created_at that the submit script adds to with the queue (one ZADD in the slot it
writes anyway). The other way, SCAN over the jobs' keys, reads the whole keyspace
(every node's, on a cluster) and fetches and sorts every job at each listing; with
the index a listing reads the newest ids and their records, a page at a time, and
goes further only while a filter skips some. Redis expires a finished job's hash
without telling the index, so ids whose job is gone are dropped where a listing
meets them, and each gateway sweeps those created over JOB_TTL ago (no younger
job can have expired): the index stays about the size of the jobs kept.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from llm_worker.aio.tasks import cancel_requested
from llm_worker.jobs.model import JobRecord
from llm_worker.store.base import ListingQuery
from llm_worker.store.redis.connection import Connection
from llm_worker.store.redis.layout import decoded
from llm_worker.store.redis.reachability import UNREACHABLE
from llm_worker.store.redis.records import JobRecords

log = logging.getLogger(__name__)

# Ids of the index of recent jobs read at once, by a listing or a sweep of it.
_RECENT_PAGE = 500


class RecentJobs:
    """The index of recent jobs: listed a page at a time, swept of jobs gone."""

    def __init__(self, conn: Connection, records: JobRecords, job_ttl: float) -> None:
        self._conn = conn
        self._records = records
        self._job_ttl = job_ttl

    async def page(self, query: ListingQuery) -> list[JobRecord]:
        """The records ``query`` asks for, newest first."""
        # Members of one score come in reverse order of their ids: a ListingKey's order.
        reach, client, index = self._conn.reach, self._conn.client, self._conn.keys.recent_key
        found: list[JobRecord] = []
        below = query.below
        high = math.inf if below is None else below.created_at  # the page starts at this score...
        ties = 0  # ...past the ids at that very score seen (and kept) already
        while len(found) < query.limit:
            top = "+inf" if high == math.inf else repr(high)
            page = await reach.for_client(
                lambda top=top, ties=ties: client.zrevrangebyscore(
                    index, top, "-inf", start=ties, num=_RECENT_PAGE, withscores=True
                )
            )
            if not page:
                break
            ids = [decoded(member) for member, _ in page]
            records = await reach.for_client(lambda ids=ids: self._records.records(ids))
            gone = [job_id for job_id, record in zip(ids, records, strict=True) if record is None]
            if gone:
                await reach.for_client(lambda gone=gone: client.zrem(index, *gone))
            last = float(page[-1][1])
            kept_at_last = sum(
                1
                for (_, score), record in zip(page, records, strict=True)
                if record is not None and float(score) == last
            )
            ties = ties + kept_at_last if last == high else kept_at_last
            high = last
            found += [record for record in records if record is not None and query.admits(record)]
        return found[: query.limit]

    async def sweep(self) -> int:
        """Drop from the index the ids of jobs that are gone, among those created over
        JOB_TTL ago; returns how many."""
        client, index = self._conn.client, self._conn.keys.recent_key
        horizon = repr(time.time() - self._job_ttl)
        removed = 0
        offset = 0
        while True:
            page = await client.zrangebyscore(
                index, "-inf", horizon, start=offset, num=_RECENT_PAGE
            )
            if not page:
                return removed
            ids = [decoded(member) for member in page]
            exists = await self._records.all_exist(ids)
            gone = [job_id for job_id, alive in zip(ids, exists, strict=True) if not alive]
            if gone:
                removed += int(await client.zrem(index, *gone))
            offset += len(ids) - len(gone)

    async def sweep_forever(self) -> None:
        interval = min(max(self._job_ttl / 4, 1.0), 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self.sweep()
            except UNREACHABLE as exc:
                self._conn.reach.went_down(exc)
                removed = 0
            except Exception:
                log.exception("sweeping the index of recent jobs failed")
                removed = 0
            if cancel_requested():  # a stop's cancel that the Redis client swallowed
                raise asyncio.CancelledError
            if removed:
                log.debug("dropped %d expired jobs from the index of recent jobs", removed)
