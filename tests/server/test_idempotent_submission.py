"""Idempotent submission over a real server: ``Idempotency-Key`` on ``POST /v1/jobs``
and ``idempotency_key`` on a full-protocol ``add`` make one job per key, however many
adds race with it and on however many gateways; the model is called once."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.testing.redis_server import RedisServer, unique_prefix
from tests.conftest import ConnectClient, RunningWorker, StartWorker
from tests.support.sse import all_events
from tests.support.wsclient import WSClient, assistant, text_of

TOKENS = [" one", " two", " three"]


def job(query: str = "hello") -> dict[str, Any]:
    return {"query": query, "assistant": assistant()}


@pytest.fixture(autouse=True)
def replies(upstream: OpenAIServer) -> None:
    # Slow enough that the racing adds all arrive while the first job still runs.
    upstream.handler = lambda body: Reply(tokens=TOKENS, delay=0.02)


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


async def post(http: httpx.AsyncClient, body: dict[str, Any], key: str) -> httpx.Response:
    return await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})


async def test_racing_posts_with_one_key_make_one_job_and_one_model_call(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        answers = await asyncio.gather(*(post(http, job(), "order-42") for _ in range(5)))
        assert [answer.status_code for answer in answers] == [201] * 5
        bodies = [answer.json() for answer in answers]
        job_id = bodies[0]["job_id"]
        assert all(body["job_id"] == job_id for body in bodies)  # the first job, each time
        assert {body["state"] for body in bodies} <= {"pending", "running"}
        replayed = [answer.headers.get("idempotent-replayed") for answer in answers]
        assert sorted(replayed, key=str) == [None] + ["true"] * 4
        assert all(answer.headers["location"] == f"/v1/jobs/{job_id}" for answer in answers)
        frames = [event["data"] for event in await all_events(http, job_id)]
        assert text_of(frames) == "".join(TOKENS)
        # After its end too: the same job, no new one.
        late = await post(http, job(), "order-42")
        # The job as it stands now (it said "pending" while the job had run: the state
        # of the record the store kept with the key).
        assert late.status_code == 201 and late.json() == {"job_id": job_id, "state": "done"}
        assert late.headers["idempotent-replayed"] == "true"
        listing = await http.get("/v1/jobs")  # no keys: everyone is an admin
        assert [listed["job_id"] for listed in listing.json()["jobs"]] == [job_id]
    assert len(upstream.chat_requests) == 1


async def test_the_same_key_for_another_body_is_409_and_a_bad_key_400(
    worker: RunningWorker,
) -> None:
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        first = await post(http, job("first"), "k-1")
        assert first.status_code == 201
        # Reordered fields are the same request.
        reordered = {"assistant": assistant(), "query": "first"}
        assert (await post(http, reordered, "k-1")).json()["job_id"] == first.json()["job_id"]
        reused = await post(http, job("second"), "k-1")
        assert reused.status_code == 409
        error = reused.json()
        assert error["code"] == "idempotency_key_reused"
        assert first.json()["job_id"] in error["message"]
        too_long = await post(http, job(), "k" * 256)
        assert too_long.status_code == 400
        assert too_long.json()["code"] == "bad_request"
        assert "255" in too_long.json()["message"]
        # The key in the body, for a client that cannot set headers.
        in_body = await http.post("/v1/jobs", json=job("first") | {"idempotency_key": "k-1"})
        assert in_body.json()["job_id"] == first.json()["job_id"]
        # Checked even where the header wins.
        bad_body = await post(http, job("first") | {"idempotency_key": "caf\u00e9"}, "k-1")
        assert (bad_body.status_code, bad_body.json()["code"]) == (400, "bad_request")
        assert "idempotency_key" in bad_body.json()["message"]


async def test_two_gateways_on_one_redis_make_one_job(
    start_worker: StartWorker, upstream: OpenAIServer, redis_server: RedisServer
) -> None:
    shared = {"store_url": redis_server.url, "redis_prefix": unique_prefix()}
    one, two = await start_worker(**shared), await start_worker(**shared)
    async with (
        httpx.AsyncClient(base_url=one.http_url, timeout=30) as first,
        httpx.AsyncClient(base_url=two.http_url, timeout=30) as second,
    ):
        answers = await asyncio.gather(
            *(post(http, job(), "across") for http in (first, second, first, second))
        )
        assert {answer.status_code for answer in answers} == {201}
        job_ids = {answer.json()["job_id"] for answer in answers}
        assert len(job_ids) == 1
        assert sum(answer.headers.get("idempotent-replayed") == "true" for answer in answers) == 3
        frames = [event["data"] for event in await all_events(second, job_ids.pop())]
        assert frames[-1]["type"] == "done"
    assert len(upstream.chat_requests) == 1


async def test_a_websocket_add_with_a_key_twice_is_one_job(
    connect: ConnectClient, upstream: OpenAIServer
) -> None:
    client = await connect()
    job_id, messages = await client.run(idempotency_key="ws-key")
    assert text_of(messages) == "".join(TOKENS)
    again = await client.add("again", idempotency_key="ws-key")
    assert again == job_id
    other = await connect()
    assert await other.add("other", idempotency_key="ws-key") == job_id
    await other.send({"type": "add", "id": "clash", "query": "no", "assistant": assistant(),
                      "idempotency_key": "ws-key"})  # fmt: skip
    refused = await other.wait_for("error")
    assert (refused["code"], refused["ref"]) == ("idempotency_key_reused", "clash")
    await other.send({"type": "add", "id": "bad", "query": "q", "assistant": assistant(),
                      "idempotency_key": 7})  # fmt: skip
    bad = await other.wait_for("error")
    assert (bad["code"], bad["ref"]) == ("bad_request", "bad")
    assert "idempotency_key" in bad["message"]
    assert len(upstream.chat_requests) == 1


async def test_a_seed_client_is_unaffected_by_the_field(worker: RunningWorker) -> None:
    async with WSClient(worker.ws_url, seed=True) as seed:
        job_ids = []
        for request_id, key in (("a", "same"), ("b", "same"), ("c", 7), ("d", "k" * 999)):
            await seed.send({"type": "add", "id": request_id, "query": "q",
                             "assistant": assistant(), "idempotency_key": key})  # fmt: skip
            reply = await seed.wait_for("resp_add")
            assert reply == {"type": "resp_add", "id": request_id, "job_id": reply["job_id"]}
            job_ids.append(reply["job_id"])
            done = await seed.wait_for("done")
            assert done["job_id"] == reply["job_id"]
        assert len(set(job_ids)) == 4  # the key is nothing to the seed's dialect


async def test_a_key_outlives_a_kill_on_sqlite(upstream: OpenAIServer, tmp_path: Path) -> None:
    """kill -9 after the first add's job ran: the restarted worker, on the same file,
    answers a retry of the add with that job, and calls the model for nothing."""
    env = clean_env(LISTEN_PORT="0", STORE_URL="sqlite:///jobs.db", OPENAI_API_KEY="k")
    env["OPENAI_BASE_URL"] = upstream.base_url
    async with processes() as started:
        started.append(await WorkerProcess.start(env, tmp_path))
        url = f"http://127.0.0.1:{started[-1].port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            first = await post(http, job(), "crash-key")
            assert first.status_code == 201
            await all_events(http, first.json()["job_id"])  # it ran, and ended
        started[-1].kill()
        await started[-1].process.wait()

        started.append(await WorkerProcess.start(env, tmp_path))
        url = f"http://127.0.0.1:{started[-1].port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            again = await post(http, job(), "crash-key")
            assert again.status_code == 201
            assert again.json()["job_id"] == first.json()["job_id"]
            assert again.headers["idempotent-replayed"] == "true"
            frames = [event["data"] for event in await all_events(http, first.json()["job_id"])]
            assert frames[-1]["type"] == "done"
            assert (await post(http, job("other"), "crash-key")).status_code == 409
    assert len(upstream.chat_requests) == 1


async def test_another_webhook_with_the_same_key_is_another_request(
    start_worker: StartWorker,
) -> None:
    """A job's webhook is kept beside its spec, and is part of what was asked: a retry
    naming another is refused, one naming the same is the first job."""
    secret = "whsec_" + base64.b64encode(b"idempotency-test-secret-32bytes!").decode()
    worker = await start_worker(webhook_secret=secret, webhook_allow_private_targets=True)
    hook = {"webhook": "http://127.0.0.1:9/first"}
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        first = await post(http, job() | hook, "hooked")
        assert first.status_code == 201
        again = await post(http, job() | hook, "hooked")
        assert again.headers["idempotent-replayed"] == "true"
        other = await post(http, job() | {"webhook": "http://127.0.0.1:9/other"}, "hooked")
        assert (other.status_code, other.json()["code"]) == (409, "idempotency_key_reused")
        none = await post(http, job(), "hooked")
        assert none.status_code == 409
