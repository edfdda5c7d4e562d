"""Who may do what, over real connections: keys and tenants, listen tokens, origins,
and secrets kept from clients."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from llm_worker.config import ConfigError
from llm_worker.ops.redaction import redact_url, scrub
from llm_worker.server.access import Access, Principal, TenantLimits, key_hash, load_access
from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from tests.conftest import ConnectClient, StartWorker, make_settings
from tests.support.wsclient import WSClient, assistant, text_of

ALICE = "key-of-alice-0123456789"
BOB = "key-of-bob-9876543210"


def bearer(key: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {key}"}}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(
        f"""
[tenants.alice]
keys = ["sha256:{key_hash(ALICE)}"]
max_queued_jobs = 5

[tenants.bob]
keys = ["{key_hash(BOB)}"]
"""
    )
    return path


# -- pure rules ------------------------------------------------------------------


def test_keys_file_tenants_and_limits(keys_file: Path) -> None:
    access = load_access(make_settings(api_keys_file=keys_file, tenant_adds_per_minute=60))
    assert access.authenticate(ALICE) == Principal("alice")
    assert access.authenticate(BOB) == Principal("bob")
    assert access.authenticate("guess") is None
    assert access.authenticate(None) is None
    assert access.tenant_limits("alice") == TenantLimits(
        max_running_jobs=None, max_queued_jobs=5, adds_per_minute=60
    )
    assert access.tenant_limits("bob").max_queued_jobs == 1000  # the default


def test_keys_are_kept_only_as_hashes(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text('[tenants.eve]\nkeys = ["the-key-itself"]\n')
    with pytest.raises(ConfigError, match="each key is its SHA-256 in hex"):
        load_access(make_settings(api_keys_file=path))


def test_new_key_prints_a_key_and_the_keys_file_lines_that_admit_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_worker.cli import main

    assert main(["new-key", "chat backend"]) == 0
    printed = capsys.readouterr().out
    key = re.search(r"^key \(give it to chat backend; it is not kept anywhere\): (\S+)$",
                    printed, re.MULTILINE)[1]  # fmt: skip
    assert len(key) > 40
    lines = printed.partition("in API_KEYS_FILE:")[2]
    assert key not in lines  # only its hash is kept
    path = tmp_path / "keys.toml"
    path.write_text(lines)
    access = load_access(make_settings(api_keys_file=path))
    assert access.authenticate(key) == Principal("chat backend")
    assert main(["new-key", "chat backend"]) == 0
    assert key not in capsys.readouterr().out  # a new key each time


def test_api_keys_each_make_a_tenant() -> None:
    access = load_access(make_settings(api_keys=f"{ALICE}, {BOB}"))
    alice, bob = access.authenticate(ALICE), access.authenticate(BOB)
    assert alice is not None and bob is not None and alice != bob
    assert alice.tenant == f"key-{hashlib.sha256(ALICE.encode()).hexdigest()[:8]}"


def test_listen_tokens_are_good_for_their_job_only() -> None:
    access = Access(keys={key_hash(ALICE): "alice"}, token_secret=b"s" * 32)
    token = access.listen_token("job-1", "alice")
    assert access.authenticate(token) == Principal("alice", job_id="job-1")
    assert access.authenticate(token[:-2] + "xx") is None
    other = Access(keys=access.keys, token_secret=b"t" * 32)
    assert other.authenticate(token) is None  # another secret: worth nothing
    principal = access.authenticate(token)
    assert principal is not None
    assert principal.may_see("alice", "job-1")
    assert not principal.may_see("alice", "job-2")
    assert not Principal("bob").may_see("alice", "job-1")


def test_origins() -> None:
    same_only = Access(origins=frozenset())
    assert same_only.origin_allowed(None, "127.0.0.1:8001")
    assert same_only.origin_allowed("http://127.0.0.1:8001", "127.0.0.1:8001")
    assert not same_only.origin_allowed("https://attacker.example", "127.0.0.1:8001")
    listed = Access(origins=frozenset({"https://chat.example.com"}))
    assert listed.origin_allowed("https://chat.example.com", "worker:8001")
    assert listed.origin_allowed("HTTPS://Chat.Example.com/", "worker:8001")
    assert not listed.origin_allowed("http://chat.example.com", "worker:8001")
    assert Access(origins=None).origin_allowed("https://anything.example", "worker:8001")


def test_secrets_are_scrubbed_from_text_for_clients() -> None:
    assert redact_url("https://u:pw@api.example/v1?api-key=sk-1&x=2") == (
        "https://***@api.example/v1?api-key=[redacted]&x=2"
    )
    # Scrubbing twice changes nothing more.
    once = scrub("at https://u:pw@api.example/v1?key=abc: refused")
    assert scrub(once) == once == "at https://***@api.example/v1?key=[redacted]: refused"
    text = "Incorrect API key provided: sk-live-123456 at https://api.example/v1?key=abc"
    assert scrub(text, ["sk-live-123456"]) == (
        "Incorrect API key provided: [redacted] at https://api.example/v1?key=[redacted]"
    )
    # Keys the worker was not told about are caught by their shape, masked or not.
    assert scrub("key sk-proj-abc***wxyz or sk-ant-api03-Zz9_-Q1w2e3r4 denied") == (
        "key [redacted] or [redacted] denied"
    )
    assert scrub("sent Authorization: Bearer lw-abc.def, refused") == (
        "sent Authorization: Bearer [redacted], refused"
    )
    # Ordinary words that merely start like one stay.
    assert scrub("task-123 and sk-short are fine") == "task-123 and sk-short are fine"


# -- over real connections ---------------------------------------------------------


async def test_two_tenants_see_their_own_jobs_only(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient, keys_file: Path
) -> None:
    upstream.handler = lambda body: Reply(tokens=[" a", " b", " c"], delay=0.2)
    worker = await start_worker(
        api_keys_file=keys_file, token_secret="shared-secret", worker_concurrency=1
    )
    alice = await connect(worker.ws_url, **bearer(ALICE))
    bob = await connect(worker.ws_url + f"?access_token={BOB}")
    job_id = await alice.add("mine")
    for request in ("listen", "status", "cancel"):
        await bob.send({"type": request, "job_id": job_id})
        # Exactly as for a job that does not exist.
        assert await bob.expect("error") == {
            "type": "error",
            "code": "job_not_found",
            "message": f"unknown job_id {job_id!r}",
            "ref": job_id,
        }
    await bob.send({"type": "status", "job_id": "no-such-job"})
    assert (await bob.expect("error"))["message"] == "unknown job_id 'no-such-job'"
    messages = await alice.job_messages(job_id)
    assert messages[-1]["type"] == "done"
    await alice.send({"type": "status", "job_id": job_id})
    assert (await alice.wait_for("status"))["state"] == "done"
    # Each tenant's own share of the queue: one running, five waiting.
    await alice.add("running")
    await alice.wait_for("running")
    for index in range(5):
        await alice.add(f"q{index}")
    await alice.send({"type": "add", "id": "sixth", "query": "q", "assistant": assistant()})
    assert "tenant 'alice' has 5 jobs waiting" in (await alice.wait_for("error"))["message"]
    await bob.add("bob's")  # bob's share is his own


async def test_a_tenant_adding_too_fast_is_told_when_to_retry(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=[" ok"])
    worker = await start_worker(api_keys=f"{ALICE},{BOB}", tenant_adds_per_minute=2)
    alice = await connect(worker.ws_url, **bearer(ALICE))
    bob = await connect(worker.ws_url, **bearer(BOB))
    await alice.add("first")
    await alice.add("second")
    await alice.send({"type": "add", "id": "third", "query": "q", "assistant": assistant()})
    refused = await alice.wait_for("error")
    assert refused["ref"] == "third"
    assert re.fullmatch(
        r"tenant 'key-[0-9a-f]{8}' may add 2 jobs a minute; try again in \d+\.\ds",
        refused["message"],
    ), refused
    # The other tenant's rate is its own.
    assert (await bob.run(request_id="bob's"))[1][-1]["type"] == "done"


async def test_a_listen_token_follows_its_job_and_does_nothing_else(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=[" to", " the", " page"], delay=0.1)
    worker = await start_worker(api_keys=ALICE, token_secret="shared-secret")
    backend = await connect(worker.ws_url, **bearer(ALICE))
    await backend.send({"type": "add", "id": "q", "query": "hi", "assistant": assistant()})
    resp_add = await backend.expect("resp_add")
    token = resp_add["listen_token"]
    other = await backend.add("other")
    # A browser page with the token, and no key.
    page = await connect(worker.ws_url + f"?access_token={token}")
    await page.send({"type": "listen", "job_id": resp_add["job_id"]})
    messages = await page.job_messages(resp_add["job_id"])
    assert text_of(messages) == " to the page"
    await page.send({"type": "status", "job_id": resp_add["job_id"]})
    assert (await page.expect("status"))["state"] == "done"
    for request in ({"type": "listen", "job_id": other}, {"type": "status", "job_id": other}):
        await page.send(request)
        assert (await page.expect("error"))["message"] == f"unknown job_id {other!r}"
    await page.send({"type": "cancel", "job_id": resp_add["job_id"]})
    assert "a listen token may only listen" in (await page.expect("error"))["message"]
    await page.send({"type": "add", "id": "x", "query": "q", "assistant": assistant()})
    assert "a listen token may only listen" in (await page.expect("error"))["message"]


async def test_without_a_key_the_upgrade_is_refused(
    start_worker: StartWorker, keys_file: Path
) -> None:
    worker = await start_worker(api_keys_file=keys_file)
    for extra in ({}, bearer("wrong-key"), {"additional_headers": {"Authorization": "Basic x"}}):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(worker.ws_url, **extra)
        assert refused.value.response.status_code == 401
        assert refused.value.response.headers["WWW-Authenticate"] == "Bearer"
    async with httpx.AsyncClient() as http:  # health needs no key
        assert (await http.get(f"{worker.http_url}/healthz")).status_code == 200


async def test_pages_of_other_origins_are_refused_whatever_the_key(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(api_keys=ALICE, allowed_origins="https://chat.example.com")
    evil = {"origin": "https://attacker.example", **bearer(ALICE)}
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(worker.ws_url, **evil)
    assert refused.value.response.status_code == 403
    async with WSClient(worker.ws_url, origin="https://chat.example.com", **bearer(ALICE)) as ok:
        await ok.send({"type": "ping"})
        assert await ok.recv() == {"type": "pong"}
    async with WSClient(worker.ws_url, **bearer(ALICE)):  # no Origin: not a browser
        pass
    async with httpx.AsyncClient() as http:
        refused_http = await http.get(
            f"{worker.http_url}/healthz", headers={"Origin": "https://attacker.example"}
        )
        assert refused_http.status_code == 403
        allowed = await http.get(
            f"{worker.http_url}/healthz", headers={"Origin": "https://chat.example.com"}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://chat.example.com"


async def test_by_default_only_the_worker_s_own_origin(start_worker: StartWorker) -> None:
    worker = await start_worker()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(worker.ws_url, origin="https://attacker.example")
    assert refused.value.response.status_code == 403
    own = f"http://127.0.0.1:{worker.port}"
    async with WSClient(worker.ws_url, origin=own) as client:
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}


async def test_keys_in_urls_stay_out_of_the_log(upstream: OpenAIServer, tmp_path: Path) -> None:
    env = clean_env(LISTEN_PORT="0", API_KEYS=ALICE, STORE_URL="memory://")
    async with processes() as started:
        worker = await WorkerProcess.start(env, tmp_path)
        started.append(worker)
        async with WSClient(worker.ws_url + f"?access_token={ALICE}") as client:
            await client.send({"type": "ping"})
            await client.recv()
    assert "WebSocket /ws/?access_token=[redacted]" in worker.output
    assert ALICE not in worker.output


async def test_provider_secrets_never_reach_clients(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    key = "sk-live-secret-0123456789"
    upstream.handler = lambda body: Reply(
        status=401, error=f"Incorrect API key provided: {key}. See your keys."
    )
    # A 401 that repeats the key.
    worker = await start_worker(openai_api_key=key)
    client = await connect(worker.ws_url)
    job_id, messages = await client.run()
    failed = messages[-1]["message"]
    assert failed.endswith(
        "answered HTTP 401: Incorrect API key provided: [redacted]. See your keys."
    )
    await client.send({"type": "status", "job_id": job_id})
    assert key not in (await client.expect("status"))["error"]
    # Base URLs that carry credentials.
    at = f"127.0.0.1:{upstream.port}/v1"
    for url, shown in [
        (f"http://{at}?api-key={key}", f"at http://{at}?api-key=[redacted]"),
        (f"http://user:{key}@{at}", f"at http://***@{at}"),
    ]:
        worker = await start_worker(openai_api_key="k", openai_base_url=url)
        client = await connect(worker.ws_url)
        _, messages = await client.run()
        failed = messages[-1]["message"]
        assert key not in failed
        assert shown in failed, failed


async def test_a_base_url_query_goes_with_every_request(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    # Azure-style endpoints take their version and key as query parameters.
    upstream.handler = lambda body: Reply(tokens=[" ok"])
    base_url = f"{upstream.base_url}?api-version=2024-06-01&api-key=secret-123"
    worker = await start_worker(openai_api_key="k", openai_base_url=base_url)
    client = await connect(worker.ws_url)
    _, messages = await client.run()
    assert messages[-1]["type"] == "done"
    [request] = upstream.chat_requests
    assert request.path == "/v1/chat/completions?api-version=2024-06-01&api-key=secret-123"


def test_a_gateway_with_keys_needs_the_shared_token_secret(tmp_path: Path) -> None:
    from llm_worker.server.app import Service

    with pytest.raises(ConfigError, match="needs TOKEN_SECRET"):
        Service(make_settings(api_keys=ALICE, store_url="redis://127.0.0.1:1/0"), "gateway")


def test_admin_keys_name_keys_by_their_hash() -> None:
    keys = f"{ALICE},{BOB}"
    access = load_access(make_settings(api_keys=keys, admin_keys=f" sha256:{key_hash(BOB)} "))
    alice, bob = access.authenticate(ALICE), access.authenticate(BOB)
    assert alice is not None and not alice.admin
    assert bob is not None and bob.admin and bob.tenant == f"key-{key_hash(BOB)[:8]}"
    token = access.listen_token("job-1", bob.tenant)
    assert access.authenticate(token) == Principal(bob.tenant, job_id="job-1")  # no admin
    anyone = Access().authenticate(None)
    assert anyone is not None and anyone.admin  # without keys, anyone may list jobs
    with pytest.raises(ConfigError, match="not the key itself") as refused:
        load_access(make_settings(api_keys=keys, admin_keys=BOB))
    assert BOB not in str(refused.value)
    with pytest.raises(ConfigError, match="is the SHA-256 of no key"):
        load_access(make_settings(api_keys=ALICE, admin_keys=key_hash(BOB)))
