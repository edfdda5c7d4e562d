"""A job's log as frames, typed (v3) and plain (seed, v2): what each listener is sent."""

from __future__ import annotations

import json

import orjson

from llm_worker.jobs.model import Event, EventKind
from llm_worker.jobs.parts import ToolCallDelta
from llm_worker.wire.events import MAX_FRAME_TEXT, event, event_frames, summary_of


def _fragment(seq: int, index: int, arguments: str, **named: str) -> Event:
    delta = ToolCallDelta(index, named.get("id"), named.get("name"), arguments)
    return Event(seq, EventKind.TOOL_CALL, delta.as_json(), 1)


SUMMARY = {
    "usage": {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
        "streams": [
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2},
            }
        ],
    },
    "finish_reason": "tool_calls",
    "providers": ["openai"],
    "message": {"role": "assistant", "content": None, "tool_calls": []},
}


def _agent_log() -> list[Event]:
    return [
        Event(1, EventKind.RUNNING, "", 1),
        Event(2, EventKind.REASONING, "Let me ", 1),
        Event(3, EventKind.REASONING, "think.", 1),
        Event(4, EventKind.RUNNING, "Checking ", 1),
        Event(5, EventKind.RUNNING, "both.", 1),
        _fragment(6, 0, '{"ci', id="call_a", name="weather"),
        _fragment(7, 0, 'ty": "Paris"}'),
        _fragment(8, 1, "", id="call_b", name="time"),
        _fragment(9, 1, '{"tz": "CET"}'),
        Event(10, EventKind.DONE, orjson.dumps(SUMMARY).decode(), 1),
    ]


def _bodies(frames: list) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(frame.text) for frame in frames]


def test_typed_frames_merge_deltas_of_one_kind_and_fragments_of_one_call() -> None:
    bodies = _bodies(event_frames("j", _agent_log(), typed=True))
    assert bodies[:5] == [
        {"type": "running", "job_id": "j", "message": "", "seq": 1},
        {"type": "reasoning", "job_id": "j", "message": "Let me think.", "seq": 3},
        {"type": "running", "job_id": "j", "message": "Checking both.", "seq": 5},
        {
            "type": "tool_call",
            "job_id": "j",
            "index": 0,
            "id": "call_a",
            "name": "weather",
            "arguments": '{"city": "Paris"}',
            "seq": 7,
        },
        {
            "type": "tool_call",
            "job_id": "j",
            "index": 1,
            "id": "call_b",
            "name": "time",
            "arguments": '{"tz": "CET"}',
            "seq": 9,
        },
    ]
    assert bodies[5] == {"type": "done", "job_id": "j", "seq": 10, **SUMMARY}


def test_plain_frames_show_the_text_alone_and_done_as_before() -> None:
    bodies = _bodies(event_frames("j", _agent_log(), typed=False))
    assert bodies == [
        {"type": "running", "job_id": "j", "message": "", "seq": 1},
        {"type": "running", "job_id": "j", "message": "Checking both.", "seq": 5},
        {
            "type": "done",
            "job_id": "j",
            "seq": 10,
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "total_tokens": 15,
                "streams": [{"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}],
            },
            "finish_reason": "tool_calls",
            "providers": ["openai"],
        },
    ]


def test_plain_text_merges_across_typed_parts_it_does_not_show() -> None:
    log = [
        Event(2, EventKind.RUNNING, "a", 1),
        Event(3, EventKind.REASONING, "hmm", 1),
        Event(4, EventKind.RUNNING, "b", 1),
    ]
    assert _bodies(event_frames("j", log, typed=False)) == [
        {"type": "running", "job_id": "j", "message": "ab", "seq": 4}
    ]
    assert event_frames("j", [Event(3, EventKind.REASONING, "hmm", 1)], typed=False) == []


def test_a_resumed_listener_gets_the_rest_of_a_call_without_its_name() -> None:
    """Resuming after seq 6 (mid-arguments): the rest of the arguments, exactly once."""
    rest = [event for event in _agent_log() if event.seq > 6][:1]
    assert _bodies(event_frames("j", rest)) == [
        {"type": "tool_call", "job_id": "j", "index": 0, "arguments": 'ty": "Paris"}', "seq": 7}
    ]


def test_fragments_of_different_calls_never_merge_and_the_size_is_bounded() -> None:
    half = "x" * (MAX_FRAME_TEXT // 2 + 1)
    log = [_fragment(2, 0, half, id="a", name="f"), _fragment(3, 0, half), _fragment(4, 1, "{}")]
    bodies = _bodies(event_frames("j", log))
    assert [(b["index"], b.get("id"), len(b["arguments"]), b["seq"]) for b in bodies] == [
        (0, "a", len(half), 2),
        (0, None, len(half), 3),
        (1, None, 2, 4),
    ]


def test_a_refusal_is_its_own_kind() -> None:
    log = [Event(2, EventKind.REFUSAL, "I can't ", 1), Event(3, EventKind.REFUSAL, "help.", 1)]
    assert _bodies(event_frames("j", log)) == [
        {"type": "refusal", "job_id": "j", "message": "I can't help.", "seq": 3}
    ]
    assert json.loads(event("j", log[0])) == {
        "type": "refusal",
        "job_id": "j",
        "message": "I can't ",
        "seq": 2,
    }


def test_a_text_only_done_is_byte_identical_in_plain_frames() -> None:
    """What the seed's and v2's clients got before typed parts existed."""
    before = {"usage": None, "finish_reason": "stop", "providers": ["echo"]}
    stored = dict(before, message={"role": "assistant", "content": "hi"})
    done = Event(4, EventKind.DONE, orjson.dumps(stored).decode(), 1)
    assert (
        event("j", done, typed=False)
        == orjson.dumps({"type": "done", "job_id": "j", "seq": 4} | before).decode()
    )
    assert summary_of(done, typed=True)["message"] == {"role": "assistant", "content": "hi"}
