"""The OpenAI doors' streams get the care every event stream of the worker gets
(:mod:`llm_worker.server.sse`): a reader whose path goes dark is cut, mid-job, and
what that does to the job is the door's (cancelled; running on when asked); an idle
stream sends keep-alive comments, which the official SDK reads past."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import StartWorker
from tests.support.tcp_proxy import CuttingProxy
from tests.support.waiting import eventually

# 100-byte tokens for 30 s: little enough that the worker's own buffer never fills (its
# writes never wait), enough to fill the small buffer of a reader that stops reading.
LONG_REPLY = [f" {i:04d}" + "x" * 95 for i in range(1500)]
DOORS = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    "responses": ("/v1/responses", {"input": "hi"}),
}


def raw_request(path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    data = json.dumps({"model": "gpt-test", "stream": True, **body}).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n{head}\r\n"
    ).encode() + data


@pytest.mark.parametrize(
    ("door", "keep_running"), [("chat", False), ("chat", True), ("responses", False)]
)
async def test_a_door_stream_whose_path_goes_dark_is_cut_mid_job(
    start_worker: StartWorker, upstream: OpenAIServer, door: str, keep_running: bool
) -> None:
    upstream.handler = lambda body: Reply(tokens=LONG_REPLY, delay=0.02)
    worker = await start_worker(slow_listener_seconds=1, sse_keepalive_seconds=0.5)
    streams = worker.app.state.gateway.streams
    path, body = DOORS[door]
    headers = {"x-llm-worker-keep-running": "true"} if keep_running else {}
    async with CuttingProxy(worker.port, worker_receive_buffer=4096) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(raw_request(path, body, headers))
        await asyncio.wait_for(reader.readuntil(b" 0001"), 10)  # text flows
        assert len(streams) == 1
        (job_id,) = streams.values()
        proxy.black_hole()
        went_dark = asyncio.get_running_loop().time()
        await eventually(lambda: not streams, timeout=15)
        freed_after = asyncio.get_running_loop().time() - went_dark
        async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
            state = (await http.get(f"/v1/jobs/{job_id}")).json()["state"]
            # Cut while its job ran: the door's client is gone, which cancels the job
            # unless it asked to keep it running.
            assert state == ("running" if keep_running else "cancelled"), (state, freed_after)
        if not keep_running:  # and its model stopped
            sent = upstream.chat_requests[0].tokens_sent
            await asyncio.sleep(0.5)
            assert upstream.chat_requests[0].tokens_sent == sent < len(LONG_REPLY)
        writer.close()


@pytest.mark.parametrize("door", ["chat", "responses"])
async def test_an_idle_door_stream_sends_keep_alives_that_the_sdk_reads_past(
    start_worker: StartWorker, upstream: OpenAIServer, door: str
) -> None:
    # The model takes 1.5 s to answer: the stream is idle meanwhile.
    upstream.handler = lambda body: Reply(tokens=["Hel", "lo"], first_delay=1.5)
    worker = await start_worker(sse_keepalive_seconds=0.2)
    path, body = DOORS[door]
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        request = {"model": "gpt-test", "stream": True, **body}
        async with http.stream("POST", path, json=request) as reply:
            raw = b"".join([chunk async for chunk in reply.aiter_bytes()])
    assert raw.count(b": keep-alive\n\n") >= 3, raw[:500]
    client = openai.AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="k", max_retries=0)
    async with client:
        if door == "chat":
            stream = await client.chat.completions.create(
                model="gpt-test", messages=body["messages"], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        else:
            events = await client.responses.create(model="gpt-test", input="hi", stream=True)
            done = [event async for event in events if event.type == "response.completed"]
            text = done[0].response.output_text
    assert text == "Hello"
