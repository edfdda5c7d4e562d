"""A chat-completions job's log rendered as OpenAI renders its replies: the
``chat.completion.chunk`` objects of a stream, and the ``chat.completion`` of a reply
waited for. Pure: events in, JSON objects out.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_worker.jobs.model import Event, EventKind
from llm_worker.jobs.parts import ToolCallDelta


def completion_id(job_id: str) -> str:
    """The id of the completion a job answers with: each of its chunks has it."""
    return f"chatcmpl-{job_id}"


def done_summary(event: Event) -> dict[str, Any]:
    """What a ``done`` event says: message, usage, finish_reason (empty if nothing)."""
    summary = orjson.loads(event.message) if event.message else {}
    return summary if isinstance(summary, dict) else {}


def usage_of(summary: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's ``usage`` from a job's summary: its totals with their details (the
    per-stream figures left out); ``None`` when no model said its tokens."""
    usage = summary.get("usage")
    if not isinstance(usage, dict) or usage.get("prompt_tokens") is None:
        return None
    return {key: value for key, value in usage.items() if key != "streams"}


def finish_reason_of(summary: dict[str, Any]) -> str:
    """The summary's ``finish_reason``, ``stop`` where the model said none."""
    return summary.get("finish_reason") or "stop"


def response_message(summary: dict[str, Any]) -> dict[str, Any]:
    """The assistant message of a ``chat.completion``: done's message, with ``refusal``
    (``null`` when none) as OpenAI always has it, and the reasoning as
    ``reasoning_content`` (vLLM's and DeepSeek's name)."""
    message = dict(summary.get("message") or {"role": "assistant", "content": ""})
    message.pop("reasoning_details", None)
    reasoning = message.pop("reasoning", None)
    if reasoning:
        message["reasoning_content"] = reasoning
    message.setdefault("refusal", None)
    return message


def completion(job_id: str, model: str, created: int, summary: dict[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` of a job done with ``summary``."""
    body: dict[str, Any] = {
        "id": completion_id(job_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": response_message(summary),
                "finish_reason": finish_reason_of(summary),
                "logprobs": None,
            }
        ],
    }
    usage = usage_of(summary)
    if usage is not None:
        body["usage"] = usage
    return body


class ChunkRenderer:
    """Turns a job's log events into the ``chat.completion.chunk`` objects of its stream.

    :meth:`start` is the first chunk (the assistant's role); :meth:`chunks` the chunks of
    a batch of events, ending with the finish chunk and (asked ``include_usage``) the
    usage chunk once ``done`` comes. A ``failed`` or ``cancelled`` job, or a reset
    after output was sent (what was sent cannot be taken back), sets :attr:`error`
    instead and ends the stream.
    """

    __slots__ = ("_base", "_include_usage", "_sent_output", "error", "finished")

    def __init__(self, job_id: str, model: str, created: int, include_usage: bool) -> None:
        self._base: dict[str, Any] = {
            "id": completion_id(job_id),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        if include_usage:
            self._base["usage"] = None
        self._include_usage = include_usage
        self._sent_output = False
        self.finished = False
        self.error: tuple[str, str] | None = None
        """The message and code of the error that ended the stream, if one did."""

    def start(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": ""})

    def chunks(self, events: list[Event]) -> list[dict[str, Any]]:
        chunks = []
        for event in events:
            chunk = self._delta(event)
            if chunk is not None:
                chunks.append(chunk)
            elif event.kind.terminal or event.kind is EventKind.RESET:
                chunks.extend(self._end(event))
            if self.finished:
                break
        return chunks

    def _delta(self, event: Event) -> dict[str, Any] | None:
        kind = event.kind
        if kind is EventKind.RUNNING and event.message:
            delta: dict[str, Any] = {"content": event.message}
        elif kind is EventKind.TOOL_CALL:
            delta = {"tool_calls": [tool_call_chunk(ToolCallDelta.from_json(event.message))]}
        elif kind is EventKind.REFUSAL and event.message:
            delta = {"refusal": event.message}
        elif kind is EventKind.REASONING and event.message:
            delta = {"reasoning_content": event.message}
        else:
            return None
        self._sent_output = True
        return self._chunk(delta)

    def _end(self, event: Event) -> list[dict[str, Any]]:
        kind = event.kind
        if kind is EventKind.RESET:
            if self._sent_output:
                self._fail("the job restarted after part of its answer was sent", "job_reset")
            return []
        self.finished = True
        if kind is EventKind.FAILED:
            self._fail(event.message or "the job failed", "job_failed")
            return []
        if kind is EventKind.CANCELLED:
            self._fail("the job was cancelled", "job_cancelled")
            return []
        summary = done_summary(event)
        chunks = [self._chunk({}, finish_reason_of(summary))]
        if self._include_usage:
            chunks.append({**self._base, "choices": [], "usage": usage_of(summary)})
        return chunks

    def _fail(self, message: str, code: str) -> None:
        self.finished = True
        self.error = (message, code)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**self._base, "choices": [choice]}


def tool_call_chunk(fragment: ToolCallDelta) -> dict[str, Any]:
    """A tool call's fragment as a delta's ``tool_calls`` item: the first (with the
    call's id and name) says its ``type``, the others their arguments alone."""
    function: dict[str, Any] = {"arguments": fragment.arguments}
    item: dict[str, Any] = {"index": fragment.index}
    if fragment.id is not None:
        item["id"] = fragment.id
        item["type"] = "function"
    if fragment.name is not None:
        function["name"] = fragment.name
    item["function"] = function
    return item
