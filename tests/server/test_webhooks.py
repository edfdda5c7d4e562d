"""Webhooks end to end: a real worker tells a real receiving HTTP server of each job's end,
signed so that the Standard Webhooks package verifies it, retried with the same id,
shown in the job's status, counted in /metrics; bad targets refused to their client."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from llm_worker.config import ConfigError
from llm_worker.running.webhooks import webhook_settings
from llm_worker.server.access import key_hash, load_access
from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import RunningWorker, StartWorker
from tests.ops.test_metrics import promtool_lint
from tests.support.servers import make_settings
from tests.support.webhook_receiver import Receiver, receiving
from tests.support.wsclient import WSClient, assistant

SECRET = "whsec_" + base64.b64encode(b"webhook-test-secret-32-bytes!!!!").decode()
FAST = {
    "webhook_secret": SECRET,
    "webhook_allow_private_targets": True,
    "webhook_retry_schedule": "0.2,0.2,0.2",
}


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as running:
        yield running


def job(query: str = "hello", **fields: Any) -> dict[str, Any]:
    return {"query": query, "assistant": assistant()} | fields


async def status(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    reply = await http.get(f"/v1/jobs/{job_id}")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def settled(http: httpx.AsyncClient, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The job's status once its webhook's delivery has settled."""
    deadline = time.monotonic() + timeout
    while True:
        shown = await status(http, job_id)
        if shown.get("webhook", {}).get("state") in ("delivered", "given_up"):
            return shown
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.05)


async def test_a_job_s_end_is_delivered_signed(
    start_worker: StartWorker, receiver: Receiver
) -> None:
    worker = await start_worker(**FAST)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        reply = await http.post("/v1/jobs", json=job("say this", webhook=receiver.url))
        assert reply.status_code == 201, reply.text
        job_id = reply.json()["job_id"]
        (delivery,) = await receiver.wait_for(1)
        payload = Webhook(SECRET).verify(delivery.body, delivery.headers)
        assert delivery.method == "POST" and delivery.path == "/hook"
        assert delivery.headers["webhook-id"].startswith("msg_")
        assert payload["type"] == "job.done"
        data = payload["data"]
        assert (data["job_id"], data["state"], data["error"]) == (job_id, "done", None)
        assert data["output"] == "Echo: say this"  # the loopback model echoes the query
        assert data["message"]["content"] == "Echo: say this"
        assert data["usage"]["completion_tokens"] > 0
        shown = (await settled(http, job_id))["webhook"]
        assert shown["state"] == "delivered" and shown["attempts"] == 1
        assert (shown["last_status"], shown["last_response"]) == (200, "received")
        assert shown["webhook_id"] == delivery.headers["webhook-id"]
        assert shown["next_attempt_at"] is None
        metrics = (await http.get("/metrics")).text
        assert 'llm_worker_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics


async def test_a_failing_receiver_gets_the_same_delivery_again(
    start_worker: StartWorker,
) -> None:
    async with receiving(Receiver(statuses=[500, 500])) as receiver:
        worker = await start_worker(**FAST)
        async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
            reply = await http.post("/v1/jobs", json=job(webhook=receiver.url))
            job_id = reply.json()["job_id"]
            first, second, third = await receiver.wait_for(3)
            ids = {d.headers["webhook-id"] for d in (first, second, third)}
            assert len(ids) == 1
            for delivery in (first, second, third):
                Webhook(SECRET).verify(delivery.body, delivery.headers)
            assert first.body == second.body == third.body
            shown = (await settled(http, job_id))["webhook"]
            assert (shown["state"], shown["attempts"], shown["last_status"]) == (
                "delivered",
                3,
                200,
            )
            metrics = (await http.get("/metrics")).text
            assert 'llm_worker_webhook_attempts_total{outcome="failed"} 2.0' in metrics
            assert 'llm_worker_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics
            assert promtool_lint(metrics) == ""
        assert len(receiver.received) == 3


async def test_a_receiver_that_never_answers_2xx_is_given_up_on(
    start_worker: StartWorker,
) -> None:
    async with receiving(Receiver(statuses=[503] * 10)) as receiver:
        worker = await start_worker(**{**FAST, "webhook_retry_schedule": "0.1,0.1"})
        async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
            job_id = (await http.post("/v1/jobs", json=job(webhook=receiver.url))).json()["job_id"]
            shown = (await settled(http, job_id))["webhook"]
            assert (shown["state"], shown["attempts"], shown["last_status"]) == ("given_up", 3, 503)
            assert shown["last_error"] == "the receiver answered 503"
            # Only the start of the reply is kept.
            assert shown["last_response"] == ("no " * 200)[:200]
        assert len(receiver.received) == 3


async def test_a_redirect_is_not_followed(start_worker: StartWorker) -> None:
    async with (
        receiving() as elsewhere,
        receiving(Receiver(statuses=[302] * 10)) as receiver,
    ):
        receiver.location = elsewhere.url
        worker = await start_worker(**{**FAST, "webhook_retry_schedule": "0.1"})
        async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
            job_id = (await http.post("/v1/jobs", json=job(webhook=receiver.url))).json()["job_id"]
            shown = (await settled(http, job_id))["webhook"]
        assert (shown["state"], shown["last_status"]) == ("given_up", 302)
        assert "not followed" in shown["last_error"]
        assert len(receiver.received) == 2 and elsewhere.received == []


async def test_cancelled_and_failed_jobs_are_told_too(
    start_worker: StartWorker, receiver: Receiver, upstream: OpenAIServer
) -> None:
    upstream.handler = lambda body: Reply(status=400, error="no such model")
    worker = await start_worker(**FAST)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        failed = (await http.post("/v1/jobs", json=job(webhook=receiver.url))).json()["job_id"]
        (delivery,) = await receiver.wait_for(1)
        payload = orjson.loads(delivery.body)
        assert (payload["type"], payload["data"]["job_id"]) == ("job.failed", failed)
        assert payload["data"]["error"]
    upstream.handler = lambda body: Reply(tokens=["slow"] * 100, delay=0.2)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        cancelled = (await http.post("/v1/jobs", json=job(webhook=receiver.url))).json()["job_id"]
        assert (await http.post(f"/v1/jobs/{cancelled}/cancel")).status_code == 200
        _, delivery = await receiver.wait_for(2)
        payload = orjson.loads(delivery.body)
        assert (payload["type"], payload["data"]["state"]) == ("job.cancelled", "cancelled")


@pytest.mark.parametrize(
    ("webhook", "why"),
    [
        ("ftp://example.com/", "http:// or https://"),
        ("", "http:// or https://"),
        (5, "as a string"),
        ("https://" + "a" * 3000 + ".com/", "at most 2048"),
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://no-such-host.invalid/", "does not resolve"),
    ],
)
async def test_a_bad_target_is_refused_to_its_client_alone(
    start_worker: StartWorker, webhook: object, why: str
) -> None:
    worker = await start_worker(webhook_secret=SECRET)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        reply = await http.post("/v1/jobs", json=job(webhook=webhook))
        assert reply.status_code == 400, reply.text
        assert why in reply.json()["message"]
        # The next request is served as ever.
        assert (await http.post("/v1/jobs", json=job())).status_code == 201


async def test_without_a_secret_no_webhook_is_taken(
    start_worker: StartWorker, receiver: Receiver
) -> None:
    worker = await start_worker(webhook_allow_private_targets=True)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        reply = await http.post("/v1/jobs", json=job(webhook=receiver.url))
        assert reply.status_code == 400
        assert "WEBHOOK_SECRET" in reply.json()["message"]


async def test_the_full_protocol_names_a_webhook_and_the_seed_s_is_ignored(
    start_worker: StartWorker, receiver: Receiver
) -> None:
    worker = await start_worker(**FAST)
    async with WSClient(worker.ws_url) as full:
        job_id, _ = await full.run(query="full", assistant=assistant(), webhook=receiver.url)
        (delivery,) = await receiver.wait_for(1)
        assert orjson.loads(delivery.body)["data"]["job_id"] == job_id
        await full.send({"type": "status", "job_id": job_id})
        shown = await full.expect("status")
        assert shown["webhook"]["url"] == receiver.url
        bad = {"query": "q", "assistant": assistant(), "webhook": "ftp://example.com/"}
        await full.send({"type": "add", "id": "bad", **bad})
        refused = await full.expect("error")
        assert (refused["code"], refused["ref"]) == ("invalid_job", "bad")
        assert "http:// or https://" in refused["message"]
        await full.run(query="still served", assistant=assistant())
    async with WSClient(worker.ws_url, seed=True) as seed:
        # A seed client's stray field, even one the full protocol would refuse: ignored.
        await seed.run(query="seed", assistant=assistant(), webhook=5)
        await seed.run(query="seed", assistant=assistant(), webhook=receiver.url)
    assert len(receiver.received) == 1


async def test_a_deployment_default_applies_to_jobs_naming_none(
    start_worker: StartWorker, receiver: Receiver
) -> None:
    worker: RunningWorker = await start_worker(**FAST, webhook_url=receiver.url)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        job_id = (await http.post("/v1/jobs", json=job())).json()["job_id"]
        (delivery,) = await receiver.wait_for(1)
        assert orjson.loads(delivery.body)["data"]["job_id"] == job_id


def docs_verifier() -> Any:
    """The ``verify`` function docs/webhooks.md shows (its example runs as pasted in
    tests/project/test_docs_examples.py), to check real deliveries with."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.DOTALL)
    assert code is not None
    definition = code.group(1).partition("\n\nbody = (")[0]
    scope: dict[str, Any] = {}
    exec(definition, scope)
    return scope["verify"]


async def test_the_docs_verifier_takes_a_real_delivery_and_refuses_a_forged_one(
    start_worker: StartWorker, receiver: Receiver
) -> None:
    verify = docs_verifier()
    worker = await start_worker(**FAST)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        await http.post("/v1/jobs", json=job(webhook=receiver.url))
        (delivery,) = await receiver.wait_for(1)
    verify(SECRET, delivery.headers, delivery.body)
    with pytest.raises(ValueError, match="not signed"):
        verify(SECRET, delivery.headers, delivery.body.replace(b"done", b"dona"))
    with pytest.raises(ValueError, match="too old"):
        verify(SECRET, delivery.headers, delivery.body, now=time.time() + 600)


async def test_a_tenant_s_own_url_and_secret_win_over_the_deployment_s(
    start_worker: StartWorker, receiver: Receiver, tmp_path: Path
) -> None:
    own = "whsec_" + base64.b64encode(b"acme-has-a-secret-of-its-own-32b").decode()
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[tenants.acme]\nkeys = ["sha256:{key_hash("acme-key-0123456789")}"]\n'
        f'webhook_url = "{receiver.url}"\nwebhook_secret = "{own}"\n'
        f'[tenants.other]\nkeys = ["sha256:{key_hash("other-key-0123456789")}"]\n'
    )
    worker = await start_worker(**FAST, api_keys_file=str(keys))
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        acme = {"authorization": "Bearer acme-key-0123456789"}
        job_id = (await http.post("/v1/jobs", json=job(), headers=acme)).json()["job_id"]
        (delivery,) = await receiver.wait_for(1)
        assert Webhook(own).verify(delivery.body, delivery.headers)["data"]["job_id"] == job_id
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(delivery.body, delivery.headers)
        # Another tenant has no default: its job sends nothing; what it names is signed
        # with the deployment's secret.
        other = {"authorization": "Bearer other-key-0123456789"}
        await http.post("/v1/jobs", json=job(), headers=other)
        await http.post("/v1/jobs", json=job(webhook=receiver.url), headers=other)
        _, second = await receiver.wait_for(2)
        Webhook(SECRET).verify(second.body, second.headers)
        # Only acme sees its job's delivery.
        assert (await http.get(f"/v1/jobs/{job_id}", headers=other)).status_code == 404
        shown = (await http.get(f"/v1/jobs/{job_id}", headers=acme)).json()["webhook"]
        assert shown["url"] == receiver.url
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 2


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ('webhook_secret = "not-whsec"', "whsec_"),
        ('webhook_url = "ftp://example.com/"', "http:// or https://"),
    ],
)
def test_a_bad_tenant_webhook_stops_the_start(tmp_path: Path, entry: str, why: str) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[tenants.acme]\nkeys = ["sha256:{key_hash("k" * 20)}"]\n{entry}\n')
    with pytest.raises(ConfigError, match=f"tenant 'acme'.*{re.escape(why)}"):
        load_access(make_settings(api_keys_file=str(keys)))


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ({"webhook_secret": "whsec_tooshort"}, "WEBHOOK_SECRET"),
        ({"webhook_url": "http://10.0.0.1/hook"}, "WEBHOOK_URL"),
    ],
)
def test_bad_webhook_settings_stop_the_start(settings: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        webhook_settings(make_settings(**settings))


async def test_the_openapi_document_describes_webhooks_where_they_are_sent(
    start_worker: StartWorker, receiver: Receiver
) -> None:
    without = await start_worker()
    with_secret = await start_worker(**FAST)
    async with httpx.AsyncClient(timeout=30) as http:
        off = (await http.get(f"{without.http_url}/openapi.json")).json()
        on = (await http.get(f"{with_secret.http_url}/openapi.json")).json()
        assert off["components"]["schemas"]["JobRequest"]["properties"]["webhook"] is False
        described = on["components"]["schemas"]["JobRequest"]["properties"]["webhook"]
        assert described["maxLength"] == 2048
        pattern = re.compile(described["pattern"])
        assert pattern.match(receiver.url) and not pattern.match("ftp://example.com/")
        reply = await http.post(f"{with_secret.http_url}/v1/jobs", json=job(webhook=receiver.url))
        job_id = reply.json()["job_id"]
        await receiver.wait_for(1)
    async with httpx.AsyncClient(base_url=with_secret.http_url, timeout=30) as http:
        shown = await settled(http, job_id)
    status = on["components"]["schemas"]["Status"]["properties"]
    assert status["webhook"] == {"$ref": "#/components/schemas/WebhookDelivery"}
    delivery = on["components"]["schemas"]["WebhookDelivery"]
    assert set(shown["webhook"]) == set(delivery["properties"])
