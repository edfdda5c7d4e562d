"""The client's session with no network: frames fed in, the events, answers and frames
to send it gives back asserted. Every rule of the client's protocol is tested here; the
I/O shells around it (tests/client/test_client.py) against a real worker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llm_worker.client import (
    Cancelled,
    ClientError,
    ConnectionLost,
    Done,
    JobNotFound,
    Notice,
    Pending,
    RequestRefused,
    Reset,
    Session,
    Started,
    Status,
    TextDelta,
)
from llm_worker.client.session import Follow, Request


def frame(**body: Any) -> bytes:
    return orjson.dumps(body)


def sent(session: Session) -> list[dict[str, Any]]:
    return [orjson.loads(f) for f in session.frames_to_send()]


def events(session: Session, follow: Follow) -> list[Any]:
    taken = []
    while (item := session.take(follow)) is not None:
        taken.append(item)
    return taken


def running(job_id: str, seq: int, text: str = "") -> bytes:
    return frame(type="running", job_id=job_id, message=text, seq=seq)


def open_session(max_buffered_events: int = 1000) -> Session:
    session = Session(max_buffered_events)
    session.connected()
    return session


def submitted(session: Session, job_id: str = "j1") -> Follow:
    request = session.add("q", {"streams": []})
    (add,) = sent(session)
    changes = session.receive(frame(type="resp_add", id=add["id"], job_id=job_id))
    assert changes == [request] and request.settled and request.error is None
    follow, listen_token = request.result
    assert follow.job_id == job_id and listen_token is None
    return follow


# -- requests out, answers in ---------------------------------------------------


def test_an_add_goes_out_and_its_answer_follows_the_job() -> None:
    session = open_session()
    request = session.add("Hi", {"streams": []}, history=[], variables={"x": 1})
    assert sent(session) == [
        {"type": "add", "id": "add-1", "query": "Hi", "assistant": {"streams": []},
         "history": [], "variables": {"x": 1}}
    ]  # fmt: skip
    session.receive(frame(type="resp_add", id="add-1", job_id="j1", listen_token="t"))
    follow, token = request.result
    assert token == "t" and session.follows == {"j1": follow}
    # The job's events are followed from its first: no listen is sent.
    assert sent(session) == []


def test_a_jobs_events_pass_once_in_order_and_its_end_stops_following_it() -> None:
    session = open_session()
    follow = submitted(session)
    for raw in [
        running("j1", 1),
        running("j1", 2, "Hel"),
        running("j1", 2, "Hel"),  # a duplicate (a replay overlapping)
        frame(type="pending", job_id="j1", position=2),
        frame(type="reset", job_id="j1", attempt=2, seq=3),
        running("j1", 4, "lo"),
        frame(type="done", job_id="j1", seq=5),
        running("j1", 6, "after the end"),
    ]:
        session.receive(raw)
    assert events(session, follow) == [
        Started(1), TextDelta("Hel", 2), Pending(2), Reset(2, 3),
        TextDelta("lo", 4), Done(5),
    ]  # fmt: skip
    assert "j1" not in session.follows


def test_status_is_decoded_and_a_cancel_is_acknowledged_by_a_bare_cancelled() -> None:
    session = open_session()
    status = session.status("j1")
    cancel = session.cancel("j1")
    assert [f["type"] for f in sent(session)] == ["status", "cancel"]
    session.receive(frame(type="status", job_id="j1", state="running", output="He"))
    assert status.result == Status("running", None, "He", None)
    session.receive(frame(type="cancelled", job_id="j1"))
    assert cancel.settled and cancel.error is None
    assert session.requests == {}


def test_a_withdrawn_add_leaves_its_job_unfollowed() -> None:
    session = open_session()
    request = session.add("q", {})
    session.withdraw(request)
    assert session.receive(frame(type="resp_add", id="add-1", job_id="j1")) == []
    assert session.follows == {} and not request.settled


def test_requests_need_a_connection_and_a_closed_session_refuses_everything() -> None:
    session = Session()
    with pytest.raises(ClientError, match="no connection"):
        session.add("q", {})
    session.connected()
    follow = session.follow("j1")
    pending = session.status("j2")
    closed = ClientError("the client is closed")
    changes = session.fail(closed)
    assert follow in changes and pending in changes and pending.error is closed
    assert events(session, follow) == [closed]
    with pytest.raises(ClientError, match="closed"):
        session.follow("j3")
    with pytest.raises(ClientError, match="closed"):
        session.status("j3")


# -- refusals, by code ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind", "code"),
    [
        ({"code": "job_not_found", "message": "no such job"}, JobNotFound, "job_not_found"),
        ({"code": "queue_full", "message": "the queue is full"}, RequestRefused, "queue_full"),
        # The code decides, not the message.
        ({"code": "listen_only", "message": "unknown job_id 'x'"}, RequestRefused, "listen_only"),
        # A server from before codes: an unknown job is known by its message's start.
        ({"message": "unknown job_id 'j1'"}, JobNotFound, "job_not_found"),
        ({"message": "the queue is full"}, RequestRefused, None),
    ],
)
def test_a_refusal_is_known_by_its_code(body: dict[str, Any], kind: type, code: str | None) -> None:
    session = open_session()
    request = session.status("j1")
    session.receive(frame(type="error", ref="j1", **body))
    assert type(request.error) is kind and request.error.code == code
    assert request.error.message == body["message"]


def test_a_refusal_settles_the_add_it_names_or_the_jobs_oldest_request() -> None:
    session = open_session()
    add = session.add("q", {})
    first, second = session.status("j1"), session.status("j1")
    session.receive(frame(type="error", ref="add-1", code="invalid_job", message="bad"))
    assert isinstance(add.error, RequestRefused) and add.error.code == "invalid_job"
    session.receive(frame(type="error", ref="j1", code="job_not_found", message="gone"))
    assert isinstance(first.error, JobNotFound) and not second.settled


def test_a_refused_listen_ends_the_job_if_unknown_else_is_a_notice() -> None:
    session = open_session()
    unknown, other = session.follow("j1"), session.follow("j2")
    session.receive(frame(type="error", ref="j1", code="job_not_found", message="unknown"))
    session.receive(frame(type="error", ref="j2", code="store_unavailable", message="away"))
    (error,) = events(session, unknown)
    assert isinstance(error, JobNotFound) and "j1" not in session.follows
    assert events(session, other) == [Notice("away")] and "j2" in session.follows


# -- resuming ----------------------------------------------------------------------


def test_a_dropped_connection_fails_adds_and_cancels_and_resumes_the_rest() -> None:
    session = open_session()
    follow = submitted(session)
    session.receive(running("j1", 1))
    session.receive(running("j1", 2, "a"))
    add, cancel, status = session.add("q", {}), session.cancel("j9"), session.status("j9")
    session.follow("j5", after=7)
    sent(session)
    changes = session.dropped()
    assert set(changes) == {add, cancel}
    assert isinstance(add.error, ConnectionLost) and isinstance(cancel.error, ConnectionLost)
    assert not status.settled
    session.follow("j6")  # while away: asked for by the next connection
    assert sent(session) == []
    session.connected()
    assert sent(session) == [
        {"type": "listen", "job_id": "j1", "after": 2},
        {"type": "listen", "job_id": "j5", "after": 7},
        {"type": "listen", "job_id": "j6", "after": 0},
        {"type": "status", "job_id": "j9"},
    ]
    # The replay after the last seq got, overlapping it: each event once.
    session.receive(running("j1", 2, "a"))
    session.receive(running("j1", 3, "b"))
    assert events(session, follow) == [Started(1), TextDelta("a", 2), TextDelta("b", 3)]


def test_the_end_is_let_through_once_when_replayed_at_the_last_seq() -> None:
    session = open_session()
    follow = session.follow("j1", after=5)
    session.receive(frame(type="done", job_id="j1", seq=5))
    session.receive(frame(type="done", job_id="j1", seq=5))
    assert events(session, follow) == [Done(5)]


# -- a bounded buffer per job ---------------------------------------------------------


def test_a_full_buffer_unlistens_and_fences_then_resumes_after_the_last_buffered() -> None:
    session = open_session(max_buffered_events=4)
    follow = submitted(session)
    other = session.follow("j2")
    sent(session)
    for seq in range(1, 5):
        session.receive(running("j1", seq, str(seq)))
    assert follow.paused
    assert sent(session) == [
        {"type": "unlisten", "job_id": "j1"},
        {"type": "ping", "id": "fence-1"},
    ]
    session.receive(running("j1", 5, "in flight"))  # dropped: asked for again later
    session.receive(running("j2", 1))  # the connection's other jobs flow meanwhile
    assert len(follow.buffer) == 4 and events(session, other) == [Started(1)]
    assert [session.take(follow), session.take(follow)] == [TextDelta("1", 1), TextDelta("2", 2)]
    assert sent(session) == []  # caught up, but the fence has not come back
    session.receive(frame(type="pong", id="fence-1"))
    assert not follow.paused
    assert sent(session) == [{"type": "listen", "job_id": "j1", "after": 4}]
    session.receive(running("j1", 5, "5"))
    assert [e.seq for e in events(session, follow)] == [3, 4, 5]


def test_a_fence_back_before_the_consumer_caught_up_waits_for_it() -> None:
    session = open_session(max_buffered_events=4)
    follow = submitted(session)
    for seq in range(1, 5):
        session.receive(running("j1", seq, "x"))
    sent(session)
    session.receive(frame(type="pong", id="fence-1"))
    assert follow.paused and sent(session) == []
    session.take(follow)  # 3 left: not caught up (at most half, 2)
    assert sent(session) == []
    session.take(follow)
    assert sent(session) == [{"type": "listen", "job_id": "j1", "after": 4}]


def test_a_paused_job_is_asked_for_on_a_new_connection_once_caught_up() -> None:
    session = open_session(max_buffered_events=2)
    follow = submitted(session)
    session.receive(running("j1", 1))
    session.receive(running("j1", 2, "x"))
    session.dropped()  # before the fence came back: the new connection sends nothing of it
    session.connected()
    assert sent(session) == []
    session.take(follow)
    assert sent(session) == [{"type": "listen", "job_id": "j1", "after": 2}]


# -- frames the client does not understand ------------------------------------------


def test_frames_not_understood_are_ignored() -> None:
    session = open_session()
    follow = session.follow("j1")
    for raw in [b"not json", b"[1]", frame(type="running", job_id="j1"), frame(type="new")]:
        assert session.receive(raw) == []
    session.receive(frame(type="cancelled", job_id="j1", seq=3))
    assert events(session, follow) == [Cancelled(3)]


def test_a_settled_request_keeps_its_first_answer() -> None:
    request = Request("status", "j1", "{}")
    request.settle("first")
    request.settle(error=ClientError("late"))
    assert request.result == "first" and request.error is None
