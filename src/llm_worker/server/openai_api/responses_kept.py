"""What the Responses door keeps of each response beside its job.

The store keeps a job's log, not its request once it ended; a Response's
request-side fields (model as asked, instructions, tools...), its input items and
the chat history its job ran on are kept here, in this process, for the newest
``MAX_KEPT`` responses. A response created by another process, or before a
restart, is still served from its job's log (its status, output and usage), with
those fields empty; its input items and ``previous_response_id`` need this record.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

MAX_KEPT = 10_000


@dataclass
class KeptResponse:
    base: dict[str, Any]
    """The Response's fields that come from its request."""
    background: bool
    items: list[dict[str, Any]]
    """The input, as items."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The chat messages its job ran on (for a next turn's ``previous_response_id``)."""


class KeptResponses:
    """The newest responses' records, and the ids of those deleted."""

    def __init__(self, limit: int = MAX_KEPT) -> None:
        self._limit = limit
        self._kept: OrderedDict[str, KeptResponse] = OrderedDict()
        self._deleted: OrderedDict[str, None] = OrderedDict()

    def add(self, job_id: str, kept: KeptResponse) -> None:
        self._kept[job_id] = kept
        if len(self._kept) > self._limit:
            self._kept.popitem(last=False)

    def get(self, job_id: str) -> KeptResponse | None:
        return self._kept.get(job_id)

    def delete(self, job_id: str) -> None:
        self._kept.pop(job_id, None)
        self._deleted[job_id] = None
        if len(self._deleted) > self._limit:
            self._deleted.popitem(last=False)

    def deleted(self, job_id: str) -> bool:
        return job_id in self._deleted
