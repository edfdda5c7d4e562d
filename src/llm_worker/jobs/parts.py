"""What a model call yields besides its text, and the assistant message it all makes.

A provider yields its reply as parts (:mod:`llm_worker.providers.base`): text as
plain ``str`` (the common part, kept cheap), and these typed ones:

* :class:`Reasoning`: a delta of the model's thinking; for Anthropic, the block's
  ``signature`` (which the next turn must send back) or a redacted block's data;
* :class:`ToolCallDelta`: a fragment of the ``index``-th tool call: the first one
  carries its ``id`` and ``name``, each one a piece of its JSON ``arguments``;
* :class:`Refusal`: a delta of the model's refusal to answer.

:class:`Answer` puts a reply's parts together into the message a client appends to
its history for the next turn (:meth:`Answer.message`), the shape the OpenAI
chat-completions API takes back, with ``reasoning`` beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A delta of the model's reasoning (``text``); or, with no text, the end of a
    reasoning block: its ``signature``, or the data of a block the provider redacted."""

    text: str = ""
    signature: str | None = None
    redacted: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of the tool call ``index`` (0, 1, ... in the reply): ``id`` and
    ``name`` where this fragment says them (the first does), and a piece of its
    ``arguments``, JSON text cut anywhere."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def as_json(self) -> str:
        """The fragment as a job's log keeps it: compact JSON, absent fields left out."""
        body: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            body["id"] = self.id
        if self.name is not None:
            body["name"] = self.name
        body["arguments"] = self.arguments
        return orjson.dumps(body).decode()

    @classmethod
    def from_json(cls, text: str) -> ToolCallDelta:
        body = orjson.loads(text)
        return cls(body["index"], body.get("id"), body.get("name"), body.get("arguments", ""))


@dataclass(frozen=True, slots=True)
class Refusal:
    """A delta of the model's refusal (OpenAI's ``refusal``): no answer, and why."""

    text: str


Part = str | Reasoning | ToolCallDelta | Refusal
"""What a model call yields of its reply: text, or one of the typed parts."""


class _ToolCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class Answer:
    """One reply's parts, put together into the assistant message they make."""

    __slots__ = ("_details", "_reasoning", "_refusal", "_text", "_thinking", "_tool_calls")

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._thinking: list[str] = []
        """The reasoning block being read, for :attr:`_details` when it ends signed."""
        self._details: list[dict[str, str]] = []
        self._refusal: list[str] = []
        self._tool_calls: dict[int, _ToolCall] = {}

    def add(self, part: Part) -> None:
        if type(part) is str:
            self._text.append(part)
        elif type(part) is Reasoning:
            self._add_reasoning(part)
        elif type(part) is ToolCallDelta:
            call = self._tool_calls.get(part.index)
            if call is None:
                call = self._tool_calls[part.index] = _ToolCall()
            if part.id:
                call.id = part.id
            if part.name:
                call.name = part.name
            if part.arguments:
                call.arguments.append(part.arguments)
        elif type(part) is Refusal:
            self._refusal.append(part.text)

    def _add_reasoning(self, part: Reasoning) -> None:
        if part.text:
            self._reasoning.append(part.text)
            self._thinking.append(part.text)
        if part.signature is not None:
            thinking = "".join(self._thinking)
            self._details.append(
                {"type": "thinking", "thinking": thinking, "signature": part.signature}
            )
            self._thinking = []
        if part.redacted is not None:
            self._details.append({"type": "redacted_thinking", "data": part.redacted})

    @property
    def text(self) -> str:
        return "".join(self._text)

    def message(self) -> dict[str, Any]:
        """The assistant message, ready to append to the chat history: ``content`` (``null``
        when the reply is only tool calls), ``tool_calls`` with their whole arguments,
        ``refusal``, ``reasoning`` and, where the provider signed its reasoning blocks,
        ``reasoning_details`` (to be sent back as they are); each only when there is one."""
        text = "".join(self._text)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self._tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
                for _, call in sorted(self._tool_calls.items())
            ]
            if not text:
                message["content"] = None
        if self._refusal:
            message["refusal"] = "".join(self._refusal)
        if self._reasoning:
            message["reasoning"] = "".join(self._reasoning)
        if self._details:
            message["reasoning_details"] = list(self._details)
        return message
