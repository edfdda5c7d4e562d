"""The wire protocol without a network: parsing requests, rendering frames."""

from __future__ import annotations

import json

import pytest

from llm_worker.jobs.model import Event, EventKind, JobRecord, JobState
from llm_worker.wire import events as wire_events
from llm_worker.wire import protocol
from llm_worker.wire.protocol import (
    AddRequest,
    CancelRequest,
    ListenRequest,
    PingRequest,
    ProtocolError,
    StatusRequest,
    parse_request,
)

ASSISTANT = {"streams": [{"pipeline": "echo"}]}


def test_parses_every_request_type() -> None:
    add = parse_request(
        json.dumps({"type": "add", "id": "a", "query": "q", "assistant": ASSISTANT})
    )
    assert isinstance(add, AddRequest)
    assert add.history == []
    assert add.variables == {}
    assert isinstance(parse_request('{"type": "listen", "job_id": "j"}'), ListenRequest)
    assert parse_request('{"type": "listen", "job_id": "j", "after": 4}').after == 4  # type: ignore[union-attr]
    assert isinstance(parse_request('{"type": "cancel", "job_id": "j"}'), CancelRequest)
    assert isinstance(parse_request('{"type": "status", "job_id": "j"}'), StatusRequest)
    assert isinstance(parse_request('{"type": "ping"}'), PingRequest)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    request = parse_request('{"type": "listen", "job_id": "j", "client_version": 3}')
    assert request == ListenRequest(type="listen", job_id="j")


def test_variables_become_text() -> None:
    add = parse_request(
        json.dumps(
            {
                "type": "add",
                "query": "q",
                "assistant": ASSISTANT,
                "variables": {"s": "x", "i": 3, "f": 1.5, "t": True, "n": False},
            }
        )
    )
    assert isinstance(add, AddRequest)
    assert add.to_spec().variables == {"s": "x", "i": "3", "f": "1.5", "t": "true", "n": "false"}


@pytest.mark.parametrize("request_id", [True, 1.5, [1], {"a": 1}])
def test_request_ids_are_strings_or_integers(request_id: object) -> None:
    frame = json.dumps({"type": "ping", "id": request_id})
    with pytest.raises(ProtocolError, match="field 'id': must be a string or an integer"):
        parse_request(frame)


def test_errors_name_the_field_and_carry_the_reference() -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_request('{"type": "add", "id": 9, "query": "q", "assistant": {"streams": [{}]}}')
    assert raised.value.ref == 9
    assert raised.value.message == (
        "invalid 'add' request: missing field 'assistant.streams[0].provider'; "
        "missing field 'assistant.streams[0].messages'"
    )


def test_many_errors_are_summarised() -> None:
    with pytest.raises(ProtocolError, match="and 2 more"):
        parse_request(
            '{"type": "add", "query": 1, "assistant": 2, "history": 3, "variables": 4, "id": []}'
        )


def test_frames() -> None:
    assert json.loads(protocol.resp_add("x", "j")) == {"type": "resp_add", "id": "x", "job_id": "j"}
    assert json.loads(protocol.resp_add(None, "j")) == {
        "type": "resp_add",
        "id": None,
        "job_id": "j",
    }
    assert json.loads(wire_events.event("j", Event(3, EventKind.RUNNING, "hé"))) == {
        "type": "running",
        "job_id": "j",
        "message": "hé",
        "seq": 3,
    }
    assert json.loads(wire_events.event("j", Event(4, EventKind.DONE))) == {
        "type": "done",
        "job_id": "j",
        "seq": 4,
    }
    assert json.loads(wire_events.event("j", Event(4, EventKind.FAILED, "boom"))) == {
        "type": "failed",
        "job_id": "j",
        "message": "boom",
        "seq": 4,
    }
    assert json.loads(wire_events.event("j", Event(2, EventKind.CANCELLED))) == {
        "type": "cancelled",
        "job_id": "j",
        "seq": 2,
    }
    assert json.loads(protocol.pending("j", 2)) == {"type": "pending", "job_id": "j", "position": 2}
    assert json.loads(protocol.error("bad", "r")) == {"type": "error", "message": "bad", "ref": "r"}
    assert json.loads(protocol.error("bad")) == {"type": "error", "message": "bad"}
    failed = JobRecord("j", JobState.FAILED, 0.0, attempt=1, error="boom")
    assert json.loads(protocol.status(failed, None, "partial")) == {
        "type": "status",
        "job_id": "j",
        "state": "failed",
        "output": "partial",
        "error": "boom",
    }


def test_frames_keep_the_seed_key_order() -> None:
    frame = wire_events.event("j", Event(1, EventKind.RUNNING, ""))
    assert frame.startswith('{"type":"running","job_id":"j","message":""')


def test_a_notice_is_a_frame_of_its_own_with_its_seq() -> None:
    notice = Event(2, EventKind.NOTICE, "loading local model 'm'", 1)
    assert json.loads(wire_events.event("j", notice)) == {
        "type": "notice",
        "job_id": "j",
        "message": "loading local model 'm'",
        "seq": 2,
    }
    events = [
        Event(1, EventKind.RUNNING, ""),
        Event(2, EventKind.RUNNING, "a"),
        notice := Event(3, EventKind.NOTICE, "said between", 1),
        Event(4, EventKind.RUNNING, "b"),
        Event(5, EventKind.RUNNING, "c"),
    ]
    frames = [json.loads(f.text) for f in wire_events.event_frames("j", events)]
    assert [(f["type"], f["message"], f["seq"]) for f in frames] == [
        ("running", "", 1),
        ("running", "a", 2),
        ("notice", notice.message, 3),
        ("running", "bc", 5),
    ]


def test_event_frames_merge_consecutive_deltas_only() -> None:
    events = [
        Event(1, EventKind.RUNNING, ""),
        Event(2, EventKind.RUNNING, "Hel"),
        Event(3, EventKind.RUNNING, "lo"),
        Event(4, EventKind.RUNNING, " world"),
        Event(5, EventKind.DONE),
    ]
    frames = [json.loads(f.text) for f in wire_events.event_frames("j", events)]
    assert frames == [
        {"type": "running", "job_id": "j", "message": "", "seq": 1},
        {"type": "running", "job_id": "j", "message": "Hello world", "seq": 4},
        {"type": "done", "job_id": "j", "seq": 5},
    ]
    # A reset splits the text: what came before it is void, not to be merged.
    events = [
        Event(2, EventKind.RUNNING, "old"),
        Event(9, EventKind.RESET, attempt=2),
        Event(10, EventKind.RUNNING, "new"),
        Event(11, EventKind.RUNNING, "er"),
    ]
    frames = [json.loads(f.text) for f in wire_events.event_frames("j", events)]
    assert [(f["type"], f.get("message"), f["seq"]) for f in frames] == [
        ("running", "old", 2),
        ("reset", None, 9),
        ("running", "newer", 11),
    ]
    assert wire_events.event_frames("j", [Event(7, EventKind.RUNNING, "x")]) == [
        (wire_events.event("j", Event(7, EventKind.RUNNING, "x")), "running", 7)
    ]
