"""The events of a job as the client yields them, and the answer to ``status``; the
frames they come in decoded (:func:`decode_event`) and filtered to each once, in
order (:class:`EventFilter`). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Started:
    """An attempt at the job started (the empty ``running`` frame)."""

    seq: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Text of the job's answer. One frame may carry several consecutive pieces, with
    the ``seq`` of the last (a listener that fell behind catches up in fewer frames)."""

    text: str
    seq: int


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A delta of the model's reasoning (its thinking, shown apart from the answer).
    Sent only by a service that speaks ``llm-worker.v3``, as the other typed events."""

    text: str
    seq: int


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of the ``index``-th tool call of the answer (0, 1, ...): ``id`` and
    ``name`` in the fragment that starts the call (``None`` in the others), and a piece
    of its JSON ``arguments``, cut anywhere. :attr:`Job.tool_calls` puts them together."""

    index: int
    id: str | None
    name: str | None
    arguments: str
    seq: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """A delta of the model's refusal to answer (no answer, and why)."""

    text: str
    seq: int


@dataclass(frozen=True, slots=True)
class Pending:
    """The job waits in the queue; ``position`` 1 is next."""

    position: int


@dataclass(frozen=True, slots=True)
class Reset:
    """The job runs again from the start (its worker died): its text so far is void,
    and so are its reasoning, refusal and tool calls.

    :meth:`Job.text` and :attr:`Job.message` discard what they gathered; a consumer
    showing the answer should too.
    """

    attempt: int
    seq: int


@dataclass(frozen=True, slots=True)
class Done:
    """The job finished. ``usage``: the tokens its model calls took (``prompt_tokens``,
    ``completion_tokens``, ``total_tokens``, and per stream in ``streams``), ``None``
    where the models did not say; ``finish_reason``: why the answer ended;
    ``providers``: the provider that answered each stream (a fallback, perhaps);
    ``message``: the finished assistant message, ready to append to the history
    (``role``, ``content``, and ``tool_calls``, ``refusal``, ``reasoning`` when there
    are), from a service that speaks ``llm-worker.v3``, else ``None``."""

    seq: int
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    providers: list[str | None] | None = None
    message: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The job failed; ``message`` says why."""

    message: str
    seq: int


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The job was cancelled. ``seq`` is ``None`` when the service acknowledged a
    ``cancel`` on a connection that did not follow the job."""

    seq: int | None


@dataclass(frozen=True, slots=True)
class Notice:
    """A message from the service about the job that is no text of its answer.

    With a ``seq``, an event of the job's log (``notice``): why its listeners wait
    (its local model is loading, say), replayed to late listeners like the rest.
    Without, news of the service that changes nothing of the job (the job store is
    unreachable, say): events resume when the problem is over.
    """

    message: str
    seq: int | None = None


Event = (
    Started
    | TextDelta
    | Reasoning
    | ToolCallDelta
    | Refusal
    | Pending
    | Reset
    | Done
    | Failed
    | Cancelled
    | Notice
)
Terminal = Done | Failed | Cancelled
TERMINAL_TYPES = (Done, Failed, Cancelled)


@dataclass(frozen=True, slots=True)
class Status:
    """The service's answer to ``status``."""

    state: Literal["pending", "running", "done", "failed", "cancelled"]
    position: int | None
    """The place in the queue while pending, 1 being next."""
    output: str
    """The text of the current attempt so far."""
    error: str | None
    """Why the job failed, when it did."""
    usage: dict[str, Any] | None = None
    """When done: the tokens the job took (see :class:`Done`)."""
    finish_reason: str | None = None
    providers: list[str | None] | None = None
    message: dict[str, Any] | None = None
    """When done, from a service that speaks ``llm-worker.v3``: the finished assistant
    message (see :class:`Done`)."""


def decode_event(frame: Mapping[str, Any]) -> Event | None:
    """The event a server frame about a job carries; ``None`` for any other frame,
    a type from a newer service included (skipped, not an error).

    Raises ``KeyError``/``TypeError``/``ValueError`` for a frame missing a field its
    type requires.
    """
    kind = frame.get("type")
    if kind == "running":
        text = _text(frame)
        return TextDelta(text, int(frame["seq"])) if text else Started(int(frame["seq"]))
    if kind == "reasoning":
        return Reasoning(_text(frame), int(frame["seq"]))
    if kind == "tool_call":
        return ToolCallDelta(
            int(frame["index"]),
            _optional_text(frame, "id"),
            _optional_text(frame, "name"),
            str(frame.get("arguments", "")),
            int(frame["seq"]),
        )
    if kind == "refusal":
        return Refusal(_text(frame), int(frame["seq"]))
    if kind == "pending":
        return Pending(int(frame["position"]))
    if kind == "notice":
        return Notice(str(frame.get("message", "")), int(frame["seq"]))
    if kind == "reset":
        return Reset(int(frame["attempt"]), int(frame["seq"]))
    if kind == "done":
        return Done(
            int(frame["seq"]),
            frame.get("usage"),
            frame.get("finish_reason"),
            frame.get("providers"),
            _message(frame),
        )
    if kind == "failed":
        return Failed(str(frame.get("message", "")), int(frame["seq"]))
    if kind == "cancelled":
        seq = frame.get("seq")
        return Cancelled(None if seq is None else int(seq))
    return None


def _text(frame: Mapping[str, Any]) -> str:
    text = frame["message"]
    if not isinstance(text, str):
        raise TypeError("'message' is not a string")
    return text


def _optional_text(frame: Mapping[str, Any], name: str) -> str | None:
    value = frame.get(name)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name!r} is not a string")
    return value


def _message(frame: Mapping[str, Any]) -> dict[str, Any] | None:
    message = frame.get("message")
    if message is not None and not isinstance(message, dict):
        raise TypeError("'message' is not an object")
    return message


class EventFilter:
    """Lets through each event of one job once, in order, across reconnections.

    After a reconnection the service replays the job after the last ``seq``
    the client got; anything at or before it (a duplicate) is dropped. The end
    is let through once even when its ``seq`` is not past it: a ``listen`` with
    ``after`` at or past a finished job's end replays the end. Events without a
    ``seq`` (queue positions, the service's notices) carry no order and always
    pass, until the end.
    """

    __slots__ = ("ended", "last_seq")

    def __init__(self, after: int = 0) -> None:
        self.last_seq = after
        self.ended = False

    def admit(self, event: Event) -> bool:
        """Whether ``event`` is new: to pass on, and remembered as seen."""
        if self.ended:
            return False
        terminal = isinstance(event, TERMINAL_TYPES)
        seq = getattr(event, "seq", None)
        if seq is not None:
            if seq <= self.last_seq and not terminal:
                return False
            self.last_seq = max(self.last_seq, seq)
        self.ended = terminal
        return True


def decode_status(frame: Mapping[str, Any]) -> Status:
    """The :class:`Status` a ``status`` frame carries; ``KeyError`` without its state."""
    return Status(
        state=frame["state"],
        position=frame.get("position"),
        output=frame.get("output", ""),
        error=frame.get("error"),
        usage=frame.get("usage"),
        finish_reason=frame.get("finish_reason"),
        providers=frame.get("providers"),
        message=_message(frame),
    )
