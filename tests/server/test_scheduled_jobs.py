"""Scheduled jobs over a real server, with a real worker and the loopback model: a
job given ``delay`` or ``run_at`` is ``scheduled`` until then and starts after it
(not before), on every store; it can be cancelled before it starts; the seed's
dialect knows nothing of the fields; bad times are refused."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import ConnectClient, RunningWorker
from tests.support.sse import all_events
from tests.support.wsclient import WSClient, assistant, text_of

TOKENS = [" later", " on"]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def model_calls(upstream: OpenAIServer) -> list[float]:
    """When (``time.monotonic()``) the model was called, call by call."""
    calls: list[float] = []

    def reply(body: dict[str, Any]) -> Reply:
        calls.append(time.monotonic())
        return Reply(tokens=TOKENS)

    upstream.handler = reply
    return calls


def job(**fields: Any) -> dict[str, Any]:
    return {"query": "hello", "assistant": assistant(), **fields}


def rfc3339(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat()


async def test_a_job_with_a_delay_starts_after_it(
    worker: RunningWorker, model_calls: list[float]
) -> None:
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        posted_at, before = time.monotonic(), time.time()
        created = await http.post("/v1/jobs", json=job(delay=2))
        after = time.time()
        assert created.status_code == 201, created.text
        assert created.json()["state"] == "scheduled"
        job_id = created.json()["job_id"]
        status = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert status["state"] == "scheduled"
        run_at = datetime.fromisoformat(status["run_at"]).timestamp()
        assert before + 2 - 0.001 <= run_at <= after + 2 + 0.001
        assert "position" not in status  # no place in the queue until it is due
        frames = [event["data"] for event in await all_events(http, job_id)]
        assert text_of(frames) == "".join(TOKENS)
        assert len(model_calls) == 1
        assert 1.9 <= model_calls[0] - posted_at < 4.0, model_calls[0] - posted_at
        assert (await http.get(f"/v1/jobs/{job_id}")).json()["state"] == "done"
        # It waited in the queue from its time on, not from its add.
        metrics = (await http.get("/metrics")).text
        waited = re.search(r"^llm_worker_queue_wait_seconds_sum (\S+)$", metrics, re.MULTILINE)
        assert waited is not None and float(waited.group(1)) < 1.5, waited


async def test_a_scheduled_job_cancelled_before_it_starts_never_runs(
    worker: RunningWorker, model_calls: list[float]
) -> None:
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        job_id = (await http.post("/v1/jobs", json=job(delay=1))).json()["job_id"]
        cancelled = await http.post(f"/v1/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        await asyncio.sleep(1.5)
        assert (await http.get(f"/v1/jobs/{job_id}")).json()["state"] == "cancelled"
        # The worker is free, and runs the next job at once.
        next_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
        frames = [event["data"] for event in await all_events(http, next_id)]
        assert text_of(frames) == "".join(TOKENS)
    assert len(model_calls) == 1


async def test_an_idempotent_scheduled_add_answers_the_same_twice(
    worker: RunningWorker, model_calls: list[float]
) -> None:
    body = job(run_at=rfc3339(1))
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        answers = [
            await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "at-nine"})
            for _ in range(2)
        ]
        assert [answer.status_code for answer in answers] == [201, 201]
        assert answers[0].json() == answers[1].json()
        assert answers[1].json()["state"] == "scheduled"
        assert answers[1].headers["idempotent-replayed"] == "true"
        frames = [event["data"] for event in await all_events(http, answers[0].json()["job_id"])]
        assert text_of(frames) == "".join(TOKENS)
    assert len(model_calls) == 1


async def test_a_full_protocol_add_with_run_at(
    connect: ConnectClient, model_calls: list[float]
) -> None:
    client = await connect()
    added_at = time.monotonic()
    job_id = await client.add(run_at=rfc3339(1.5))
    await client.send({"type": "status", "id": "s", "job_id": job_id})
    status = await client.wait_for("status")
    assert status["state"] == "scheduled" and "run_at" in status
    messages = await client.job_messages(job_id)
    assert text_of(messages) == "".join(TOKENS)
    assert model_calls[0] - added_at >= 1.4
    # A run_at already past: at once.
    past = await client.add("past", run_at=rfc3339(-60))
    await client.send({"type": "status", "id": "s2", "job_id": past})
    assert (await client.wait_for("status"))["state"] in ("pending", "running", "done")


@pytest.mark.parametrize("store_kind", ["memory"])
async def test_a_seed_client_is_unaffected_by_the_fields(
    worker: RunningWorker, model_calls: list[float]
) -> None:
    async with WSClient(worker.ws_url, seed=True) as seed:
        started = time.monotonic()
        await seed.send({"type": "add", "id": "a", "query": "q", "assistant": assistant(),
                         "delay": 60, "run_at": "not a time"})  # fmt: skip
        reply = await seed.wait_for("resp_add")
        assert reply == {"type": "resp_add", "id": "a", "job_id": reply["job_id"]}
        done = await seed.wait_for("done")
        assert done["job_id"] == reply["job_id"]
    assert time.monotonic() - started < 10  # not 60 s later


async def test_a_seed_listener_of_a_scheduled_job_just_waits(
    connect: ConnectClient, worker: RunningWorker, model_calls: list[float]
) -> None:
    client = await connect()
    job_id = await client.add(delay=1)
    async with WSClient(worker.ws_url, seed=True) as seed:
        await seed.send({"type": "listen", "job_id": job_id})
        messages = await seed.job_messages(job_id)
    assert {message["type"] for message in messages} <= {"running", "done"}
    assert text_of(messages) == "".join(TOKENS)
    assert len(model_calls) == 1


@pytest.mark.parametrize("store_kind", ["memory"])
@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"delay": 1, "run_at": rfc3339(5)}, "not both"),
        ({"delay": -1}, "delay"),
        ({"delay": 31 * 86400}, "delay"),
        ({"delay": "5"}, "delay"),
        ({"delay": True}, "delay"),
        ({"run_at": "tomorrow"}, "RFC 3339"),
        ({"run_at": "2026-12-08T09:30:00"}, "offset"),
        ({"run_at": 1796688000}, "RFC 3339"),
    ],
)
async def test_bad_times_are_refused(
    worker: RunningWorker, fields: dict[str, Any], says: str
) -> None:
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        refused = await http.post("/v1/jobs", json=job(**fields))
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "invalid_job"
        assert says in refused.json()["message"]
