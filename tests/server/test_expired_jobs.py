"""Retention you can see, over a real server on each store: a job whose TTL passed is
``410 expired`` (an ``error`` with code ``expired`` on the WebSocket, OpenAI's
``NotFoundError`` with code ``expired`` on its doors), a job that never was ``404
job_not_found``, a seed client is told what it always was, and once the tombstone's
time is up an expired job is unknown too. A resume point past the end of a job that
ended is a 400 that says where the log ends."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from llm_worker.client import Client, JobExpired, JobNotFound
from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import StartWorker
from tests.support.sse import all_events
from tests.support.waiting import eventually
from tests.support.wsclient import WSClient, assistant

TTL = 0.4
TOMBSTONE = 4.0  # long enough for the checks below to run before it goes, on a busy machine
NEVER = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(autouse=True)
def replies(upstream: OpenAIServer) -> None:
    upstream.handler = lambda body: Reply(tokens=[" a", " b"], delay=0.001)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def job() -> dict[str, Any]:
    return {"query": "hello", "assistant": assistant()}


async def test_an_expired_job_is_410_and_one_never_known_404(start_worker: StartWorker) -> None:
    worker = await start_worker(job_ttl_seconds=TTL, tombstone_seconds=TOMBSTONE)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
        await all_events(http, job_id)
        assert (await http.get(f"/v1/jobs/{job_id}")).status_code in (200, 410)

        async def expired() -> bool:
            return (await http.get(f"/v1/jobs/{job_id}")).status_code == 410

        await eventually(expired, what="the job's expiry")
        for method, path in (
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
        ):
            answer = await http.request(method, path)
            assert answer.status_code == 410, (method, path)
            body = answer.json()
            assert body["code"] == "expired"
            assert "expired" in body["message"] and "JOB_TTL_SECONDS" in body["message"]
            never = await http.request(method, path.replace(job_id, NEVER))
            assert never.status_code == 404
            assert never.json()["code"] == "job_not_found"

        await expired_on_the_websocket(worker.ws_url, job_id)
        await expired_to_the_client(worker.ws_url, job_id)

        async def unknown() -> bool:
            return (await http.get(f"/v1/jobs/{job_id}")).status_code == 404

        # The tombstone goes in its turn: then the job is unknown, as if it never was.
        await eventually(unknown, timeout=TOMBSTONE + 10, what="the tombstone's expiry")
        assert (await http.get(f"/v1/jobs/{job_id}")).json()["code"] == "job_not_found"


async def expired_on_the_websocket(url: str, job_id: str) -> None:
    async with WSClient(url) as client:
        for request in ("listen", "status", "cancel"):
            await client.send({"type": request, "job_id": job_id})
            error = await client.wait_for("error")
            assert (error["code"], error["ref"]) == ("expired", job_id), request
            await client.send({"type": request, "job_id": NEVER})
            error = await client.wait_for("error")
            assert (error["code"], error["ref"]) == ("job_not_found", NEVER), request
    # The seed's client is told what it always was of a job it cannot have: unknown.
    async with WSClient(url, seed=True) as seed:
        await seed.send({"type": "listen", "job_id": job_id})
        assert await seed.recv() == {
            "type": "failed",
            "job_id": job_id,
            "message": f"unknown job_id {job_id!r}",
        }


async def expired_to_the_client(url: str, job_id: str) -> None:
    """The Python client ends a follow of an expired job with :class:`JobExpired` (a
    :class:`JobNotFound`), not as news of a job that goes on."""
    async with Client(url, give_up_after=5) as client:
        with pytest.raises(JobExpired):
            await asyncio.wait_for(client.job(job_id).text(), 10)
        with pytest.raises(JobNotFound) as never:
            await asyncio.wait_for(client.job(NEVER).text(), 10)
        assert not isinstance(never.value, JobExpired)
        with pytest.raises(JobExpired):
            await client.status(job_id)


async def test_an_expired_response_is_openai_not_found_with_code_expired(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(job_ttl_seconds=TTL, tombstone_seconds=TOMBSTONE)
    client = AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="unused", max_retries=0)
    response = await client.responses.create(model="gpt-test", input="Hello")
    assert response.status == "completed"

    async def expired() -> openai.NotFoundError | None:
        try:
            await client.responses.retrieve(response.id)
        except openai.NotFoundError as exc:
            return exc
        return None

    gone = await eventually(expired, what="the response's expiry")
    assert gone.status_code == 404
    assert gone.code == "expired"
    assert "expired" in gone.message
    with pytest.raises(openai.NotFoundError) as never:
        await client.responses.retrieve("resp_" + NEVER)
    assert never.value.code == "job_not_found"


async def test_resuming_past_the_end_of_a_job_that_ended_says_where_it_ends(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
        last = int((await all_events(http, job_id))[-1]["id"])
        events = f"/v1/jobs/{job_id}/events"
        # At the end: EventSource's stop.
        assert (await http.get(events, params={"after": last})).status_code == 204
        assert (await http.get(events, headers={"Last-Event-ID": str(last)})).status_code == 204
        for beyond in (
            await http.get(events, params={"after": last + 5}),
            await http.get(events, headers={"Last-Event-ID": str(last + 1)}),
        ):
            assert beyond.status_code == 409
            error = beyond.json()
            assert error["code"] == "after_beyond_end"
            assert f"at seq {last}" in error["message"]
