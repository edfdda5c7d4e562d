"""Jobs as Redis holds them: each job's record (a hash) and log (a stream), read.

What clients ask of a job (its record, its events), what the mirrors of followed
logs read to catch up, what the listing reads a page of records with, and who runs
which job: reads only. Writes are the scripts' (:mod:`.scripts`).
"""

from __future__ import annotations

from typing import Any

from llm_worker.jobs.model import Event, JobRecord, JobState, stored_kind
from llm_worker.store.base import UnknownJob
from llm_worker.store.redis.connection import Connection
from llm_worker.store.redis.layout import decoded

_RECORD_FIELDS = ("state", "created_at", "attempt", "error", "finished_at", "tenant", "run_at")


def job_record(job_id: str, fields: dict[str, str]) -> JobRecord:
    """The record a job's hash holds."""
    finished_at = fields.get("finished_at")
    return JobRecord(
        id=job_id,
        state=JobState(fields["state"]),
        created_at=float(fields.get("created_at", 0)),
        attempt=int(fields.get("attempt", 0)),
        error=fields.get("error"),
        finished_at=float(finished_at) if finished_at else None,
        tenant=fields.get("tenant", ""),
        run_at=float(fields["run_at"]) if fields.get("run_at") else None,
    )


class JobRecords:
    """Reads of jobs' records and logs. Those for clients (:meth:`get`, :meth:`read`,
    :meth:`owners`) ride out outages as :meth:`.Reachability.for_client` does; the
    others are for callers that do."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._keys = conn.keys

    async def get(self, job_id: str) -> JobRecord | None:
        """The job's record, ``None`` if Redis does not hold the job."""
        fields = await self._fields(job_id)
        return job_record(job_id, fields) if fields is not None else None

    async def read(self, job_id: str, after: int) -> list[Event]:
        """The job's events after ``after`` (those of its current attempt, at least)."""
        fields = await self._fields(job_id)
        if fields is None:
            raise UnknownJob(job_id)
        start = max(after, int(fields.get("start", 0)))
        return await self._conn.reach.for_client(lambda: self.events(job_id, start))

    async def request(self, job_id: str) -> bytes | None:
        """The job's request as JSON, ``None`` if Redis does not hold the job (its hash
        keeps the request, and expires with the record)."""
        key = self._keys.job_key(job_id)
        spec: bytes | None = await self._conn.reach.for_client(
            lambda: self._conn.client.hget(key, "spec")
        )
        return spec

    async def _fields(self, job_id: str) -> dict[str, str] | None:
        key = self._keys.job_key(job_id)
        raw = await self._conn.reach.for_client(lambda: self._conn.client.hgetall(key))
        if not raw:
            return None
        return {decoded(k): decoded(v) for k, v in raw.items()}

    async def events(self, job_id: str, after: int, count: int | None = None) -> list[Event]:
        """The job's events after ``after``, ``count`` of them at most (all with ``None``)."""
        entries = await self._conn.client.xrange(
            self._keys.events_key(job_id), min=f"0-{after + 1}", count=count
        )
        events = []
        for entry_id, fields in entries:
            kind = stored_kind(decoded(fields[b"k"]))
            if kind is None:
                continue  # written by a newer version: left out
            seq = int(decoded(entry_id).partition("-")[2])
            events.append(Event(seq, kind, decoded(fields[b"m"]), int(fields[b"a"])))
        return events

    async def exists(self, job_id: str) -> bool:
        return bool(await self._conn.client.exists(self._keys.job_key(job_id)))

    async def all_exist(self, job_ids: list[str]) -> list[bool]:
        """Whether Redis holds each of the jobs: one round trip."""
        async with self._conn.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(self._keys.job_key(job_id))
            return [bool(exists) for exists in await pipe.execute()]

    async def records(self, job_ids: list[str]) -> list[JobRecord | None]:
        """The jobs' records, ``None`` for each job that is gone: one round trip."""
        rows = await self._hmget(job_ids, _RECORD_FIELDS)
        records: list[JobRecord | None] = []
        for job_id, values in zip(job_ids, rows, strict=True):
            fields = {
                name: decoded(value)
                for name, value in zip(_RECORD_FIELDS, values, strict=True)
                if value is not None
            }
            records.append(job_record(job_id, fields) if "state" in fields else None)
        return records

    async def owners(self, job_ids: list[str]) -> dict[str, str]:
        """The worker running each of these jobs, for those running."""
        if not job_ids:
            return {}
        rows = await self._conn.reach.for_client(lambda: self._hmget(job_ids, ("state", "owner")))
        return {
            job_id: decoded(owner).rpartition("/")[0]
            for job_id, (state, owner) in zip(job_ids, rows, strict=True)
            if owner is not None and state is not None and decoded(state) == JobState.RUNNING.value
        }

    async def _hmget(self, job_ids: list[str], names: tuple[str, ...]) -> list[Any]:
        """The fields ``names`` of each job's hash (``None`` where absent): one round trip."""
        async with self._conn.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self._keys.job_key(job_id), list(names))
            return list(await pipe.execute())
