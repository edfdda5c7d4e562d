"""schemathesis against ``llm-worker serve``, as a user runs both: every check, positive
and negative data, the stateful phase along the document's links (create -> get ->
events -> cancel); without keys, with an admin key, and as a page of a foreign
origin (every answer then a documented JSON 403, or the router's 405).

Jobs go to the loopback OpenAI-compatible server (``openai``) or to ``echo``, a
text-only provider that takes only its own settings (so the document's rules for
what a provider may be sent, and for settings it refuses, are exercised). Every
job a valid request starts succeeds: OpenAI's doors answer a non-streamed
completion whose job failed with a 500 (job_failed), which the run would rightly
flag, so the deployment offers no model that cannot run (``local``, with a hub id
that cannot be had offline, would be one). The examples are few enough for the
three runs to take about two minutes here; the seed is fixed, so a failure is
reproducible (``st run ... --seed``, printed with the run's output).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from llm_worker.server import openai_api
from llm_worker.testing.openai_server import OpenAIServer
from llm_worker.testing.processes import WorkerProcess, clean_env, processes

ST = str(Path(sys.executable).with_name("st"))
ADMIN_KEY = "admin-key-for-schemathesis"
FOREIGN = "https://elsewhere.example"
EXAMPLES = 20
SEED = 20


async def schemathesis(document: Path, url: str, tmp_path: Path, *headers: str) -> str:
    """``st run`` with every check and phase; its output (it must find nothing)."""
    command = [
        ST, "run", str(document), "--url", url,
        "--checks", "all", "--mode", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(EXAMPLES), "--seed", str(SEED),
        "--request-timeout", "30", "--no-color",
        "--report", "har", "--report-har-path", str(tmp_path / "run.har"),
        *(arg for header in headers for arg in ("--header", header)),
    ]  # fmt: skip
    # In a subprocess of this loop, which serves the loopback upstream meanwhile.
    run = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path
    )
    output = (await asyncio.wait_for(run.communicate(), 240))[0].decode(errors="replace")
    assert run.returncode == 0, output
    summary = output.strip().splitlines()[-1]  # "== No issues found in 30s ==", or what it found
    assert "in " in summary and not re.search(r"failure|error", summary), output
    return output


def exchanges(tmp_path: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The requests of the run and what the server answered each (its HAR report)."""
    har = json.loads((tmp_path / "run.har").read_text())
    return [(entry["request"], entry["response"]) for entry in har["log"]["entries"]]


def responses(tmp_path: Path) -> list[dict[str, Any]]:
    """What the server answered during the run (its HAR report)."""
    har = json.loads((tmp_path / "run.har").read_text())
    return [entry["response"] for entry in har["log"]["entries"]]


async def serve_and_check(
    upstream: OpenAIServer, tmp_path: Path, env: dict[str, str], *headers: str
) -> str:
    env = clean_env(
        LISTEN_PORT="0", STORE_URL="memory://", WORKER_CONCURRENCY="256",
        OPENAI_API_KEY="k", OPENAI_BASE_URL=upstream.base_url,
        ECHO_PROVIDER="on", ECHO_DELAY_SECONDS="0", **env,
    )  # fmt: skip
    async with processes() as started:
        worker = await WorkerProcess.start(env, tmp_path)
        started.append(worker)
        url = f"http://127.0.0.1:{worker.port}"
        # Read without the run's headers (a foreign page may not read it either).
        async with httpx.AsyncClient() as http:
            document = (await http.get(f"{url}/openapi.json")).json()
        path = tmp_path / "openapi.json"
        path.write_text(json.dumps(document))
        output = await schemathesis(path, url, tmp_path, *headers)
        assert "Traceback" not in worker.output, worker.output
        return output


@pytest.mark.timeout(300)
async def test_schemathesis_finds_nothing_without_keys(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    output = await serve_and_check(upstream, tmp_path, {})
    answered = responses(tmp_path)
    statuses = {response["status"] for response in answered}
    # Jobs were created, read, followed and cancelled, and bad requests refused.
    assert {200, 201, 400, 404} <= statuses, statuses
    assert "Stateful" in output
    # OpenAI's doors answered valid requests, waited for and streamed, and refused others.
    for door in ("/v1/chat/completions", "/v1/responses"):
        answers = [r for q, r in exchanges(tmp_path) if urlsplit(q["url"]).path == door]
        kinds = {r["content"]["mimeType"].partition(";")[0] for r in answers if r["status"] == 200}
        assert kinds == {"application/json", "text/event-stream"}, (door, kinds)
        assert 400 in {r["status"] for r in answers}, door
    for request, response in exchanges(tmp_path):
        if response["status"] >= 400:
            body = json.loads(response["content"]["text"])
            if urlsplit(request["url"]).path.startswith(openai_api.PATHS):
                # OpenAI's own API answers in OpenAI's shape, as its SDKs read it.
                assert "error" in body, (request["method"], request["url"], body)
                error = body["error"]
                assert error["type"] and error["code"] and error["message"], body
            else:
                assert body["type"] == "error" and body["code"], body


@pytest.mark.timeout(300)
async def test_schemathesis_finds_nothing_with_an_admin_key(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    await serve_and_check(
        upstream,
        tmp_path,
        {"API_KEYS": ADMIN_KEY, "ADMIN_KEYS": f"sha256:{digest}"},
        f"Authorization: Bearer {ADMIN_KEY}",
    )
    statuses = {response["status"] for response in responses(tmp_path)}
    assert {200, 201, 401} <= statuses, statuses  # and ignored_auth tried without the key


@pytest.mark.timeout(300)
async def test_schemathesis_finds_nothing_as_a_page_of_a_foreign_origin(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    await serve_and_check(upstream, tmp_path, {}, f"Origin: {FOREIGN}")
    answered = responses(tmp_path)
    assert {response["status"] for response in answered} <= {403, 405}
    refused = [json.loads(r["content"]["text"]) for r in answered if r["status"] == 403]
    assert refused and all(body["code"] == "origin_not_allowed" for body in refused)
