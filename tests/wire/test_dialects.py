"""The seed's dialect and the full protocol on one endpoint: what each connection is
sent, first as pure functions, then over real connections with strict clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from llm_worker.jobs.model import Event, EventKind
from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.wire.dialects import (
    CANCELLED,
    INTERRUPTED,
    SEED_TYPES,
    SUBPROTOCOL,
    Dialect,
    Relay,
    negotiate,
    refusal,
)
from llm_worker.wire.events import Frame
from llm_worker.wire.protocol import ProtocolError
from tests.conftest import ConnectClient, RunningWorker, StartWorker
from tests.support.seed_client import F_AI_TYPES, JobFailed, SeedClient
from tests.support.wsclient import WSClient, assistant, text_of

# -- negotiation ---------------------------------------------------------------


def test_the_seed_dialect_unless_the_client_opts_in() -> None:
    assert negotiate([], None) == (Dialect.SEED, None)
    assert negotiate(["chat", "other"], None) == (Dialect.SEED, None)
    assert negotiate([], "1") == (Dialect.SEED, None)
    assert negotiate(["chat", SUBPROTOCOL], None) == (Dialect.FULL, SUBPROTOCOL)
    assert negotiate([], "2") == (Dialect.FULL, None)


@pytest.mark.parametrize("value", ["4", "", "v2", "llm-worker.v2"])
def test_an_unknown_protocol_parameter_is_refused(value: str) -> None:
    with pytest.raises(ProtocolError, match=r"unknown protocol .*\?protocol=2"):
        negotiate([], value)


# -- refusals --------------------------------------------------------------------


def frames(items: list[str] | list[Frame]) -> list[dict[str, Any]]:
    return [json.loads(item.text if isinstance(item, Frame) else item) for item in items]


def test_a_refused_add_is_a_job_that_failed_in_the_seed_dialect() -> None:
    resp_add, failed = frames(refusal(Dialect.SEED, "add", "q1", "queue full", "queue_full"))
    assert resp_add["type"] == "resp_add" and resp_add["id"] == "q1"
    assert failed == {"type": "failed", "job_id": resp_add["job_id"], "message": "queue full"}
    # Each refusal has a job id of its own.
    again = frames(refusal(Dialect.SEED, "add", "q1", "queue full", "queue_full"))[0]
    assert again["job_id"] != resp_add["job_id"]


def test_seed_refusals() -> None:
    unknown = "unknown job_id 'j1'"
    assert frames(refusal(Dialect.SEED, "listen", "j1", unknown, "job_not_found")) == [
        {"type": "failed", "job_id": "j1", "message": "unknown job_id 'j1'"}
    ]
    # Requests of the full protocol get its answers; frames that are no request, error.
    for request_type, ref in [("status", "j1"), ("cancel", "j1"), ("ping", 3), (None, None)]:
        (error,) = frames(refusal(Dialect.SEED, request_type, ref, "no", "bad_request"))
        assert error["type"] == "error"
    # Without a code: the seed's frames are as they always were, to the byte.
    missing = "missing field 'job_id'"
    assert refusal(Dialect.SEED, "listen", None, missing, "bad_request") == [
        '{"type":"error","message":"missing field \'job_id\'"}'
    ]
    assert refusal(Dialect.SEED, "status", "j1", "no", "job_not_found") == [
        '{"type":"error","message":"no","ref":"j1"}'
    ]


def test_full_protocol_refusals_are_errors_with_a_code() -> None:
    assert frames(refusal(Dialect.FULL, "add", "q1", "queue full", "queue_full")) == [
        {"type": "error", "code": "queue_full", "message": "queue full", "ref": "q1"}
    ]
    for request_type in ("listen", "status", "cancel", None):
        (error,) = frames(refusal(Dialect.FULL, request_type, "j1", "no", "job_not_found"))
        assert error == {"type": "error", "code": "job_not_found", "message": "no", "ref": "j1"}


# -- relaying a job's log -----------------------------------------------------------

START = Event(1, EventKind.RUNNING, "", 1)


def delta(seq: int, text: str, attempt: int = 1) -> Event:
    return Event(seq, EventKind.RUNNING, text, attempt)


def test_the_full_protocol_gets_every_event() -> None:
    relay = Relay("j", Dialect.FULL, 0)
    sent = frames(relay.frames([START, Event(2, EventKind.RESET, "", 2), delta(3, "a", 2)]))
    assert [m["type"] for m in sent] == ["running", "reset", "running"]


def test_notices_go_to_full_protocol_listeners_only() -> None:
    notice = Event(2, EventKind.NOTICE, "loading local model 'm'", 1)
    batch = [START, notice, delta(3, "a"), delta(4, "b"), Event(5, EventKind.DONE, "", 1)]
    full = frames(Relay("j", Dialect.FULL, 0).frames(batch))
    assert [(m["type"], m["seq"]) for m in full] == [
        ("running", 1),
        ("notice", 2),
        ("running", 4),
        ("done", 5),
    ]
    seed = Relay("j", Dialect.SEED, 0)
    sent = frames(seed.frames(batch))
    assert sent == frames(Relay("j", Dialect.SEED, 0).frames([START, *batch[2:]]))
    assert [m["type"] for m in sent] == ["running", "running", "done"]
    assert text_of(sent) == "ab"
    assert seed.frames([notice]) == []
    # A notice is no text: a reset after one still passes unseen.
    seed = Relay("j", Dialect.SEED, 0)
    seed.frames([START, notice])
    assert frames(seed.frames([Event(9, EventKind.RESET, "", 2), delta(10, "new", 2)])) == [
        {"type": "running", "job_id": "j", "message": "new", "seq": 10}
    ]
    assert not seed.finished


def test_a_cancel_reaches_a_seed_listener_as_failed() -> None:
    relay = Relay("j", Dialect.SEED, 0)
    sent = frames(relay.frames([START, delta(2, "a"), Event(3, EventKind.CANCELLED, "", 1)]))
    assert sent[-1] == {"type": "failed", "job_id": "j", "message": CANCELLED, "seq": 3}
    assert {m["type"] for m in sent} <= SEED_TYPES


def test_a_reset_before_any_text_is_invisible_to_a_seed_listener() -> None:
    relay = Relay("j", Dialect.SEED, 0)
    assert frames(relay.frames([START])) == [
        {"type": "running", "job_id": "j", "message": "", "seq": 1}
    ]
    sent = frames(relay.frames([Event(9, EventKind.RESET, "", 2), Event(10, EventKind.RUNNING)]))
    sent += frames(relay.frames([delta(11, "new", 2), Event(12, EventKind.DONE, "", 2)]))
    assert [m["type"] for m in sent] == ["running", "running", "done"]
    assert text_of(sent) == "new"
    assert not relay.finished


def test_a_reset_after_text_ends_a_seed_listening_with_failed() -> None:
    relay = Relay("j", Dialect.SEED, 0)
    relay.frames([START, delta(2, "old")])
    sent = frames(relay.frames([Event(9, EventKind.RESET, "", 2), Event(10, EventKind.RUNNING)]))
    assert sent == [{"type": "failed", "job_id": "j", "message": INTERRUPTED, "seq": 9}]
    assert relay.finished


def test_a_seed_listener_resuming_after_text_counts_as_shown_text() -> None:
    reset = Event(9, EventKind.RESET, "", 2)
    assert Relay("j", Dialect.SEED, 1).frames([reset]) == []
    assert json.loads(Relay("j", Dialect.SEED, 2).frames([reset])[0].text)["type"] == "failed"


# -- over real connections -----------------------------------------------------------


def slow(tokens: int = 6, delay: float = 0.02) -> Any:
    return lambda body: Reply(tokens=[f" t{i}" for i in range(tokens)], delay=delay)


async def test_a_strict_seed_client_gets_every_answer_however_long_the_queue(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    worker = await start_worker(worker_concurrency=3)
    upstream.handler = lambda body: Reply(
        tokens=[f" {body['messages'][-1]['content']}.{i}" for i in range(5)], delay=0.01
    )
    async with SeedClient(worker.ws_url) as client:
        answers = await asyncio.gather(
            *(client.ask(f"r{i}", f"q{i}", assistant()) for i in range(20)),
            return_exceptions=True,
        )
    assert client.violations == []
    assert answers == ["".join(f" q{i}.{n}" for n in range(5)) for i in range(20)]
    # The queue was real: at most three replies streamed at any time.
    assert len(upstream.chat_requests) == 20


async def test_a_seed_client_gets_a_refused_add_as_a_failed_job_and_goes_on(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    worker = await start_worker(worker_concurrency=1, queue_max=1)
    upstream.handler = slow(tokens=10, delay=0.05)
    async with SeedClient(worker.ws_url, known=F_AI_TYPES | {"failed"}) as client:
        with pytest.raises(JobFailed, match=r"unknown provider 'opena1'"):
            await client.ask("bad", "q", assistant(provider="opena1"))
        with pytest.raises(JobFailed, match=r"unknown placeholder \{qeury\}"):
            await client.ask("typo", "q", assistant({"role": "user", "content": "{qeury}"}))
        # One running, one queued: the third is refused, the first two answered.
        first = asyncio.create_task(client.ask("first", "q", assistant()))
        await asyncio.sleep(0.2)
        second = asyncio.create_task(client.ask("second", "q", assistant()))
        await asyncio.sleep(0.2)
        with pytest.raises(JobFailed, match=r"the queue is full"):
            await client.ask("third", "q", assistant())
        assert await first == await second == "".join(f" t{i}" for i in range(10))
    assert client.violations == []


async def test_a_malformed_add_gets_resp_add_and_failed_with_its_id(
    worker: RunningWorker, connect: ConnectClient
) -> None:
    client = await connect(seed=True)
    await client.send({"type": "add", "id": 7, "assistant": assistant()})
    resp_add = await client.expect("resp_add")
    assert resp_add["id"] == 7
    failed = await client.expect("failed")
    assert failed["job_id"] == resp_add["job_id"]
    assert failed["message"] == "invalid 'add' request: missing field 'query'"
    # The refused job was never stored.
    await client.send({"type": "status", "job_id": resp_add["job_id"]})
    assert (await client.expect("error"))["message"].startswith("unknown job_id")


async def test_a_seed_listen_of_an_unknown_job_is_failed(
    worker: RunningWorker, connect: ConnectClient
) -> None:
    client = await connect(seed=True)
    await client.send({"type": "listen", "job_id": "nope"})
    assert await client.recv() == {
        "type": "failed",
        "job_id": "nope",
        "message": "unknown job_id 'nope'",
    }


async def test_frames_that_are_no_request_get_error_in_the_seed_dialect(
    worker: RunningWorker, connect: ConnectClient
) -> None:
    client = await connect(seed=True)
    for frame in ["not json", "[1]", '{"type": "hello"}', b"\x00"]:
        await client.send(frame)
        assert (await client.recv())["type"] == "error"


async def test_full_protocol_requests_are_answered_on_a_seed_connection(
    upstream: OpenAIServer, worker: RunningWorker, connect: ConnectClient
) -> None:
    upstream.handler = slow(tokens=200, delay=0.02)
    client = await connect(seed=True)
    await client.send({"type": "ping", "id": 1})
    assert await client.recv() == {"type": "pong", "id": 1}
    job_id = await client.add()
    await client.wait_for("running", job_id)
    await client.send({"type": "status", "job_id": job_id})
    assert (await client.wait_for("status"))["state"] == "running"
    await client.send({"type": "cancel", "job_id": job_id})
    # The canceller learns of its cancel; its listening ends as a seed client knows.
    assert await client.wait_for("cancelled") == {"type": "cancelled", "job_id": job_id}
    messages = await client.job_messages(job_id)
    assert messages[-1]["type"] == "failed"
    assert messages[-1]["message"] == CANCELLED
    assert {m["type"] for m in messages} <= SEED_TYPES


async def test_each_connection_hears_a_cancel_in_its_own_dialect(
    upstream: OpenAIServer, start_worker: StartWorker, connect: ConnectClient
) -> None:
    worker = await start_worker(worker_concurrency=1)
    upstream.handler = slow(tokens=200, delay=0.02)
    full = await connect(worker.ws_url)
    seed = await connect(worker.ws_url, seed=True)
    running = await full.add("running")
    queued = await full.add("queued")
    for job_id in (running, queued):
        await seed.send({"type": "listen", "job_id": job_id})
    await seed.wait_for("running", running)
    for job_id in (running, queued):
        await full.send({"type": "cancel", "job_id": job_id})
    for job_id in (running, queued):
        assert (await full.job_messages(job_id))[-1]["type"] == "cancelled"
        seed_messages = await seed.job_messages(job_id)
        assert seed_messages[-1] == {
            "type": "failed",
            "job_id": job_id,
            "message": CANCELLED,
            "seq": seed_messages[-1]["seq"],
        }
        assert {m["type"] for m in seed_messages} <= SEED_TYPES
    await seed.silent(0.2)


async def test_pending_goes_to_full_protocol_connections_only(
    upstream: OpenAIServer, start_worker: StartWorker, connect: ConnectClient
) -> None:
    worker = await start_worker(worker_concurrency=1)
    upstream.handler = slow(tokens=5, delay=0.02)
    by_subprotocol = await connect(worker.ws_url)
    by_parameter = await connect(worker.ws_url + "?protocol=2", seed=True)
    seed = await connect(worker.ws_url, seed=True)
    assert by_subprotocol.ws.subprotocol == SUBPROTOCOL
    assert seed.ws.subprotocol is None
    await seed.add("blocker")
    queued = {client: await client.add("queued") for client in (by_subprotocol, by_parameter, seed)}
    for client, job_id in queued.items():
        messages = await client.job_messages(job_id)
        assert messages[-1]["type"] == "done"
        pending = [m for m in messages if m["type"] == "pending"]
        assert bool(pending) == (client is not seed), messages[:2]


async def test_an_unknown_protocol_parameter_refuses_the_connection(
    worker: RunningWorker,
) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(worker.ws_url + "?protocol=4")
    assert refused.value.response.status_code == 400
    assert b"unknown protocol '4'" in refused.value.response.body


async def test_the_subprotocol_is_accepted_by_a_browser_style_offer(worker: RunningWorker) -> None:
    async with WSClient(worker.ws_url, subprotocols=["chat", SUBPROTOCOL]) as client:
        assert client.ws.subprotocol == SUBPROTOCOL
        await client.send({"type": "listen", "job_id": "nope"})
        assert (await client.recv())["type"] == "error"


# What a full-protocol client is refused with: each error's stable code beside its message.
FULL_REFUSALS: list[tuple[str | bytes, str]] = [
    (b'{"type": "ping"}', "bad_request"),
    ("x" * 1_100_000, "payload_too_large"),
    ('{"type": "add", "id": "big", "query": "' + "x" * 1_100_000 + '"}', "payload_too_large"),
    ("not json", "invalid_json"),
    ("[1]", "invalid_json"),
    ('{"id": "a"}', "bad_request"),
    ('{"type": "launch", "id": "a"}', "bad_request"),
    ('{"type": "add", "id": "a", "query": 3, "assistant": {}}', "invalid_job"),
    (json.dumps({"type": "add", "id": "b", "query": "q", "assistant": assistant(provider="x")}),
     "invalid_job"),
    ('{"type": "listen", "job_id": "nope"}', "job_not_found"),
    ('{"type": "listen"}', "bad_request"),
    ('{"type": "status", "job_id": "nope"}', "job_not_found"),
    ('{"type": "cancel", "job_id": "nope"}', "job_not_found"),
]  # fmt: skip


async def test_a_full_protocol_refusal_carries_a_stable_code(
    worker: RunningWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    client = await connect()
    for request, code in FULL_REFUSALS:
        await client.send(request)
        error = await client.expect("error")
        assert error["code"] == code, (request[:60], error)
    # A cancel of a job that ended: the HTTP API's 409, job_ended.
    job_id, _ = await client.run()
    await client.send({"type": "cancel", "job_id": job_id})
    assert (await client.expect("error"))["code"] == "job_ended"
