"""The Python client (llm_worker.client) against a real worker: streaming, following,
cancelling, refusals, and riding out cut connections and a worker's ``kill -9``."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from llm_worker.client import (
    Cancelled,
    Client,
    ClientError,
    ConnectionLost,
    Done,
    Event,
    EventFilter,
    Failed,
    JobCancelled,
    JobFailed,
    JobNotFound,
    Notice,
    Pending,
    RequestRefused,
    Reset,
    Started,
    SyncClient,
    TextDelta,
    decode_event,
    websocket_url,
)
from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from tests.conftest import RunningWorker, StartWorker
from tests.support.histories import Echo
from tests.support.tcp_proxy import CuttingProxy
from tests.support.wsclient import assistant

ASSISTANT = assistant()
ECHO = Echo(tokens=60)


def texts(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def seqs(events: list[Event]) -> list[int]:
    return [seq for e in events if (seq := getattr(e, "seq", None)) is not None]


def assert_growing(events: list[Event]) -> None:
    numbers = seqs(events)
    assert all(a < b for a, b in itertools.pairwise(numbers)), numbers


async def collect(job: Any) -> list[Event]:
    return [event async for event in job]


# -- pure parts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://127.0.0.1:8001/ws/", "ws://127.0.0.1:8001/ws/"),
        ("ws://127.0.0.1:8001", "ws://127.0.0.1:8001/ws/"),
        ("wss://example.com/ws?protocol=2", "wss://example.com/ws?protocol=2"),
        ("http://127.0.0.1:8001", "ws://127.0.0.1:8001/ws/"),
        ("https://example.com/llm/", "wss://example.com/llm/ws/"),
    ],
)
def test_websocket_url_from_ws_and_http_urls(url: str, expected: str) -> None:
    assert websocket_url(url) == expected


def test_websocket_url_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="ftp://"):
        websocket_url("ftp://example.com")


def test_frames_decode_to_typed_events() -> None:
    job = {"job_id": "j"}
    assert decode_event({**job, "type": "running", "message": "", "seq": 1}) == Started(1)
    assert decode_event({**job, "type": "running", "message": "Hi", "seq": 3}) == TextDelta("Hi", 3)
    assert decode_event({**job, "type": "pending", "position": 2}) == Pending(2)
    assert decode_event({**job, "type": "reset", "attempt": 2, "seq": 257}) == Reset(2, 257)
    notice = {**job, "type": "notice", "message": "loading local model 'm'", "seq": 2}
    assert decode_event(notice) == Notice("loading local model 'm'", 2)
    assert decode_event({**job, "type": "done", "seq": 9}) == Done(9)
    assert decode_event({**job, "type": "failed", "message": "no", "seq": 4}) == Failed("no", 4)
    assert decode_event({**job, "type": "cancelled", "seq": 5}) == Cancelled(5)
    assert decode_event({**job, "type": "cancelled"}) == Cancelled(None)
    assert decode_event({**job, "type": "status", "state": "done"}) is None
    with pytest.raises(KeyError):
        decode_event({**job, "type": "running", "message": "x"})


def test_the_filter_drops_what_was_seen_and_lets_the_end_through_once() -> None:
    seen = EventFilter(after=2)
    assert not seen.admit(TextDelta("old", 2))
    assert seen.admit(TextDelta("new", 4))  # a merged frame: seq 3 and 4
    assert not seen.admit(TextDelta("new again", 4))
    assert not seen.admit(Notice("loading, said before", 3))
    assert seen.admit(Notice("loading", 5))
    assert seen.admit(Pending(1))  # no seq: no order to keep
    assert seen.admit(Notice("the job store is unreachable"))
    assert seen.admit(Reset(2, 257))
    # A listen at or past a finished job's end replays the end: shown once.
    assert seen.admit(Done(250))
    assert seen.ended
    assert not seen.admit(Done(258))
    assert not seen.admit(Notice("late"))


# -- against a worker --------------------------------------------------------


async def test_submit_streams_the_answer_once_in_order(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    async with Client(worker.ws_url) as client:
        job = await client.submit("How tall is it?", ASSISTANT)
        events = await collect(job)
        assert events[0] == Started(1)
        end = events[-1]
        assert isinstance(end, Done)
        assert end.finish_reason == "stop"
        assert end.usage is not None
        assert end.usage["completion_tokens"] == upstream.chat_requests[-1].tokens_sent > 0
        assert texts(events) == "Echo: How tall is it?"
        assert_growing(events)
        assert job.last_seq == events[-1].seq
        # The job's events were read: text() gives the answer again, without waiting.
        assert await job.text() == "Echo: How tall is it?"
        # History and variables reach the provider.
        second = await client.submit(
            "Bonjour ?",
            assistant(
                {"role": "system", "content": "Answer in {language}."},
                {"insert": "history"},
                {"role": "user", "content": "{query}"},
            ),
            history=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
            variables={"language": "French"},
        )
        assert await second.text() == "Echo: Bonjour ?"
    sent = upstream.chat_requests[-1].body["messages"]
    assert [m["content"] for m in sent] == ["Answer in French.", "Hi", "Hello", "Bonjour ?"]


async def test_many_jobs_share_one_connection(worker: RunningWorker) -> None:
    async with Client(worker.http_url) as client:
        jobs = [await client.submit(f"question {i}", ASSISTANT) for i in range(8)]
        answers = await asyncio.gather(*(job.text() for job in jobs))
    assert answers == [f"Echo: question {i}" for i in range(8)]
    assert len({job.id for job in jobs}) == 8


async def test_a_waiting_job_reports_its_position(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    worker = await start_worker(worker_concurrency=1)
    started = asyncio.Event()

    async def handler(body: dict[str, Any]) -> Reply:
        if body["messages"][-1]["content"] == "first":
            started.set()
            return Reply(tokens=[" slow"] * 10, delay=0.1)
        return Reply(tokens=[" quick"])

    upstream.handler = handler
    async with Client(worker.ws_url) as client:
        first = await client.submit("first", ASSISTANT)
        await asyncio.wait_for(started.wait(), 20)
        second = await client.submit("second", ASSISTANT)
        events = await collect(second)
        assert await first.text() == " slow" * 10
    assert events[0] == Pending(1)
    assert events[1] == Started(1)
    assert texts(events) == " quick"


async def test_status_of_a_running_then_a_finished_job(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = ECHO.replies(0.05)
    async with Client(worker.ws_url) as client:
        job = await client.submit("s", ASSISTANT)
        seen = []
        async for event in job:
            seen.append(event)
            if isinstance(event, TextDelta):
                break
        running = await job.status()
        assert running.state == "running"
        assert running.output.startswith(texts(seen))
        assert ECHO.text("s").startswith(running.output)
        assert running.error is None
        assert await job.text() == ECHO.text("s")
        done = await client.status(job.id)
    assert (done.state, done.output, done.position) == ("done", ECHO.text("s"), None)


async def test_cancel_a_slow_job(worker: RunningWorker, upstream: OpenAIServer) -> None:
    upstream.handler = ECHO.replies(0.05)
    async with Client(worker.ws_url) as client:
        job = await client.submit("c", ASSISTANT)
        events: list[Event] = []
        async for event in job:
            events.append(event)
            if isinstance(event, TextDelta):
                await job.cancel()  # returns once the service acknowledged
        assert isinstance(events[-1], Cancelled)
        assert len(texts(events)) < len(ECHO.text("c"))
        with pytest.raises(JobCancelled):
            await job.text()
        assert (await job.status()).state == "cancelled"
        await job.cancel()  # cancelled already: acknowledged again
        # A finished job has nothing left to cancel: the service says so.
        upstream.handler = lambda body: Reply(tokens=[" quick"])
        finished = await client.submit("quick", ASSISTANT)
        assert await finished.text() == " quick"
        with pytest.raises(RequestRefused, match="already ended"):
            await finished.cancel()


async def test_cancel_from_another_client_ends_the_job(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = ECHO.replies(0.05)
    async with Client(worker.ws_url) as owner, Client(worker.ws_url) as other:
        job = await owner.submit("c2", ASSISTANT)
        await other.cancel(job.id)  # acknowledged apart: `other` does not follow the job
        with pytest.raises(JobCancelled):
            await job.text()


async def test_a_failed_job_raises_job_failed(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = lambda body: Reply(status=400, error="no such model")
    async with Client(worker.ws_url) as client:
        job = await client.submit("f", ASSISTANT)
        with pytest.raises(JobFailed, match="no such model"):
            await job.text()
        assert (await job.status()).error is not None


async def test_follow_an_existing_job_by_id_after_a_seq(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = ECHO.replies(0.02)
    async with Client(worker.ws_url) as first, Client(worker.ws_url) as second:
        job = await first.submit("f", ASSISTANT)
        head: list[Event] = []
        async for event in job:
            head.append(event)
            if job.last_seq >= 5:
                break
        rest = await collect(second.job(job.id, after=job.last_seq))
        assert all(seq > job.last_seq for seq in seqs(rest))
        assert texts(head) + texts(rest) == ECHO.text("f")
        assert isinstance(rest[-1], Done)
        # From the start, the whole job, its start included.
        replay = await collect(second.job(job.id))
        assert replay[0] == Started(1)
        assert texts(replay) == ECHO.text("f")
        # At its end, a finished job's end again: the listener learns how it ended.
        assert await collect(second.job(job.id, after=rest[-1].seq)) == [rest[-1]]


async def test_a_refused_add_raises_with_the_services_reason(worker: RunningWorker) -> None:
    async with Client(worker.ws_url) as client:
        with pytest.raises(RequestRefused, match="unknown provider 'opena1'"):
            await client.submit("x", assistant(provider="opena1"))
        # The connection stays usable.
        assert await (await client.submit("after", ASSISTANT)).text() == "Echo: after"


async def test_an_unknown_job_raises_job_not_found(worker: RunningWorker) -> None:
    async with Client(worker.ws_url) as client:
        job = client.job("no-such-job")
        with pytest.raises(JobNotFound, match="unknown job_id 'no-such-job'"):
            await collect(job)
        with pytest.raises(JobNotFound) as refused:
            await client.status("no-such-job")
        # The refusal's code, as the service sends it (or as a service sending none is read).
        assert refused.value.code == "job_not_found"
        with pytest.raises(JobNotFound):
            await client.cancel("no-such-job")


async def test_keys_and_listen_tokens(start_worker: StartWorker) -> None:
    worker = await start_worker(api_keys="lw-alice-key", token_secret="secret")
    with pytest.raises(ConnectionLost, match="HTTP 401"):
        await Client(worker.ws_url).connect()
    async with Client(worker.ws_url, api_key="lw-alice-key") as client:
        job = await client.submit("keyed", ASSISTANT)
        assert job.listen_token is not None
        assert await job.text() == "Echo: keyed"
    async with Client(worker.ws_url, api_key=job.listen_token) as listener:
        assert await listener.job(job.id).text() == "Echo: keyed"


async def test_a_client_that_cannot_connect_says_so() -> None:
    with pytest.raises(ConnectionLost, match="cannot connect"):
        await Client("ws://127.0.0.1:9/ws/").connect()


async def test_a_closed_client_ends_its_jobs_iteration(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = ECHO.replies(0.05)
    client = Client(worker.ws_url)
    await client.connect()
    job = await client.submit("closing", ASSISTANT)
    await client.close()
    with pytest.raises(ClientError, match="closed"):
        await job.text()
    with pytest.raises(ClientError):
        await client.submit("x", ASSISTANT)


# -- through failures --------------------------------------------------------


async def test_cut_connections_lose_and_repeat_nothing(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = ECHO.replies(0.05)
    async with CuttingProxy(worker.port) as proxy, Client(proxy.url) as client:
        job = await client.submit("cut", ASSISTANT)
        events: list[Event] = []
        cut_at = [6, 16, 26]
        async for event in job:
            events.append(event)
            if cut_at and job.last_seq >= cut_at[0]:
                cut_at.pop(0)
                assert proxy.cut() == 1
        assert not cut_at
        assert proxy.accepted >= 4  # the first connection and one after each cut
    assert isinstance(events[-1], Done)
    assert texts(events) == ECHO.text("cut")
    assert_growing(events)
    assert sum(isinstance(e, Started) for e in events) == 1


async def test_a_connection_lost_while_adding_is_not_resent(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    started = asyncio.Event()

    def handler(body: dict[str, Any]) -> Reply:
        started.set()
        return Reply(tokens=[" ok"])

    upstream.handler = handler
    async with CuttingProxy(worker.port) as proxy, Client(proxy.url) as client:
        proxy.hold()  # the service gets the add, the client never hears back
        submitting = asyncio.create_task(client.submit("lost", ASSISTANT))
        await asyncio.wait_for(started.wait(), 20)
        proxy.cut()
        proxy.release()
        with pytest.raises(ConnectionLost, match="may or may not"):
            await submitting
        # The client reconnects and goes on; the job ran once, as it was sent once.
        assert await (await client.submit("next", ASSISTANT)).text() == " ok"
    queries = [r.body["messages"][-1]["content"] for r in upstream.chat_requests]
    assert queries == ["lost", "next"]


async def test_the_client_gives_up_after_its_time(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = ECHO.replies(0.05)
    async with CuttingProxy(worker.port) as proxy:
        client = Client(proxy.url, give_up_after=0.5, max_backoff=0.1)
        async with client:
            job = await client.submit("gone", ASSISTANT)
            proxy.target_port = 9  # nothing listens there: every reconnection fails
            proxy.cut()
            with pytest.raises(ConnectionLost, match=r"gave up after 0\.5s"):
                await collect(job)
            with pytest.raises(ConnectionLost):
                await client.status(job.id)


async def test_a_worker_killed_mid_job_restarts_and_the_client_sees_a_reset(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    upstream.handler = ECHO.replies(0.05)
    env = clean_env(
        LISTEN_PORT="0",
        STORE_URL="sqlite:///jobs.db",
        OPENAI_API_KEY="k",
        OPENAI_BASE_URL=upstream.base_url,
    )
    async with processes() as started:
        first = await WorkerProcess.start(env, tmp_path)
        started.append(first)
        assert first.port is not None
        async with CuttingProxy(first.port) as proxy, Client(proxy.url) as client:
            job = await client.submit("crash", ASSISTANT)
            events: list[Event] = []
            async for event in job:
                events.append(event)
                if first.process.returncode is None and job.last_seq >= 6:
                    first.kill()
                    await first.process.wait()
                    second = await WorkerProcess.start(env, tmp_path)
                    started.append(second)
                    assert second.port is not None
                    proxy.target_port = second.port
            assert await job.text() == ECHO.text("crash")
    resets = [i for i, e in enumerate(events) if isinstance(e, Reset)]
    assert len(resets) == 1, events
    before, reset, after = events[: resets[0]], events[resets[0]], events[resets[0] + 1 :]
    assert isinstance(reset, Reset) and reset.attempt == 2
    assert texts(before) and ECHO.text("crash").startswith(texts(before))
    assert isinstance(after[0], Started) and isinstance(after[-1], Done)
    assert texts(after) == ECHO.text("crash")
    assert_growing(events)
    assert len(upstream.chat_requests) == 2


# -- a consumer that does not keep up -------------------------------------------


async def test_a_job_nobody_iterates_costs_a_bounded_buffer_and_loses_nothing(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    fast = Echo(tokens=4000)

    def handler(body: dict[str, Any]) -> Reply:
        query = body["messages"][-1]["content"]
        return Reply(tokens=fast.tokens_for(query)) if query == "fast" else Reply(tokens=[" ok"])

    upstream.handler = handler
    limit = 8
    async with Client(worker.ws_url, max_buffered_events=limit) as client:
        job = await client.submit("fast", ASSISTANT)
        # Another client follows the job to its end: by then the first has had every
        # frame the service would send it, and must hold no more than its limit.
        async with Client(worker.ws_url) as other:
            assert await other.job(job.id).text() == fast.text("fast")
        follow = client._session.follows[job.id]
        assert follow.paused and len(follow.buffer) == limit
        # The connection is still read: another job on it flows meanwhile.
        second = await client.submit("second", ASSISTANT)
        assert await second.text() == " ok"
        assert len(follow.buffer) == limit
        events, most_buffered = [], 0
        async for event in job:
            events.append(event)
            most_buffered = max(most_buffered, len(job._follow.buffer))
    assert most_buffered <= limit
    assert events[0] == Started(1) and isinstance(events[-1], Done)
    assert_growing(events)
    # Whole, each token once: resumed after the last event buffered (the replay of a
    # finished job comes in a few frames of many tokens each).
    assert texts(events) == fast.text("fast")


# -- the blocking client -------------------------------------------------------


async def test_the_sync_client_from_a_thread(worker: RunningWorker, upstream: OpenAIServer) -> None:
    def use_it() -> tuple[list[Event], str, str, str]:
        with SyncClient(worker.http_url) as client:
            job = client.submit("sync", ASSISTANT)
            events = list(job)
            again = client.job(job.id).text()
            status = client.status(job.id)
            upstream.handler = ECHO.replies(0.05)
            slow = client.submit("slow", ASSISTANT)
            next(iter(slow))
            slow.cancel()
            try:
                slow.text()
                ended = "done"
            except JobCancelled:
                ended = "cancelled"
        return events, again, status.state, ended

    events, again, state, ended = await asyncio.to_thread(use_it)
    assert events[0] == Started(1) and isinstance(events[-1], Done)
    assert texts(events) == again == "Echo: sync"
    assert state == "done"
    assert ended == "cancelled"


async def test_the_sync_client_fails_to_connect_cleanly() -> None:
    def connect() -> None:
        SyncClient("ws://127.0.0.1:9/ws/")

    with pytest.raises(ConnectionLost):
        await asyncio.to_thread(connect)
