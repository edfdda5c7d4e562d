"""Jobs: their states, what a client asked for, and the events of their log.

A job is born ``pending``, becomes ``running`` when a worker claims it and ends
``done``, ``failed`` or ``cancelled``. Everything a listener sees of a running
job is an :class:`Event` in the job's log, numbered ``seq`` = 1, 2, ...; the
log is what late listeners replay and what reconnecting listeners resume from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import Assistant


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_STATES


_FINISHED_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


class EventKind(enum.StrEnum):
    """The kinds of event in a job's log; each is also the ``type`` of its wire frame."""

    RUNNING = "running"
    """The job started (empty message) or produced a delta of text."""
    REASONING = "reasoning"
    """A delta of the model's reasoning (its message)."""
    TOOL_CALL = "tool_call"
    """A fragment of a tool call the model makes: its message is the
    :class:`~llm_worker.jobs.parts.ToolCallDelta` as JSON."""
    REFUSAL = "refusal"
    """A delta of the model's refusal to answer (its message)."""
    RESET = "reset"
    """A new attempt starts from scratch: what earlier attempts produced is void."""
    NOTICE = "notice"
    """A message to the listeners about the job that is no text of its answer (the
    local model it waits for is loading, say)."""
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _STATE_AFTER

    @property
    def final_state(self) -> JobState:
        """The state a job is in once this terminal event is in its log."""
        return _STATE_AFTER[self]


_STATE_AFTER = {
    EventKind.DONE: JobState.DONE,
    EventKind.FAILED: JobState.FAILED,
    EventKind.CANCELLED: JobState.CANCELLED,
}


def stored_kind(value: str) -> EventKind | None:
    """The kind a store wrote as ``value``; ``None`` for one this version does not know.

    Readers skip such events rather than fail: a kind added later then rolls out one
    process at a time, older processes leaving out what they cannot show.
    """
    return _KINDS.get(value)


_KINDS = {kind.value: kind for kind in EventKind}


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a job's log.

    ``message`` is the text delta of a ``running``, ``reasoning`` or ``refusal``
    event, the fragment of a ``tool_call`` (JSON), the reason of a ``failed`` one,
    the words of a ``notice`` and the summary of a ``done`` (JSON); it is empty
    otherwise.
    ``attempt`` is the attempt that wrote it (0 for a job cancelled before it
    ever ran).
    """

    seq: int
    kind: EventKind
    message: str = ""
    attempt: int = 0


def output_of(events: list[Event]) -> str:
    """The text a job has produced, given its log (or the start of it)."""
    return "".join(e.message for e in events if e.kind is EventKind.RUNNING)


class JobSpec(BaseModel):
    """What a client asked for: everything a worker needs to run the job.

    Validated when the job is added, before it exists; it is plain data, so a
    durable store can keep it as JSON.
    """

    model_config = ConfigDict(frozen=True)

    assistant: Assistant
    query: str
    history: list[ChatMessage] = Field(default_factory=list)
    variables: dict[str, str] = Field(default_factory=dict)
    run_at: float | None = None
    """When the job may start (``time.time()``'s), ``None`` at once: it is scheduled
    until then (:mod:`.schedule`)."""
    keep_request: bool = False
    """Keep this request with the job's record for its TTL (:meth:`JobStore.request`),
    not only until it ends: for a door that serves it back later (the Responses API's
    input items and ``previous_response_id``). The last field, so that
    :func:`keeps_request` reads it off the JSON's end."""


@dataclass(slots=True)
class JobRecord:
    """What the store knows of a job besides its log."""

    id: str
    state: JobState
    created_at: float
    attempt: int = 0
    """How many times a worker has claimed the job; 0 while it has never run."""
    error: str | None = None
    finished_at: float | None = None
    tenant: str = ""
    """Whose job it is: only that tenant's connections can see it ("" without keys)."""
    run_at: float | None = None
    """When the job may start, if it was scheduled (its request's ``run_at``)."""

    def shown_state(self, now: float) -> str:
        """The state a client is shown: ``scheduled`` for a waiting job not yet due."""
        if self.state is JobState.PENDING and self.run_at is not None and self.run_at > now:
            return "scheduled"
        return self.state.value


def has_text(events: list[Event]) -> bool:
    """Whether some of ``events`` carry output of the answer: its text, or a typed part."""
    return any(
        (event.kind is EventKind.RUNNING and event.message) or event.kind in OUTPUT_PARTS
        for event in events
    )


OUTPUT_PARTS = frozenset({EventKind.REASONING, EventKind.TOOL_CALL, EventKind.REFUSAL})
"""The kinds of event that carry a typed part of the reply (not its text)."""


def spec_json(spec: JobSpec) -> bytes:
    """The request as it is kept while it waits: compact JSON, a tenth of its objects' size."""
    try:
        return spec.__pydantic_serializer__.to_json(spec)
    except (ValueError, RecursionError) as exc:  # pydantic's serialization errors included
        raise ValueError(f"the job cannot be stored: {exc}") from None


_KEEPS_REQUEST = b',"keep_request":true}'


def keeps_request(text: bytes) -> bool:
    """Whether a request as :func:`spec_json` wrote it asked to be kept
    (``keep_request``): its last field, read without parsing the rest."""
    return text.endswith(_KEEPS_REQUEST)


@dataclass(frozen=True, slots=True)
class Claim:
    """A job handed to a worker: only events written under this attempt count."""

    job_id: str
    attempt: int
    spec: JobSpec
    tenant: str = ""
    created_at: float = 0.0
    """When the job was added (``time.time()``), for the time it waited."""
