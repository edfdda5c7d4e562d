"""A job's log as OpenAI's Responses stream events and Response object. Pure: no I/O.

:class:`ResponseLog` reads a job's log events one by one (from its first) and says
the Responses events they make, each numbered by ``sequence_number`` 0, 1, ...:
``response.created`` and ``response.in_progress`` first, then for each output item
(a reasoning summary, the message's text, each function call) its ``added``,
deltas and ``done`` events, then ``response.completed`` / ``incomplete`` /
``failed``. The numbering depends on the log alone, so a stream resumed with
``starting_after=N`` replays the log and sends what comes after N: the same
events, numbered the same. The Response object is what the events so far make
(:meth:`ResponseLog.response`).

A ``reset`` in the log (the job's next attempt starts over) ends the open items
with status ``incomplete``; the new attempt's items follow them, so indexes stay
those the client was sent.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_worker.jobs.model import Event, EventKind

# Why a job stopped, as a Response's status and incomplete_details.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class _Item:
    __slots__ = ("body", "call_index", "index", "pieces")

    def __init__(self, index: int, body: dict[str, Any], call_index: int | None = None) -> None:
        self.index = index
        self.body = body
        self.call_index = call_index
        self.pieces: list[str] = []


class ResponseLog:
    """The Responses events and Response object of one job's log."""

    def __init__(self, response_id: str, base: dict[str, Any], background: bool) -> None:
        self.id = response_id
        self._tag = response_id.removeprefix("resp_")
        self._base = base
        self._sequence = 0
        self._items: list[dict[str, Any]] = []
        self._open: _Item | None = None
        self.status = "queued" if background else "in_progress"
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self.message: dict[str, Any] | None = None
        self.ended = False

    # -- events -----------------------------------------------------------------

    def opening(self) -> list[dict[str, Any]]:
        """The events every stream starts with."""
        created = self._event("response.created", response=self.response())
        self.status = "in_progress"
        return [created, self._event("response.in_progress", response=self.response())]

    def feed(self, event: Event) -> list[dict[str, Any]]:
        """The Responses events ``event``, the next of the log, makes."""
        out: list[dict[str, Any]] = []
        kind = event.kind
        if kind is EventKind.RUNNING and event.message:
            self._text(out, event.message, "message")
        elif kind is EventKind.REASONING and event.message:
            self._text(out, event.message, "reasoning")
        elif kind is EventKind.REFUSAL and event.message:
            self._text(out, event.message, "refusal")
        elif kind is EventKind.TOOL_CALL:
            self._call(out, orjson.loads(event.message))
        elif kind is EventKind.RESET:
            self._close(out, "incomplete")
        elif kind.terminal:
            self._end(out, event)
        return out

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return event

    def _text(self, out: list[dict[str, Any]], delta: str, kind: str) -> None:
        item = self._open
        wanted = "reasoning" if kind == "reasoning" else "message"
        if (
            item is None
            or item.body["type"] != wanted
            or (wanted == "message" and item.body["content"][0]["type"] != _PART[kind])
        ):
            self._close(out, "completed")
            item = self._add(out, wanted, kind)
        item.pieces.append(delta)
        where = {"item_id": item.body["id"], "output_index": item.index}
        if kind == "reasoning":
            out.append(
                self._event(
                    "response.reasoning_summary_text.delta", **where, summary_index=0, delta=delta
                )
            )
        elif kind == "refusal":
            out.append(self._event("response.refusal.delta", **where, content_index=0, delta=delta))
        else:
            out.append(
                self._event(
                    "response.output_text.delta", **where, content_index=0, delta=delta, logprobs=[]
                )
            )

    def _add(self, out: list[dict[str, Any]], wanted: str, kind: str) -> _Item:
        index = len(self._items)
        item_id = f"{'rs' if wanted == 'reasoning' else 'msg'}_{self._tag}_{index}"
        if wanted == "reasoning":
            body: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
        else:
            body = {"id": item_id, "type": "message", "status": "in_progress"}
            body |= {"role": "assistant", "content": []}
        item = self._open = _Item(index, body)
        self._items.append(body)
        out.append(self._event("response.output_item.added", output_index=index, item=_copy(body)))
        where = {"item_id": item_id, "output_index": index}
        if wanted == "reasoning":
            part = {"type": "summary_text", "text": ""}
            body["summary"].append(part)
            added = self._event(
                "response.reasoning_summary_part.added", **where, summary_index=0, part=_copy(part)
            )
        else:
            part = _empty_part(kind)
            body["content"].append(part)
            added = self._event(
                "response.content_part.added", **where, content_index=0, part=_copy(part)
            )
        out.append(added)
        return item

    def _call(self, out: list[dict[str, Any]], fragment: dict[str, Any]) -> None:
        item = self._open
        if item is None or item.call_index != fragment["index"]:
            self._close(out, "completed")
            index = len(self._items)
            body = {
                "id": f"fc_{self._tag}_{index}",
                "type": "function_call",
                "status": "in_progress",
                "call_id": fragment.get("id") or "",
                "name": fragment.get("name") or "",
                "arguments": "",
            }
            item = self._open = _Item(index, body, fragment["index"])
            self._items.append(body)
            out.append(
                self._event("response.output_item.added", output_index=index, item=_copy(body))
            )
        delta = fragment.get("arguments", "")
        if delta:
            item.pieces.append(delta)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.body["id"],
                    output_index=item.index,
                    delta=delta,
                )
            )

    def _close(self, out: list[dict[str, Any]], status: str) -> None:
        """The open item's end: its whole text, then ``output_item.done``."""
        item, self._open = self._open, None
        if item is None:
            return
        body, text = item.body, "".join(item.pieces)
        where = {"item_id": body["id"], "output_index": item.index}
        if body["type"] == "function_call":
            body["arguments"] = text
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=body["name"],
                    arguments=text,
                )
            )
        elif body["type"] == "reasoning":
            part = body["summary"][0]
            part["text"] = text
            out.append(
                self._event(
                    "response.reasoning_summary_text.done", **where, summary_index=0, text=text
                )
            )
            out.append(
                self._event(
                    "response.reasoning_summary_part.done",
                    **where,
                    summary_index=0,
                    part=_copy(part),
                )
            )
        else:
            self._close_part(out, body["content"][0], text, where)
        if body["type"] != "reasoning":
            body["status"] = status
        out.append(
            self._event("response.output_item.done", output_index=item.index, item=_copy(body))
        )

    def _close_part(
        self, out: list[dict[str, Any]], part: dict[str, Any], text: str, where: dict[str, Any]
    ) -> None:
        if part["type"] == "refusal":
            part["refusal"] = text
            out.append(self._event("response.refusal.done", **where, content_index=0, refusal=text))
        else:
            part["text"] = text
            out.append(
                self._event(
                    "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
                )
            )
        out.append(
            self._event("response.content_part.done", **where, content_index=0, part=_copy(part))
        )

    def _end(self, out: list[dict[str, Any]], event: Event) -> None:
        self.ended = True
        if event.kind is EventKind.DONE:
            summary = orjson.loads(event.message) if event.message else {}
            summary = summary if isinstance(summary, dict) else {}
            reason = _INCOMPLETE.get(summary.get("finish_reason") or "")
            self._close(out, "incomplete" if reason else "completed")
            self.usage = usage_of(summary.get("usage"))
            self.message = summary.get("message")
            self.status = "incomplete" if reason else "completed"
            self.incomplete = {"reason": reason} if reason else None
            kind = f"response.{self.status}"
        elif event.kind is EventKind.FAILED:
            self._close(out, "incomplete")
            self.status = "failed"
            self.error = {"code": "server_error", "message": event.message or "the job failed"}
            kind = "response.failed"
        else:
            self._close(out, "incomplete")
            self.status = "cancelled"
            kind = "response.failed"  # the API has no event of its own for a cancel
        out.append(self._event(kind, response=self.response()))

    # -- the object ---------------------------------------------------------------

    def response(self) -> dict[str, Any]:
        """The Response object as the events so far make it."""
        response = {
            "id": self.id,
            "object": "response",
            **self._base,
            "status": self.status,
            "error": self.error,
            "incomplete_details": self.incomplete,
            "output": [_copy(item) for item in self._items],
        }
        if self.usage is not None:  # known once the job is done
            response["usage"] = self.usage
        return response


_PART = {"message": "output_text", "refusal": "refusal"}


def _empty_part(kind: str) -> dict[str, Any]:
    if kind == "refusal":
        return {"type": "refusal", "refusal": ""}
    return {"type": "output_text", "text": "", "annotations": [], "logprobs": []}


def _copy(body: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = orjson.loads(orjson.dumps(body))
    return copied


def usage_of(usage: Any) -> dict[str, Any] | None:
    """A job's usage (chat's names) as a Response's ``usage``."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", 0)
    completion = usage.get("completion_tokens", 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    cached = prompt_details.get("cached_tokens", 0)
    written = prompt_details.get("cache_write_tokens", 0)
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.get("total_tokens", prompt + completion),
    }
