"""Typed events in the client with no network: ``llm-worker.v3`` frames fed to a
session, the events and the assistant message it gives back asserted; and how the
command line prints them. Against a real worker: tests/client/test_agent_loop.py."""

from __future__ import annotations

import io
import json
from typing import Any

import orjson
import pytest

from llm_worker.client import (
    Done,
    Reasoning,
    Refusal,
    Reset,
    Result,
    Session,
    Started,
    Status,
    TextDelta,
    ToolCallDelta,
    decode_event,
)
from llm_worker.client.commands import EventPrinter, event_record
from llm_worker.client.session import SUBPROTOCOLS, Follow

WEATHER = '{"city": "Paris", "unit": "celsius"}'
TIME = '{"timezone": "Europe/Paris"}'


def frame(**body: Any) -> bytes:
    return orjson.dumps(body)


def sent(session: Session) -> list[dict[str, Any]]:
    return [orjson.loads(f) for f in session.frames_to_send()]


def read(session: Session, follow: Follow) -> list[Any]:
    taken = []
    while (item := session.take(follow)) is not None:
        taken.append(item)
    return taken


def tool_call(seq: int, index: int, arguments: str, **start: str) -> bytes:
    return frame(type="tool_call", job_id="j1", index=index, **start, arguments=arguments, seq=seq)


def cuts(text: str, every: int) -> list[str]:
    return [text[i : i + every] for i in range(0, len(text), every)]


def two_calls_split(every: int, first_seq: int = 2) -> list[bytes]:
    """Two parallel calls, their fragments interleaved, their arguments cut every
    ``every`` characters (the first fragment of each carrying its id and name)."""
    frames = []
    seq = first_seq
    weather, time = cuts(WEATHER, every), cuts(TIME, every)
    for i in range(max(len(weather), len(time))):
        for index, pieces, call_id, name in [
            (0, weather, "call_a", "get_weather"),
            (1, time, "call_b", "get_time"),
        ]:
            if i < len(pieces):
                start = {"id": call_id, "name": name} if i == 0 else {}
                frames.append(tool_call(seq, index, pieces[i], **start))
                seq += 1
    return frames


FINISHED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": WEATHER}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": TIME}},
    ],
}  # fmt: skip


def following(after: int = 0) -> tuple[Session, Follow]:
    session = Session()
    session.connected()
    follow = session.follow("j1", after)
    sent(session)
    return session, follow


def feed(session: Session, frames: list[bytes]) -> None:
    for raw in frames:
        session.receive(raw)


def test_the_client_offers_v3_first_then_v2() -> None:
    assert SUBPROTOCOLS == ("llm-worker.v3", "llm-worker.v2")


def test_typed_frames_decode_to_typed_events() -> None:
    job = {"job_id": "j1"}
    assert decode_event({**job, "type": "reasoning", "message": "Hmm", "seq": 2}) == Reasoning(
        "Hmm", 2
    )
    first = {**job, "type": "tool_call", "index": 0, "id": "c", "name": "f", "arguments": "{"}
    assert decode_event({**first, "seq": 3}) == ToolCallDelta(0, "c", "f", "{", 3)
    more = {**job, "type": "tool_call", "index": 0, "arguments": "}", "seq": 4}
    assert decode_event(more) == ToolCallDelta(0, None, None, "}", 4)
    assert decode_event({**job, "type": "refusal", "message": "No.", "seq": 5}) == Refusal("No.", 5)
    done = {**job, "type": "done", "seq": 6, "message": FINISHED}
    assert decode_event(done) == Done(6, message=FINISHED)
    with pytest.raises(TypeError):
        decode_event({**job, "type": "done", "seq": 6, "message": "not an object"})
    with pytest.raises(KeyError):
        decode_event({**job, "type": "tool_call", "arguments": "{", "seq": 7})


@pytest.mark.parametrize("every", [1, 2, 5, 100])
def test_tool_calls_split_anywhere_come_together_as_they_are_read(every: int) -> None:
    session, follow = following()
    session.receive(frame(type="running", job_id="j1", message="", seq=1))
    feed(session, two_calls_split(every))
    events = read(session, follow)
    assert events[0] == Started(1)
    assert all(isinstance(e, ToolCallDelta) for e in events[1:])
    assert follow.assembly.message() == FINISHED  # put together before any done
    last = events[-1].seq
    session.receive(frame(type="done", job_id="j1", seq=last + 1, finish_reason="tool_calls"))
    (done,) = read(session, follow)
    assert done.message is None  # this service sent none: the one put together stands
    assert follow.assembly.result() == Result(FINISHED, finish_reason="tool_calls")


def test_the_calls_in_progress_can_be_read() -> None:
    session, follow = following()
    feed(session, [tool_call(1, 0, '{"ci', id="call_a", name="get_weather")])
    read(session, follow)
    (call,) = follow.assembly.message()["tool_calls"]
    assert call == {"id": "call_a", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"ci'}}  # fmt: skip
    feed(session, [tool_call(2, 0, 'ty": "Paris"}')])
    assert follow.assembly.message()["tool_calls"][0]["function"]["arguments"] == '{"ci'
    read(session, follow)  # what the consumer has read, not what waits
    (call,) = follow.assembly.message()["tool_calls"]
    assert call["function"]["arguments"] == '{"city": "Paris"}'


def test_reasoning_text_and_refusal_go_into_the_message() -> None:
    session, follow = following()
    feed(
        session,
        [
            frame(type="reasoning", job_id="j1", message="The user wants ", seq=1),
            frame(type="reasoning", job_id="j1", message="a poem.", seq=2),
            frame(type="running", job_id="j1", message="I can", seq=3),
            frame(type="refusal", job_id="j1", message="I won't.", seq=4),
            frame(type="running", job_id="j1", message="not.", seq=5),
        ],
    )
    assert [type(e) for e in read(session, follow)] == [
        Reasoning, Reasoning, TextDelta, Refusal, TextDelta,
    ]  # fmt: skip
    assert follow.assembly.message() == {
        "role": "assistant",
        "content": "I cannot.",
        "refusal": "I won't.",
        "reasoning": "The user wants a poem.",
    }


def test_the_message_done_carries_is_the_message() -> None:
    """Followed from inside the arguments, the calls put together are partial; the
    service's message with ``done`` is whole, and is the message."""
    session, follow = following(after=3)
    feed(session, [tool_call(4, 0, 'celsius"}')])
    read(session, follow)
    assert follow.assembly.message()["tool_calls"][0]["function"]["arguments"] == 'celsius"}'
    usage = {"total_tokens": 9}
    session.receive(frame(type="done", job_id="j1", seq=5, message=FINISHED, usage=usage))
    assert read(session, follow) == [Done(5, usage, message=FINISHED)]
    assert follow.assembly.message() == FINISHED
    assert follow.assembly.result().tool_calls == FINISHED["tool_calls"]


def test_a_reset_voids_the_partial_calls_reasoning_and_text() -> None:
    session, follow = following()
    feed(
        session,
        [
            frame(type="reasoning", job_id="j1", message="first thoughts", seq=1),
            frame(type="running", job_id="j1", message="first text", seq=2),
            tool_call(3, 0, '{"city": "Ly', id="call_x", name="get_weather"),
            tool_call(4, 1, '{"tim', id="call_y", name="get_time"),
            frame(type="reset", job_id="j1", attempt=2, seq=5),
            *two_calls_split(3, first_seq=6),
        ],
    )
    events = read(session, follow)
    assert Reset(2, 5) in events
    assert follow.assembly.message() == FINISHED
    assert follow.assembly.text == ""


def test_a_resume_in_the_middle_of_the_arguments_gives_them_once() -> None:
    session, follow = following()
    frames = two_calls_split(2)
    middle = len(frames) // 2 + 1  # inside both calls' arguments
    feed(session, frames[:middle])
    read(session, follow)
    session.dropped()
    session.connected()
    last = orjson.loads(frames[middle - 1])["seq"]
    assert sent(session) == [{"type": "listen", "job_id": "j1", "after": last}]
    # The service replays after that seq; a replay overlapping it repeats nothing.
    feed(session, frames[middle - 3 :])
    read(session, follow)
    assert follow.assembly.message() == FINISHED


def test_a_v2_service_sends_no_typed_events_and_the_message_is_the_text() -> None:
    session, follow = following()
    feed(
        session,
        [
            frame(type="running", job_id="j1", message="", seq=1),
            frame(type="running", job_id="j1", message="Bonjour", seq=2),
            frame(type="done", job_id="j1", seq=3, finish_reason="stop"),
        ],
    )
    events = read(session, follow)
    assert not any(isinstance(e, Reasoning | ToolCallDelta | Refusal) for e in events)
    assert events[-1] == Done(3, finish_reason="stop")
    result = follow.assembly.result()
    assert result.message == {"role": "assistant", "content": "Bonjour"}
    assert (result.text, result.tool_calls) == ("Bonjour", [])


def test_frames_of_unknown_types_are_skipped_and_the_job_goes_on() -> None:
    session, follow = following()
    feed(
        session,
        [
            frame(type="running", job_id="j1", message="a", seq=1),
            frame(type="citation", job_id="j1", url="https://example.com", seq=2),
            frame(type="running", job_id="j1", message="b", seq=3),
            frame(type="done", job_id="j1", seq=4),
        ],
    )
    assert read(session, follow) == [TextDelta("a", 1), TextDelta("b", 3), Done(4)]


def test_status_carries_the_message_once_done() -> None:
    session = Session()
    session.connected()
    request = session.status("j1")
    sent(session)
    session.receive(frame(type="status", job_id="j1", state="done", output="", message=FINISHED))
    assert request.result == Status("done", None, "", None, message=FINISHED)


# -- the command line's output ------------------------------------------------


def test_json_lines_show_every_typed_event() -> None:
    assert event_record(Reasoning("Hmm", 2)) == {"type": "reasoning", "text": "Hmm", "seq": 2}
    assert event_record(ToolCallDelta(1, "c", "f", "{", 3)) == {
        "type": "tool_call", "index": 1, "id": "c", "name": "f", "arguments": "{", "seq": 3,
    }  # fmt: skip
    assert event_record(ToolCallDelta(1, None, None, "}", 4)) == {
        "type": "tool_call", "index": 1, "arguments": "}", "seq": 4,
    }  # fmt: skip
    assert event_record(Refusal("No.", 5)) == {"type": "refusal", "text": "No.", "seq": 5}
    done = event_record(Done(6, None, "tool_calls", ["openai"], FINISHED))
    assert done["message"] == FINISHED and done["finish_reason"] == "tool_calls"
    assert "message" not in event_record(Done(6))
    json.dumps([done])  # each record is JSON as it is


def test_plain_output_keeps_stdout_for_the_text_and_labels_the_rest() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = EventPrinter(False, out, err)
    for event in [
        Started(1),
        Reasoning("Paris is ", 2),
        Reasoning("in France.", 3),
        TextDelta("Let me check.", 4),
        ToolCallDelta(0, "call_a", "get_weather", '{"city": ', 5),
        ToolCallDelta(0, None, None, '"Paris"}', 6),
        Refusal("Not that", 7),
        Refusal(" one.", 8),
        Done(9),
    ]:
        printer.event(event)
    printer.tool_calls(
        [{"id": "call_a", "type": "function",
          "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    )  # fmt: skip
    assert out.getvalue() == "Let me check.\n"
    assert err.getvalue().splitlines() == [
        "reasoning: Paris is in France.",
        "the model refused: Not that one.",
        'tool call get_weather({"city": "Paris"})',
    ]


def test_reasoning_is_dimmed_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    printer = EventPrinter(False, io.StringIO(), err)
    printer.event(Reasoning("hmm", 1))
    printer.event(Refusal("no", 2))
    assert err.getvalue() == "reasoning: \x1b[2mhmm\x1b[0m\nthe model refused: no"
