"""The HTTP API over a real server: jobs created, read, cancelled and streamed as
Server-Sent Events that resume without loss or duplication, errors with the
WebSocket's messages and HTTP's status codes, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from llm_worker.server.access import key_hash
from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from tests.conftest import RunningWorker, StartWorker
from tests.support.sse import all_events, events
from tests.support.wsclient import WSClient, assistant, text_of

TOKENS = [f" t{i}" for i in range(20)]
FULL = "".join(TOKENS)
ALICE = "key-of-alice-0123456789"
BOB = "key-of-bob-9876543210"


def job(query: str = "hello", **fields: Any) -> dict[str, Any]:
    return {"query": query, "assistant": assistant()} | fields


@pytest.fixture
async def http(worker: RunningWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as client:
        yield client


@pytest.fixture(autouse=True)
def replies(upstream: OpenAIServer) -> None:
    upstream.handler = lambda body: Reply(tokens=TOKENS, delay=0.005)


async def test_a_job_created_over_http_streams_as_server_sent_events(
    http: httpx.AsyncClient,
) -> None:
    created = await http.post("/v1/jobs", json=job())
    assert created.status_code == 201
    body = created.json()
    job_id = body["job_id"]
    assert body["state"] == "pending"
    assert "listen_token" not in body  # no keys configured
    assert created.headers["location"] == f"/v1/jobs/{job_id}"
    seen = await all_events(http, job_id)
    frames = [event["data"] for event in seen]
    assert [event["event"] for event in seen] == [frame["type"] for frame in frames]
    assert frames[0] == {"type": "running", "job_id": job_id, "message": "", "seq": 1}
    assert frames[-1]["type"] == "done"
    assert text_of(frames) == FULL
    seqs = [int(event["id"]) for event in seen]
    assert seqs == [frame["seq"] for frame in frames]
    assert seqs == sorted(set(seqs))
    status = (await http.get(f"/v1/jobs/{job_id}")).json()
    done = frames[-1]
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == len(TOKENS)
    assert status == {
        "type": "status",
        "job_id": job_id,
        "state": "done",
        "output": FULL,
        "usage": done["usage"],
        "finish_reason": "stop",
        "providers": ["openai"],
    }


async def test_events_resume_after_last_event_id_or_after_without_loss_or_duplicate(
    http: httpx.AsyncClient, upstream: OpenAIServer
) -> None:
    upstream.handler = lambda body: Reply(tokens=TOKENS, delay=0.05)
    job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
    first: list[dict[str, Any]] = []
    async for event in events(http, job_id):
        first.append(event)
        if len(first) == 4:
            break  # the stream drops mid-answer
    last_id = first[-1]["id"]
    # As EventSource reconnects: the header wins over the URL it started with.
    rest = await all_events(http, job_id, headers={"Last-Event-ID": last_id}, after=0)
    assert int(rest[0]["id"]) > int(last_id)
    assert text_of([e["data"] for e in first + rest]) == FULL
    assert rest[-1]["event"] == "done"
    # And with ?after= from a page that kept the seq itself.
    tail = await all_events(http, job_id, after=10)
    assert text_of([e["data"] for e in tail]) == "".join(TOKENS[9:])


async def test_past_the_end_of_a_finished_job_the_answer_is_204(http: httpx.AsyncClient) -> None:
    job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
    done = (await all_events(http, job_id))[-1]
    assert done["event"] == "done"
    # 204 tells EventSource to stop reconnecting.
    again = await http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": done["id"]})
    assert again.status_code == 204
    assert again.content == b""


async def test_a_waiting_job_streams_its_place_in_the_queue(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = lambda body: Reply(tokens=TOKENS, delay=0.02)
    worker = await start_worker(worker_concurrency=1)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        running = (await http.post("/v1/jobs", json=job("first"))).json()["job_id"]
        waiting = (await http.post("/v1/jobs", json=job("second"))).json()["job_id"]
        seen = await all_events(http, waiting)
        assert seen[0]["event"] == "pending"
        assert "id" not in seen[0]  # no seq: a resume point is never a position
        assert seen[0]["data"] == {"type": "pending", "job_id": waiting, "position": 1}
        assert seen[-1]["event"] == "done"
        assert (await http.get(f"/v1/jobs/{running}")).json()["state"] == "done"


async def test_cancel_ends_the_stream_and_cancelling_a_finished_job_is_a_conflict(
    http: httpx.AsyncClient, upstream: OpenAIServer
) -> None:
    upstream.handler = lambda body: Reply(tokens=TOKENS * 50, delay=0.05)
    job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
    stream = events(http, job_id)
    async for event in stream:
        if event["data"].get("message"):
            break  # it is producing text
    cancelled = await http.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json() == {"type": "cancelled", "job_id": job_id}
    rest = [event async for event in stream]
    assert rest[-1]["event"] == "cancelled"
    # Cancelling is idempotent; a job that ended otherwise cannot be cancelled.
    again = await http.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200
    assert (await http.get(f"/v1/jobs/{job_id}")).json()["state"] == "cancelled"
    upstream.handler = lambda body: Reply(tokens=TOKENS)
    finished = (await http.post("/v1/jobs", json=job())).json()["job_id"]
    assert (await all_events(http, finished))[-1]["event"] == "done"
    conflict = await http.post(f"/v1/jobs/{finished}/cancel")
    assert conflict.status_code == 409
    assert conflict.json() == {
        "type": "error",
        "code": "job_ended",
        "message": f"job {finished} already ended (done); nothing to cancel",
    }


async def test_errors_are_json_with_the_websockets_messages(
    http: httpx.AsyncClient, client: WSClient
) -> None:
    bad_template = {"query": "q", "assistant": {"streams": [{"provider": "nope", "settings": {}}]}}
    refused = await http.post("/v1/jobs", json=bad_template)
    await client.send({"type": "add", "id": 1, **bad_template})
    over_ws = await client.recv()
    assert refused.status_code == 400
    assert refused.json() == {"type": "error", "code": "invalid_job", "message": over_ws["message"]}
    unknown_provider = await http.post("/v1/jobs", json=job(assistant=assistant(provider="nope")))
    assert unknown_provider.status_code == 400
    assert "nope" in unknown_provider.json()["message"]
    not_json = await http.post(
        "/v1/jobs", content=b"{", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400
    assert not_json.json()["message"].startswith("not valid JSON")
    assert not_json.json()["code"] == "invalid_json"
    assert (await http.post("/v1/jobs", json=[1])).json()["code"] == "invalid_json"
    missing = await http.post("/v1/jobs", json={"query": "q"})
    assert missing.json()["message"] == "invalid 'add' request: missing field 'assistant'"
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/events"):
        unknown = await http.get(path)
        assert unknown.status_code == 404
        assert unknown.json() == {
            "type": "error",
            "code": "job_not_found",
            "message": "unknown job_id 'nope'",
        }
    assert (await http.post("/v1/jobs/nope/cancel")).status_code == 404
    bad_resume = await http.get("/v1/jobs/nope/events", params={"after": "-1"})
    assert bad_resume.status_code == 400
    assert "after must be a seq" in bad_resume.json()["message"]
    assert bad_resume.json()["code"] == "bad_request"


async def test_a_body_too_large_is_refused_413_without_being_read(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(max_message_bytes=10_000)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        declared = await http.post("/v1/jobs", json=job("x" * 20_000))
        assert declared.status_code == 413
        assert "MAX_MESSAGE_BYTES" in declared.json()["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as it comes
            for _ in range(100):
                yield b"x" * 1000

        chunked = await http.post("/v1/jobs", content=chunks())
        assert chunked.status_code == 413
        assert (await http.post("/v1/jobs", json=job())).status_code == 201


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(
        f'[tenants.alice]\nkeys = ["{key_hash(ALICE)}"]\nadds_per_minute = 3\n'
        f'[tenants.bob]\nkeys = ["{key_hash(BOB)}"]\n'
    )
    return path


async def test_keys_tenants_and_listen_tokens_hold_over_http(
    start_worker: StartWorker, keys_file: Path
) -> None:
    worker = await start_worker(api_keys_file=keys_file)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        anonymous = await http.post("/v1/jobs", json=job())
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert "API key is needed" in anonymous.json()["message"]
        alice = {"authorization": f"Bearer {ALICE}"}
        created = (await http.post("/v1/jobs", json=job(), headers=alice)).json()
        job_id, token = created["job_id"], created["listen_token"]
        # Another tenant does not see the job at all.
        bob = {"authorization": f"Bearer {BOB}"}
        assert (await http.get(f"/v1/jobs/{job_id}", headers=bob)).status_code == 404
        assert (await http.post(f"/v1/jobs/{job_id}/cancel", headers=bob)).status_code == 404
        # The listen token streams the job (as a page would: in the URL) and nothing else.
        seen = await all_events(http, job_id, access_token=token)
        assert text_of([e["data"] for e in seen]) == FULL
        by_token = {"authorization": f"Bearer {token}"}
        assert (await http.get(f"/v1/jobs/{job_id}", headers=by_token)).status_code == 200
        refused = await http.post("/v1/jobs", json=job(), headers=by_token)
        assert refused.status_code == 403
        assert refused.json()["message"].startswith("a listen token may only listen")
        assert (await http.post(f"/v1/jobs/{job_id}/cancel", headers=by_token)).status_code == 403
        # Alice adds 3 jobs a minute: the fourth waits.
        for _ in range(2):
            assert (await http.post("/v1/jobs", json=job(), headers=alice)).status_code == 201
        limited = await http.post("/v1/jobs", json=job(), headers=alice)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert "may add 3 jobs a minute" in limited.json()["message"]


async def test_a_full_queue_is_503_with_retry_after(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = lambda body: Reply(tokens=TOKENS, delay=0.2)
    worker = await start_worker(worker_concurrency=1, queue_max=1)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        statuses = [(await http.post("/v1/jobs", json=job())).status_code for _ in range(4)]
        full = await http.post("/v1/jobs", json=job())
    assert statuses[0] == 201
    assert full.status_code == 503
    assert full.headers["retry-after"] == "1"
    assert full.json()["message"].startswith("the queue is full")


async def test_allowed_origins_get_cors_and_others_are_refused(start_worker: StartWorker) -> None:
    worker = await start_worker(allowed_origins="https://app.example")
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        preflight = await http.options(
            "/v1/jobs",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        created = await http.post("/v1/jobs", json=job(), headers={"origin": "https://app.example"})
        assert created.status_code == 201
        assert created.headers["access-control-allow-origin"] == "https://app.example"
        other = await http.post("/v1/jobs", json=job(), headers={"origin": "https://evil.example"})
        assert other.status_code == 403


async def test_an_event_stream_left_unread_is_cut_and_resumes_losing_nothing(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    # Far more than every buffer between the two can hold: 6 MB of text.
    tokens = [f" {i:04d}" + "x" * 995 for i in range(6000)]
    upstream.handler = lambda body: Reply(tokens=tokens)
    worker = await start_worker(slow_listener_seconds=1)
    streams = worker.app.state.gateway.streams
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", worker.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.transport.pause_reading()  # reads nothing
        writer.write(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
        # The stream is relayed, then cut once left unread for a second; meanwhile
        # others are served.
        for _ in range(600):
            if streams:
                break
            await asyncio.sleep(0.05)
        assert streams
        for _ in range(600):
            assert (await http.get("/healthz")).status_code == 200
            if not streams:
                break
            await asyncio.sleep(0.05)
        assert not streams
        writer.transport.resume_reading()
        received = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 30):
                received += chunk
        except ConnectionResetError:
            pass  # hung up on: what it had taken in is all it gets
        writer.close()
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert b"event: done" not in received  # cut before the end
        seqs = [int(line[4:]) for line in received.split(b"\n") if line.startswith(b"id: ")]
        last_id = max(seqs, default=0)
        rest = await all_events(http, job_id, headers={"Last-Event-ID": str(last_id)})
        assert rest[-1]["event"] == "done"
        assert int(rest[0]["id"]) > last_id
        assert text_of([event["data"] for event in rest]).endswith(tokens[-1])


async def test_the_openapi_document_is_valid_and_describes_every_route(
    http: httpx.AsyncClient,
) -> None:
    document = (await http.get("/openapi.json")).json()
    validate(document)
    assert set(document["paths"]) == {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/cancel",
        "/v1/catalog",
        "/v1/models",
        "/v1/models/{model_id}",
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/v1/responses/{response_id}/cancel",
        "/v1/responses/{response_id}/input_items",
    }
    job_schema = document["components"]["schemas"]["JobRequest"]
    assert set(job_schema["required"]) == {"query", "assistant"}
    assert "type" not in job_schema["properties"]


async def test_an_event_stream_resumed_after_kill_9_shows_the_reset_then_the_new_attempt(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    upstream.handler = lambda body: Reply(tokens=TOKENS, delay=0.1)
    env = clean_env(
        LISTEN_PORT="0", STORE_URL="sqlite:///jobs.db", OPENAI_API_KEY="k",
        OPENAI_BASE_URL=upstream.base_url,
    )  # fmt: skip
    async with processes() as started:
        first = await WorkerProcess.start(env, tmp_path)
        started.append(first)
        before: list[dict[str, Any]] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.port}") as http:
            job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
            with contextlib.suppress(httpx.HTTPError):
                async for event in events(http, job_id):
                    before.append(event)
                    if len(before) == 4:
                        first.kill()  # mid-answer: the stream breaks off
        await first.process.wait()
        assert [e["data"]["type"] for e in before[:2]] == ["running", "running"]
        second = await WorkerProcess.start(env, tmp_path)
        started.append(second)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{second.port}") as http:
            rest = await all_events(http, job_id, headers={"Last-Event-ID": before[-1]["id"]})
    frames = [e["data"] for e in rest]
    assert frames[0]["type"] == "reset" and frames[0]["attempt"] == 2
    assert int(rest[0]["id"]) > int(before[-1]["id"])
    assert frames[-1]["type"] == "done"
    assert text_of(frames[1:]) == FULL  # the new attempt, whole, after the reset


async def test_jobs_are_listed_newest_first_by_state_and_limit(http: httpx.AsyncClient) -> None:
    first = (await http.post("/v1/jobs", json=job())).json()["job_id"]
    await all_events(http, first)
    second = (await http.post("/v1/jobs", json=job())).json()["job_id"]
    await all_events(http, second)
    listed = await http.get("/v1/jobs")  # without keys, anyone may
    assert listed.status_code == 200
    jobs = listed.json()["jobs"]
    assert [j["job_id"] for j in jobs] == [second, first]
    assert set(jobs[0]) == {
        "job_id", "state", "created_at", "finished_at", "attempt", "error", "tenant",
    }  # fmt: skip
    assert (jobs[1]["state"], jobs[1]["attempt"], jobs[1]["error"], jobs[1]["tenant"]) == (
        "done", 1, None, "",
    )  # fmt: skip
    assert jobs[1]["created_at"] <= jobs[1]["finished_at"] <= jobs[0]["created_at"]
    one = (await http.get("/v1/jobs", params={"limit": 1, "state": "done"})).json()["jobs"]
    assert [j["job_id"] for j in one] == [second]
    assert (await http.get("/v1/jobs", params={"state": "failed"})).json() == {"jobs": []}
    for params, words in [
        ({"state": "finished"}, "state must be one of pending, running, done, failed, cancelled"),
        ({"limit": 501}, "limit must be a whole number from 1 to 500"),
        ({"limit": 0}, "limit must be a whole number from 1 to 500"),
        ({"limit": "ten"}, "limit must be a whole number from 1 to 500, not 'ten'"),
        ({"limit": "²"}, "limit must be a whole number from 1 to 500"),
        ({"limit": "9" * 5000}, "limit must be a whole number from 1 to 500"),
    ]:
        refused = await http.get("/v1/jobs", params=params)
        assert refused.status_code == 400, params
        assert refused.json()["type"] == "error" and words in refused.json()["message"]


async def test_the_listing_pages_with_a_cursor(http: httpx.AsyncClient) -> None:
    made = [(await http.post("/v1/jobs", json=job())).json()["job_id"] for _ in range(7)]
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = (await http.get("/v1/jobs", params=params)).json()
        seen += [j["job_id"] for j in page["jobs"]]
        await http.post("/v1/jobs", json=job())  # newer: it shifts no page
        if "next" not in page:
            break
        params["cursor"] = page["next"]
    assert seen == made[::-1]
    assert len(seen) == 7  # three pages: 3, 3, 1, the last without a next
    for cursor in ["", "x", "1e5_abc", "12_" + "a" * 65, "12_a b", "12.5"]:
        refused = await http.get("/v1/jobs", params={"cursor": cursor})
        assert refused.status_code == 400, cursor
        body = refused.json()
        assert body["code"] == "bad_request"
        assert "cursor must be the 'next' of a page of this listing" in body["message"]
    # A cursor is a place in the listing: one below every job lists nothing.
    empty = await http.get("/v1/jobs", params={"cursor": "0_0"})
    assert empty.json() == {"jobs": []}


async def test_only_an_admin_key_lists_every_tenant_s_jobs(
    start_worker: StartWorker, keys_file: Path
) -> None:
    admin = "key-of-the-admin-0123456789"
    worker = await start_worker(
        api_keys_file=keys_file, api_keys=admin, admin_keys=f"sha256:{key_hash(admin)}"
    )
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        alice = {"authorization": f"Bearer {ALICE}"}
        bob = {"authorization": f"Bearer {BOB}"}
        alice_job = (await http.post("/v1/jobs", json=job(), headers=alice)).json()
        await all_events(http, alice_job["job_id"], headers=alice)
        bob_job = (await http.post("/v1/jobs", json=job(), headers=bob)).json()["job_id"]
        assert (await http.get("/v1/jobs")).status_code == 401
        for credential in (alice, bob, {"authorization": f"Bearer {alice_job['listen_token']}"}):
            refused = await http.get("/v1/jobs", headers=credential)
            assert refused.status_code == 403
            assert refused.json() == {
                "type": "error",
                "code": "admin_only",
                "message": "only an admin key may list jobs",
            }
        listed = await http.get("/v1/jobs", headers={"authorization": f"Bearer {admin}"})
        assert listed.status_code == 200
        jobs = listed.json()["jobs"]
        assert [(j["job_id"], j["tenant"]) for j in jobs] == [
            (bob_job, "bob"),
            (alice_job["job_id"], "alice"),
        ]
        assert jobs[1]["state"] == "done"


async def test_the_catalog_names_what_templates_may_use(
    start_worker: StartWorker, keys_file: Path
) -> None:
    worker = await start_worker(api_keys_file=keys_file)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        assert (await http.get("/v1/catalog")).status_code == 401
        answer = await http.get("/v1/catalog", headers={"authorization": f"Bearer {ALICE}"})
        assert answer.status_code == 200
        catalog = answer.json()
        # openai is configured (a key and a URL); vllm is not: a template may not name it.
        assert "openai" in catalog["providers"] and "vllm" not in catalog["providers"]
        assert {"history", "history_summary"} <= set(catalog["inserts"])
        assert "echo" in catalog["pipelines"]
        assert all(names == sorted(names) for names in catalog.values())
        alice = {"authorization": f"Bearer {ALICE}"}
        token = (await http.post("/v1/jobs", json=job(), headers=alice)).json()["listen_token"]
        by_token = await http.get("/v1/catalog", headers={"authorization": f"Bearer {token}"})
        assert by_token.status_code == 403


async def test_a_resume_point_that_is_no_seq_is_a_400_not_an_internal_error(
    http: httpx.AsyncClient,
) -> None:
    job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
    for after in ["²", "9" * 5000, "9" * 19, "-1", ""]:
        refused = await http.get(f"/v1/jobs/{job_id}/events", params={"after": after})
        assert refused.status_code == 400, after
        assert refused.json()["message"].startswith("after must be a seq, a whole number from 0")
    refused = await http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "1e3"})
    assert refused.status_code == 400
