"""A job's log as Responses events, without a network: numbered by the log alone, a
reset closing what the attempt before left open, each end its event."""

from __future__ import annotations

import orjson

from llm_worker.jobs.model import Event, EventKind
from llm_worker.jobs.parts import ToolCallDelta
from llm_worker.wire.openai.responses_events import ResponseLog

LOG = [
    Event(1, EventKind.RUNNING, "", 1),
    Event(2, EventKind.RUNNING, "Hel", 1),
    Event(3, EventKind.RESET, "", 2),
    Event(4, EventKind.RUNNING, "Hello", 2),
    Event(5, EventKind.TOOL_CALL, ToolCallDelta(0, "c1", "f", '{"a"').as_json(), 2),
    Event(6, EventKind.TOOL_CALL, ToolCallDelta(0, arguments=": 1}").as_json(), 2),
]


def events_of(log: list[Event]) -> tuple[ResponseLog, list[dict]]:
    response = ResponseLog("resp_j", {"model": "m"}, background=False)
    out = response.opening()
    for event in log:
        out += response.feed(event)
    return response, out


def test_the_numbering_depends_on_the_log_alone() -> None:
    _, first = events_of(LOG)
    _, again = events_of(LOG)
    assert first == again
    assert [e["sequence_number"] for e in first] == list(range(len(first)))


def test_a_reset_leaves_the_voided_item_incomplete_and_the_next_one_follows() -> None:
    done = Event(7, EventKind.DONE, orjson.dumps({"finish_reason": "tool_calls"}).decode(), 2)
    response, events = events_of([*LOG, done])
    output = response.response()["output"]
    assert [(item["type"], item["status"]) for item in output] == [
        ("message", "incomplete"),
        ("message", "completed"),
        ("function_call", "completed"),
    ]
    assert output[1]["content"][0]["text"] == "Hello"
    assert output[2]["arguments"] == '{"a": 1}'
    assert events[-1]["type"] == "response.completed"


def test_a_failure_and_a_cancel_end_the_stream() -> None:
    response, events = events_of([*LOG[:2], Event(3, EventKind.FAILED, "upstream down", 1)])
    assert events[-1]["type"] == "response.failed"
    assert response.response()["error"] == {"code": "server_error", "message": "upstream down"}
    response, events = events_of([*LOG[:2], Event(3, EventKind.CANCELLED, "", 1)])
    assert events[-1]["response"]["status"] == "cancelled"
