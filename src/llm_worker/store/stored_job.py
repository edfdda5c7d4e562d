"""A job as the in-process store holds it: its record, its request, its log."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from llm_worker.jobs.model import JobRecord
from llm_worker.store.eventlog import EventLog
from llm_worker.store.journal import Restored


class StoredJob:
    """A job as the store holds it: record, request, place in the queue, log."""

    __slots__ = (
        "cancel_callbacks",
        "end_tries",
        "ending",
        "log",
        "record",
        "reset_after",
        "saved",
        "spec",
        "ticket",
    )

    def __init__(self, record: JobRecord, spec: bytes | None, ticket: int) -> None:
        self.record = record
        self.spec = spec
        """What the client asked for, as JSON (compact while it waits); dropped once
        the job ended, to keep little, unless it asked to be kept (``keep_request``)."""
        self.ticket = ticket
        """Order of submission: the queue is sorted by it."""
        self.log = EventLog()
        self.cancel_callbacks: list[Callable[[], None]] = []
        self.saved = False
        """Whether the journal has the job at all (a new job is not queued before)."""
        self.ending: JobRecord | None = None
        """The record the job takes once its terminal event, written, is saved."""
        self.reset_after = 0
        """A re-run's ``reset`` takes a seq above this one (see :class:`.Restored`)."""
        self.end_tries = 0
        """How often the journal failed to save the end of the job, lost to it."""

    @classmethod
    def restored(cls, kept: Restored) -> StoredJob:
        """The job as the journal kept it: saved, its log shown."""
        job = cls(kept.record, kept.spec, kept.ticket)
        if not kept.record.state.finished and kept.spec and b'"run_at":null' not in kept.spec:
            # A scheduled job: its time is in its request (the journal keeps no more).
            kept.record.run_at = orjson.loads(kept.spec).get("run_at")
        job.saved = True
        job.reset_after = kept.reset_after
        for event in kept.events:
            job.log.add(event)
        job.log.show()
        return job
