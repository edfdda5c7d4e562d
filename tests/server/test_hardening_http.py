"""The HTTP edge attacked as issue 21 did, over a real server: bodies that never end,
a Host that opens the door (DNS rebinding), a text frame not UTF-8, a resume point
past a job's end, and an event stream whose path goes dark."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import httpx
import pytest
import websockets

from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.wire import errors
from tests.conftest import StartWorker
from tests.support.tcp_proxy import CuttingProxy
from tests.support.wsclient import assistant

KEY = "key-of-hardening-0123456789"


def job(query: str = "hello") -> dict[str, Any]:
    return {"query": query, "assistant": assistant()}


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response: its status, headers and body (by its content-length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {
        name.lower(): value
        for name, _, value in (line.partition(": ") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server has ended the connection (what it still sends is dropped)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass
    return True


# -- row 1: a body that never ends ---------------------------------------------------


async def test_bodies_that_stop_are_answered_408_and_free_their_connections(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(max_connections=40, body_timeout_seconds=0.5)
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: 1000000\r\n\r\n{"
    )
    connections = [await asyncio.open_connection("127.0.0.1", worker.port) for _ in range(40)]
    for _, writer in connections:
        writer.write(head)
    async with asyncio.timeout(10):
        for reader, writer in connections:
            status, _, body = await read_answer(reader)
            assert status == 408
            assert json.loads(body)["code"] == errors.REQUEST_TIMEOUT
            assert await closed(reader)
            writer.close()
        # The slots are free again: a new client is served.
        async with httpx.AsyncClient(base_url=worker.http_url) as http:
            assert (await http.post("/v1/jobs", json=job())).status_code == 201


async def test_a_body_arriving_at_the_minimum_rate_is_taken(start_worker: StartWorker) -> None:
    # 0.3 s of grace, then 2000 bytes a second: a body of 1500 bytes sent in 3 parts
    # over 0.9 s stays above the rate.
    worker = await start_worker(body_timeout_seconds=0.3, body_min_bytes_per_second=2000)
    body = json.dumps(job("x" * 1400)).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
    )
    third = len(body) // 3 + 1
    for start in range(0, len(body), third):
        writer.write(body[start : start + third])
        await asyncio.sleep(0.3)
    status, _, answer = await asyncio.wait_for(read_answer(reader), 10)
    writer.close()
    assert status == 201, answer


async def test_a_request_answered_before_its_body_ends_is_read_no_further(
    start_worker: StartWorker,
) -> None:
    # With keys on, a request without one is answered 401 at once; its trickling body
    # is not read on: the connection ends, well before any body deadline.
    worker = await start_worker(api_keys=KEY, body_timeout_seconds=60)
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: 1000000\r\n\r\n{"
    )
    async with asyncio.timeout(10):
        status, _, body = await read_answer(reader)
        assert status == 401
        assert json.loads(body)["code"] == errors.UNAUTHORIZED
        with contextlib.suppress(ConnectionError):
            for _ in range(20):  # trickling on, as the attack did
                writer.write(b" ")
                await asyncio.sleep(0.05)
        assert await closed(reader)
    writer.close()


# -- row 4: DNS rebinding ------------------------------------------------------------


async def test_a_host_the_worker_does_not_serve_is_refused_over_http_and_the_upgrade(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()  # no keys, no ALLOWED_HOSTS: the defaults
    rebound = {
        "host": "rebind.attacker.example:8001",
        "origin": "http://rebind.attacker.example:8001",
    }
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
        for method, path in [
            ("GET", "/v1/jobs"),
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("POST", "/v1/jobs"),
        ]:
            answer = await http.request(method, path, headers=rebound, json=job())
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json()["code"] == errors.HOST_NOT_ALLOWED
        # Without Origin too: the name alone is refused.
        answer = await http.get("/v1/jobs", headers={"host": "rebind.attacker.example"})
        assert answer.json()["code"] == errors.HOST_NOT_ALLOWED
        # The names a browser reaches the worker by on its own machine still work, the
        # console's own origin included.
        for host in (
            f"127.0.0.1:{worker.port}",
            f"localhost:{worker.port}",
            f"[::1]:{worker.port}",
        ):
            page = {"host": host, "origin": f"http://{host}"}
            assert (await http.post("/v1/jobs", json=job(), headers=page)).status_code == 201
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            "ws://rebind.attacker.example:8001/ws/",
            host="127.0.0.1",
            port=worker.port,
            origin=rebound["origin"],  # type: ignore[arg-type]
        ):
            pass
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body)["code"] == errors.HOST_NOT_ALLOWED


async def test_allowed_hosts_names_the_worker_s_names(start_worker: StartWorker) -> None:
    worker = await start_worker(allowed_hosts="worker.example, *.internal.example")
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        for host, status in [
            ("worker.example:8001", 200),
            ("WORKER.example.", 200),
            ("a.internal.example", 200),
            ("internal.example", 400),
            ("worker.example.attacker.example", 400),
            ("worker.example:x", 400),
        ]:
            answer = await http.get("/v1/jobs", headers={"host": host})
            assert answer.status_code == status, host
    anyone = await start_worker(allowed_hosts="*")
    async with httpx.AsyncClient(base_url=anyone.http_url) as http:
        assert (await http.get("/v1/catalog", headers={"host": "any.example"})).status_code == 200


# -- row 13: a text frame not UTF-8; a resume point past the end ---------------------


async def test_a_text_frame_not_utf8_closes_1007_with_one_info_line(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    worker = await start_worker()
    caplog.set_level(logging.DEBUG)
    async with websockets.connect(worker.ws_url) as ws:
        await ws.send(b"\xff\xfe not utf-8", text=True)
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1007
    lines = [r for r in caplog.records if r.levelno >= logging.INFO and "UTF-8" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and lines[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_resuming_past_the_end_of_a_running_job_still_ends_with_its_end(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = lambda body: Reply(tokens=[f" t{i}" for i in range(40)], delay=0.05)
    worker = await start_worker()
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        for headers, params in [({"Last-Event-ID": "1000"}, {}), ({}, {"after": "1000"})]:
            job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
            async with http.stream(
                "GET", f"/v1/jobs/{job_id}/events", headers=headers, params=params
            ) as stream:
                assert stream.status_code == 200
                text = "".join([chunk async for chunk in stream.aiter_text()])
            assert "event: done" in text, text[-300:]
        # Ended: at its last seq, nothing follows (204 stops EventSource); past it, the
        # client is wrong, and told where the log ends (tests/server/test_expired_jobs.py).
        last = max(int(line[4:]) for line in text.splitlines() if line.startswith("id: "))
        answer = await http.get(f"/v1/jobs/{job_id}/events", params={"after": str(last)})
        assert answer.status_code == 204
        answer = await http.get(f"/v1/jobs/{job_id}/events", params={"after": str(last + 5)})
        assert (answer.status_code, answer.json()["code"]) == (409, "after_beyond_end")


# -- row 17: an event stream whose path goes dark -----------------------------------


async def test_an_event_stream_whose_path_goes_dark_is_freed_while_its_job_runs(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    # 100-byte tokens for 30 s: little enough that the worker's own buffer never
    # fills (its writes never wait), enough to fill the small buffer of a reader
    # that stops reading.
    tokens = [f" {i:04d}" + "x" * 95 for i in range(1500)]
    upstream.handler = lambda body: Reply(tokens=tokens, delay=0.02)
    worker = await start_worker(slow_listener_seconds=1, sse_keepalive_seconds=0.5)
    streams = worker.app.state.gateway.streams
    async with (
        CuttingProxy(worker.port, worker_receive_buffer=4096) as proxy,
        httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http,
    ):
        job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
        assert b"event: running" in await asyncio.wait_for(reader.readuntil(b"event: running"), 10)
        assert streams
        proxy.black_hole()
        went_dark = asyncio.get_running_loop().time()
        for _ in range(300):  # 15 s at most
            if not streams:
                break
            await asyncio.sleep(0.05)
        assert not streams, "the stream is still relayed 15 s after its path went dark"
        freed_after = asyncio.get_running_loop().time() - went_dark
        # Freed mid-stream, by the worker: the job still runs.
        state = (await http.get(f"/v1/jobs/{job_id}")).json()["state"]
        assert state == "running", (state, freed_after)
        writer.close()
