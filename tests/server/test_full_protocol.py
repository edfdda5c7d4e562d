"""The additions to the seed protocol, over a real connection: pending, cancel,
status, seq, listen with and without ``after``, ping."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from llm_worker.store import open_store
from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import (
    ConnectClient,
    NewStore,
    RunningWorker,
    StartWorker,
    make_settings,
    serve,
)
from tests.support.stores import STORE_KINDS
from tests.support.waiting import eventually
from tests.support.wsclient import WSClient, assert_exactly_once, assistant, done_frame, text_of

TOKENS = [f" t{i}" for i in range(20)]


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs on each store."""
    return request.param


def slow(delay: float, tokens: list[str] = TOKENS, **kwargs: object) -> Reply:
    return Reply(tokens=list(tokens), delay=delay, **kwargs)  # type: ignore[arg-type]


async def test_running_frames_carry_consecutive_seq(
    upstream: OpenAIServer, client: WSClient
) -> None:
    # Tokens paced as a model paces them: each is an event of the log, seq 2, 3, ...
    # (a listener that falls behind gets consecutive ones in one frame, with the
    # last one's seq).
    upstream.handler = lambda body: Reply(tokens=TOKENS, delay=0.003)
    job_id, messages = await client.run()
    events = [m for m in messages if m["type"] != "pending"]
    assert_exactly_once(events, "".join(TOKENS), last_seq=len(TOKENS) + 2)
    body = upstream.chat_requests[-1].body
    assert events[-1] == done_frame(job_id, len(TOKENS) + 2, body, len(TOKENS))
    # The log itself numbers every delta.
    await client.send({"type": "listen", "job_id": job_id, "after": 5})
    replay = await client.job_messages(job_id)
    assert replay[0] == {
        "type": "running",
        "job_id": job_id,
        "message": "".join(TOKENS[4:]),
        "seq": len(TOKENS) + 1,
    }


async def test_pending_positions_count_down_as_the_queue_moves(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(worker_concurrency=1)
    upstream.handler = lambda body: slow(0.05, TOKENS[:4])
    client = await connect(worker.ws_url)
    first = await client.add("first")
    second = await client.add("second")
    third = await client.add("third")

    third_messages = await client.job_messages(third)
    positions = [m["position"] for m in third_messages if m["type"] == "pending"]
    # Announced on add, then each time a job ahead left the queue; never repeated.
    assert positions[0] == 2
    assert positions == sorted(set(positions), reverse=True)
    assert positions[-1] == 1
    # Nothing pending after the job started.
    started = next(i for i, m in enumerate(third_messages) if m["type"] == "running")
    assert all(m["type"] != "pending" for m in third_messages[started:])

    for job_id in (first, second):
        assert (await client.job_messages(job_id))[-1]["type"] == "done"


async def test_listen_on_a_pending_job_announces_its_position(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(worker_concurrency=1)
    upstream.handler = lambda body: slow(0.05, TOKENS[:6])
    adder = await connect(worker.ws_url)
    await adder.add("running")
    queued = await adder.add("queued")

    listener = await connect(worker.ws_url)
    await listener.send({"type": "listen", "job_id": queued})
    assert await listener.recv() == {"type": "pending", "job_id": queued, "position": 1}


async def test_cancel_a_queued_job(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(worker_concurrency=1)
    upstream.handler = lambda body: slow(0.05, TOKENS[:6])
    client = await connect(worker.ws_url)
    running = await client.add("running")
    queued = await client.add("queued")
    await client.send({"type": "cancel", "job_id": queued})

    messages = await client.job_messages(queued)
    assert messages[-1]["type"] == "cancelled"
    assert all(m["type"] in {"pending", "cancelled"} for m in messages)
    assert (await client.job_messages(running))[-1]["type"] == "done"
    # The cancelled job never reached the provider.
    assert len(upstream.chat_requests) == 1

    await client.send({"type": "status", "job_id": queued})
    status = await client.expect("status")
    assert status == {"type": "status", "job_id": queued, "state": "cancelled", "output": ""}


async def test_cancel_a_running_job_closes_the_upstream_stream(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: slow(0.05, [f" w{i}" for i in range(200)])
    listener_a = await connect()
    listener_b = await connect()
    job_id = await listener_a.add()
    await listener_b.send({"type": "listen", "job_id": job_id})
    # Let a few tokens through, then cancel from a third connection.
    for _ in range(4):
        await listener_a.wait_for("running", job_id)
    canceller = await connect()
    await canceller.send({"type": "cancel", "job_id": job_id})
    assert await canceller.recv() == {"type": "cancelled", "job_id": job_id}

    for listener in (listener_a, listener_b):
        messages = await listener.job_messages(job_id)
        assert messages[-1]["type"] == "cancelled"
        assert sum(m["type"] == "cancelled" for m in messages) == 1
    (request,) = upstream.chat_requests
    await asyncio.wait_for(request.client_gone.wait(), 2)
    sent_at_cancel = request.tokens_sent
    await asyncio.sleep(0.3)
    # The provider stopped generating: no token written after the hang-up.
    assert request.tokens_sent == sent_at_cancel < 200
    assert not request.completed
    await listener_a.silent(0.2)


async def test_cancel_closes_the_upstream_stream_at_once_not_at_the_next_token(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: slow(1.0, TOKENS[:5])
    client = await connect()
    job_id = await client.add()
    await client.wait_for("running", job_id)  # started; the first token is a second away
    await client.send({"type": "cancel", "job_id": job_id})
    assert (await client.job_messages(job_id))[-1]["type"] == "cancelled"
    (request,) = upstream.chat_requests
    await asyncio.wait_for(request.client_gone.wait(), 0.5)
    assert request.tokens_sent == 0


async def test_cancel_of_a_finished_job_is_an_error(
    upstream: OpenAIServer, client: WSClient
) -> None:
    job_id, _ = await client.run()
    await client.send({"type": "cancel", "job_id": job_id})
    error = await client.expect("error")
    assert error["ref"] == job_id
    assert "already ended (done)" in error["message"]


async def test_status_of_a_running_and_a_finished_job(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: slow(0.04, TOKENS)
    client = await connect()
    job_id = await client.add()
    seen = [await client.wait_for("running", job_id) for _ in range(3)]
    observer = await connect()
    await observer.send({"type": "status", "job_id": job_id})
    status = await observer.expect("status")
    assert status["state"] == "running"
    assert status["output"].startswith(" t0 t1")
    assert "position" not in status and "error" not in status

    messages = seen + await client.job_messages(job_id)
    await observer.send({"type": "status", "job_id": job_id})
    status = await observer.expect("status")
    done = done_frame(job_id, 0, upstream.chat_requests[-1].body, len(TOKENS))
    assert status == {
        "type": "status",
        "job_id": job_id,
        "state": "done",
        "output": "".join(TOKENS),
        "usage": done["usage"],
        "finish_reason": "stop",
        "providers": ["openai"],
    }
    assert text_of(messages) == status["output"]


async def test_status_of_a_failed_and_a_pending_job(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(worker_concurrency=1)
    client = await connect(worker.ws_url)
    upstream.handler = lambda body: Reply(status=400, error="no such model")
    failed_id, _ = await client.run()
    await client.send({"type": "status", "job_id": failed_id})
    status = await client.expect("status")
    assert status["state"] == "failed"
    assert "no such model" in status["error"]

    upstream.handler = lambda body: slow(0.05, TOKENS[:6])
    await client.add("blocker")
    queued = await client.add("queued")
    await client.send({"type": "status", "job_id": queued})
    status = await client.wait_for("status")
    assert status == {
        "type": "status",
        "job_id": queued,
        "state": "pending",
        "position": 1,
        "output": "",
    }


async def test_listen_after_resumes_without_gap_or_duplicate(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: slow(0.02, TOKENS)
    first = await connect()
    job_id = await first.add()
    seen = []
    while len(seen) < 6:
        message = await first.wait_for("running", job_id)
        seen.append(message)
    await first.ws.close()  # the client drops mid-stream...

    second = await connect()  # ...and comes back on a new connection
    await second.send({"type": "listen", "job_id": job_id, "after": seen[-1]["seq"]})
    rest = await second.job_messages(job_id)
    combined = seen + rest
    # A listener that falls behind (a loaded machine) gets consecutive deltas merged
    # into one frame carrying the last one's seq: seqs only grow, from where the
    # client left off to the end, and the text has no gap and no duplicate.
    seqs = [m["seq"] for m in combined]
    assert seqs[:6] == list(range(1, 7))
    assert seqs == sorted(set(seqs)), seqs
    body = upstream.chat_requests[-1].body
    assert combined[-1] == done_frame(job_id, len(TOKENS) + 2, body, len(TOKENS))
    assert text_of(combined) == "".join(TOKENS)


async def test_listen_without_after_replays_from_the_start_then_goes_live(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: slow(0.03, TOKENS)
    adder = await connect()
    job_id = await adder.add()
    for _ in range(5):
        await adder.wait_for("running", job_id)
    late = await connect()
    await late.send({"type": "listen", "job_id": job_id})
    messages = await late.job_messages(job_id)
    assert_exactly_once(messages, "".join(TOKENS), last_seq=len(TOKENS) + 2)
    # What had happened comes as one catch-up frame, the rest as it happens.
    assert messages[1]["type"] == "running"
    assert messages[1]["message"].startswith(" t0 t1 t2")
    assert messages[-2]["message"] == TOKENS[-1]


async def test_a_listener_that_fell_behind_catches_up_in_merged_frames(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: slow(0.002, TOKENS)
    client = await connect()
    job_id, live = await client.run()
    replay_client = await connect()
    await replay_client.send({"type": "listen", "job_id": job_id})
    replay = await replay_client.job_messages(job_id)
    last_seq = len(TOKENS) + 2
    assert_exactly_once(live, "".join(TOKENS), last_seq=last_seq)
    assert_exactly_once(replay, "".join(TOKENS), last_seq=last_seq)
    # The whole finished log: the start, every delta in one frame, the end.
    assert [m["type"] for m in replay] == ["running", "running", "done"]
    assert replay[1]["seq"] == last_seq - 1


async def test_listen_on_a_finished_job_replays_and_ends(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    client = await connect()
    job_id, live = await client.run()
    live = [m for m in live if m["type"] != "pending"]  # not part of the log
    late = await connect()
    await late.send({"type": "listen", "job_id": job_id})
    replay = await late.job_messages(job_id)
    assert_exactly_once(replay, text_of(live), last_seq=live[-1]["seq"])
    await late.silent(0.2)

    # Resuming at or past the last event of a finished job: its end, and nothing more.
    for after in (live[-1]["seq"], live[-1]["seq"] + 50):
        await late.send({"type": "listen", "job_id": job_id, "after": after})
        assert await late.job_messages(job_id) == [live[-1]]
        await late.silent(0.2)
    # Resuming after an earlier event sends the rest.
    await late.send({"type": "listen", "job_id": job_id, "after": live[-3]["seq"]})
    assert await late.job_messages(job_id) == live[-2:]


async def test_a_second_listen_on_the_same_connection_does_not_duplicate(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: slow(0.01, TOKENS)
    client = await connect()
    job_id = await client.add()
    # A seed client may listen to a job it added; it must not hear it twice.
    await client.send({"type": "listen", "job_id": job_id})
    messages = await client.job_messages(job_id)
    seqs = [m["seq"] for m in messages if m["type"] != "pending"]
    assert seqs == list(range(1, len(TOKENS) + 3))
    await client.silent(0.2)


async def test_ping_pong(client: WSClient) -> None:
    await client.send({"type": "ping"})
    assert await client.recv() == {"type": "pong"}
    await client.send({"type": "ping", "id": 7})
    assert await client.recv() == {"type": "pong", "id": 7}


async def test_both_ws_paths_serve_the_protocol(
    worker: RunningWorker, connect: ConnectClient
) -> None:
    for url in (f"ws://127.0.0.1:{worker.port}/ws/", f"ws://127.0.0.1:{worker.port}/ws"):
        client = await connect(url)
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}


async def test_healthz_reports_queue_and_running(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(worker_concurrency=1)
    upstream.handler = lambda body: slow(0.05, TOKENS[:10])
    client = await connect(worker.ws_url)
    await client.add("a")
    await client.add("b")
    await client.add("c")
    await client.wait_for("running")
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["running"] == 1
    assert body["queued"] == 2
    assert body["connections"] == 1


async def test_jobs_outlive_the_client_that_added_them(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: slow(0.02, TOKENS)
    adder = await connect()
    job_id = await adder.add()
    await adder.wait_for("running", job_id)
    await adder.ws.close()
    await asyncio.sleep(0.6)
    later = await connect()
    await later.send({"type": "listen", "job_id": job_id})
    messages = await later.job_messages(job_id)
    assert messages[-1]["type"] == "done"
    assert text_of(messages) == "".join(TOKENS)
    assert upstream.chat_requests[0].completed


async def test_assistant_template_with_assistant_helper_reaches_provider(
    upstream: OpenAIServer, client: WSClient
) -> None:
    _, messages = await client.run(
        query="Hi", history=[], assistant=assistant(temperature=0.2, seed=7)
    )
    body = upstream.chat_requests[0].body
    assert body["temperature"] == 0.2 and body["seed"] == 7
    assert text_of(messages) == "Echo: Hi"


async def test_finished_jobs_expire_after_job_ttl(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(job_ttl_seconds=0.3)
    client = await connect(worker.ws_url)
    job_id, _ = await client.run()
    await client.send({"type": "status", "job_id": job_id})
    assert (await client.expect("status"))["state"] == "done"
    store = worker.app.state.store

    async def expired() -> bool:
        return await store.get(job_id) is None

    await eventually(expired, what="the job's record to expire")
    await client.send({"type": "listen", "job_id": job_id})
    # Expired, not unknown: its tombstone says so (tests/server/test_expired_jobs.py).
    assert await client.recv() == {
        "type": "error",
        "code": "expired",
        "message": f"job {job_id!r} has expired: a finished job is kept for JOB_TTL_SECONDS "
        "(this one's record and events are gone)",
        "ref": job_id,
    }


async def test_stopping_gives_running_jobs_a_grace_period_then_gives_them_up(
    upstream: OpenAIServer, store_kind: str, new_store: NewStore
) -> None:
    upstream.handler = lambda body: (
        slow(0.1, TOKENS[:3]) if body["model"] == "quick" else slow(0.5, TOKENS)
    )
    settings = make_settings(
        openai_api_key="k",
        openai_base_url=upstream.base_url,
        shutdown_grace_seconds=0.5,
        **new_store(),
    )
    async with serve(settings) as worker:
        async with WSClient(worker.ws_url) as client:
            quick = await client.add("quick", assistant=assistant(model="quick"))
            endless = await client.add("endless", assistant=assistant(model="endless"))
            await client.wait_for("running", endless)
            await client.wait_for("running", quick)
        store = worker.app.state.store
        assert (await store.get(quick)).state.value == "running"
    if store_kind == "memory":
        # The quick job finished within the grace period; the other failed.
        assert (await store.get(quick)).state.value == "done"
        record = await store.get(endless)
        assert record.state.value == "failed"
        assert record.error == "the worker stopped before the job finished"
        return
    # A durable store keeps the unfinished job queued, to run after the restart.
    store = open_store(settings)
    await store.start()
    try:
        assert (await store.get(quick)).state.value == "done"
        assert (await store.get(endless)).state.value == "pending"
        assert await store.position(endless) == 1
    finally:
        await store.close()
