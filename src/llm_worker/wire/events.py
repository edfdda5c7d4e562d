"""A job's log events as the frames listeners are sent. No I/O here.

Each event of the log is a frame of its kind's ``type`` (``running``, ``reasoning``,
``tool_call``, ``refusal``, ``notice``, ``reset``, ``done``, ``failed``,
``cancelled``), with the event's ``seq``. Frames come *typed* or *plain*: typed
frames (the ``llm-worker.v3`` protocol, ``events=typed`` over HTTP) carry the
reply's typed parts, and a ``done`` with the finished message and the usage's
details; plain frames (the seed's and ``llm-worker.v2``) are exactly what those
protocols always sent: the reply's text, and a ``done`` with the usage alone.

A listener that fell behind catches up in fewer, larger frames: consecutive deltas
of one kind (and, for tool calls, of one call) merge into one frame, with the last
one's ``seq``, so clients that concatenate the deltas and clients that resume with
``after`` see no difference.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from llm_worker.jobs.model import OUTPUT_PARTS, Event, EventKind


class Frame(NamedTuple):
    """A frame as sent, with what a transport needs of it without parsing it: its
    ``type``, and the ``seq`` of the log event it carries (``None`` for others)."""

    text: str
    type: str
    seq: int | None = None


# The most deltas merged into one frame carry, in characters (one longer is sent alone).
MAX_FRAME_TEXT = 32_768

_MESSAGE_KINDS = frozenset(
    {
        EventKind.RUNNING,
        EventKind.REASONING,
        EventKind.REFUSAL,
        EventKind.FAILED,
        EventKind.NOTICE,
    }
)

# What only typed frames carry of a ``done`` and a ``status``.
_TYPED_ONLY = ("message",)
_USAGE_DETAILS = ("prompt_tokens_details", "completion_tokens_details")


def _frame(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


def event(job_id: str, event: Event, typed: bool = True) -> str:
    """The frame of one log event, typed or plain."""
    kind = event.kind
    if kind in _MESSAGE_KINDS:
        return _frame(
            {"type": kind.value, "job_id": job_id, "message": event.message, "seq": event.seq}
        )
    if kind is EventKind.TOOL_CALL:
        fragment = orjson.loads(event.message)
        return _tool_call(job_id, fragment, event.seq).text
    if kind is EventKind.RESET:
        return _frame(
            {"type": "reset", "job_id": job_id, "attempt": event.attempt, "seq": event.seq}
        )
    if kind is EventKind.DONE and event.message:
        summary = summary_of(event, typed)
        return _frame({"type": "done", "job_id": job_id, "seq": event.seq} | summary)
    return _frame({"type": kind.value, "job_id": job_id, "seq": event.seq})


def summary_of(event: Event, typed: bool = True) -> dict[str, Any]:
    """What a ``done`` event says of the job: ``usage``, ``finish_reason``, ``providers``
    and, typed, the finished ``message`` (plain: without it and the usage's details)."""
    if event.kind is not EventKind.DONE or not event.message:
        return {}
    summary = orjson.loads(event.message)
    if not isinstance(summary, dict):
        return {}
    return summary if typed else plain_summary(summary)


def plain_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` as plain frames show it: what the seed's and v2's ``done`` carried."""
    for key in _TYPED_ONLY:
        summary.pop(key, None)
    usage = summary.get("usage")
    if isinstance(usage, dict):
        for tokens in [usage, *(usage.get("streams") or ())]:
            if isinstance(tokens, dict):
                for key in _USAGE_DETAILS:
                    tokens.pop(key, None)
    return summary


def event_frames(job_id: str, events: list[Event], typed: bool = True) -> list[Frame]:
    """Frames for events a listener has yet to get, consecutive deltas merged.

    Deltas of one kind merge (text with text, reasoning with reasoning, fragments
    of one tool call), up to :data:`MAX_FRAME_TEXT` characters a frame; the empty
    ``running`` that marks the start of a job and each ``notice`` stay frames of
    their own, between the deltas before and after them. Plain frames leave the
    typed parts out.
    """
    if len(events) == 1:
        only = events[0]
        if not typed and only.kind in OUTPUT_PARTS:
            return []
        return [Frame(event(job_id, only, typed), only.kind.value, only.seq)]
    frames: list[Frame] = []
    # Text, by far the most common, is merged here; the typed parts by a _Merging.
    text: list[str] = []
    size = 0
    last_seq = 0
    merging: _Merging | None = None
    for item in events:
        kind = item.kind
        if kind is EventKind.RUNNING and item.message:
            if merging is not None:
                merging.flush()
            if text and size + len(item.message) > MAX_FRAME_TEXT:
                frames.append(_running(job_id, "".join(text), last_seq))
                text, size = [], 0
            text.append(item.message)
            size += len(item.message)
            last_seq = item.seq
            continue
        if kind in OUTPUT_PARTS:
            if not typed:
                continue
            if text:
                frames.append(_running(job_id, "".join(text), last_seq))
                text, size = [], 0
            if merging is None:
                merging = _Merging(job_id, frames)
            if kind is EventKind.TOOL_CALL:
                merging.fragment(orjson.loads(item.message), item.seq)
            elif item.message:
                merging.delta(kind, item.message, item.seq)
            continue
        if text:
            frames.append(_running(job_id, "".join(text), last_seq))
            text, size = [], 0
        if merging is not None:
            merging.flush()
        frames.append(Frame(event(job_id, item, typed), kind.value, item.seq))
    if text:
        frames.append(_running(job_id, "".join(text), last_seq))
    if merging is not None:
        merging.flush()
    return frames


def _running(job_id: str, message: str, seq: int) -> Frame:
    text = _frame({"type": "running", "job_id": job_id, "message": message, "seq": seq})
    return Frame(text, "running", seq)


class _Merging:
    """The deltas being merged into the next frame: of one kind, or one tool call."""

    __slots__ = ("call", "frames", "job_id", "kind", "pieces", "seq", "size")

    def __init__(self, job_id: str, frames: list[Frame]) -> None:
        self.job_id = job_id
        self.frames = frames
        self.kind: EventKind | None = None
        self.call: dict[str, Any] | None = None
        self.pieces: list[str] = []
        self.size = 0
        self.seq = 0

    def delta(self, kind: EventKind, text: str, seq: int) -> None:
        if self.kind is not kind or self.size + len(text) > MAX_FRAME_TEXT:
            self.flush()
            self.kind = kind
        self.pieces.append(text)
        self.size += len(text)
        self.seq = seq

    def fragment(self, fragment: dict[str, Any], seq: int) -> None:
        arguments = fragment.get("arguments", "")
        call = self.call
        if (
            self.kind is not EventKind.TOOL_CALL
            or call is None
            or call.get("index") != fragment.get("index")
            or self.size + len(arguments) > MAX_FRAME_TEXT
        ):
            self.flush()
            self.kind = EventKind.TOOL_CALL
            self.call = call = {key: value for key, value in fragment.items() if key != "arguments"}
        else:
            for key in ("id", "name"):
                if key in fragment and key not in call:
                    call[key] = fragment[key]
        self.pieces.append(arguments)
        self.size += len(arguments)
        self.seq = seq

    def flush(self) -> None:
        kind = self.kind
        if kind is None:
            return
        text = "".join(self.pieces)
        if kind is EventKind.TOOL_CALL:
            assert self.call is not None
            self.frames.append(_tool_call(self.job_id, self.call | {"arguments": text}, self.seq))
        else:
            body = {"type": kind.value, "job_id": self.job_id, "message": text, "seq": self.seq}
            self.frames.append(Frame(_frame(body), kind.value, self.seq))
        self.kind = self.call = None
        self.pieces = []
        self.size = 0


def _tool_call(job_id: str, fragment: dict[str, Any], seq: int) -> Frame:
    body: dict[str, Any] = {"type": "tool_call", "job_id": job_id, "index": fragment["index"]}
    for key in ("id", "name"):
        if key in fragment:
            body[key] = fragment[key]
    body["arguments"] = fragment.get("arguments", "")
    body["seq"] = seq
    return Frame(_frame(body), "tool_call", seq)
