"""What a job's events come to: the assistant message they put together as they are
read (:class:`Assembly`), and the job's :class:`Result` once it is done. Pure: no I/O.

The message is the one to append to the chat history for the next turn, the shape
the OpenAI chat-completions API takes back: ``role``, ``content`` (``None`` when the
answer is only tool calls), and ``tool_calls`` (each ``{"id", "type": "function",
"function": {"name", "arguments"}}``), ``refusal`` and ``reasoning`` when there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_worker.client.events import (
    Done,
    Event,
    Reasoning,
    Refusal,
    Reset,
    TextDelta,
    ToolCallDelta,
)
from llm_worker.jobs import parts


class Assembly:
    """The assistant message a job's events make, as far as they have been read.

    Text, reasoning, refusal and tool-call fragments are put together as they come,
    so the calls in progress can be read before the job ends; a :class:`Reset` voids
    them all. Once done, the message the service sent with ``done`` (``llm-worker.v3``)
    is the message: it is whole even for a consumer that came in after the first
    events. From an older service, it is the one put together.
    """

    __slots__ = ("_answer", "end")

    def __init__(self) -> None:
        self._answer = parts.Answer()
        self.end: Done | None = None

    def add(self, event: Event) -> None:
        """Take in the next event the consumer reads."""
        match event:
            case TextDelta(text=text):
                self._answer.add(text)
            case ToolCallDelta(index, call_id, name, arguments):
                self._answer.add(parts.ToolCallDelta(index, call_id, name, arguments))
            case Reasoning(text=text):
                self._answer.add(parts.Reasoning(text))
            case Refusal(text=text):
                self._answer.add(parts.Refusal(text))
            case Reset():
                self._answer = parts.Answer()
            case Done():
                self.end = event

    @property
    def text(self) -> str:
        """The text of the events read (of the last attempt)."""
        return self._answer.text

    def message(self) -> dict[str, Any]:
        """The assistant message: the service's once done, else the one put together."""
        if self.end is not None and self.end.message is not None:
            return self.end.message
        return self._answer.message()

    def result(self) -> Result:
        """The job's result; ``ValueError`` before its :class:`Done` was read."""
        end = self.end
        if end is None:
            raise ValueError("the job is not done")
        return Result(self.message(), end.usage, end.finish_reason, end.providers)


@dataclass(frozen=True, slots=True)
class Result:
    """A finished job: its assistant ``message`` (to append to the history as it is),
    and what its :class:`Done` said: ``usage``, ``finish_reason`` and ``providers``."""

    message: dict[str, Any]
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    providers: list[str | None] | None = None

    @property
    def text(self) -> str:
        """The answer's text (``""`` when it is only tool calls)."""
        return message_text(self.message)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls the model asks for, with their whole ``arguments`` (JSON text);
        ``[]`` when none."""
        return list(self.message.get("tool_calls") or [])


def message_text(message: dict[str, Any]) -> str:
    """The text ``content`` of an assistant message (``""`` for none)."""
    content = message.get("content")
    return content if isinstance(content, str) else ""
