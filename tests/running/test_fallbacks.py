"""Fallbacks: a stream whose provider fails before any output (after its own retries)
is answered by the next of its fallbacks; the job says which one answered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import RunningWorker, StartWorker
from tests.support.wsclient import WSClient, text_of


@pytest.fixture
async def backup() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as server:
        yield server


@pytest.fixture
async def worker_with_backup(
    start_worker: StartWorker, backup: OpenAIServer, tmp_path: Path
) -> RunningWorker:
    providers = tmp_path / "providers.toml"
    providers.write_text(f'[providers.backup]\nbase_url = "{backup.base_url}"\n')
    return await start_worker(providers_file=providers, provider_retries=1)


def stream(**extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "settings": {"model": "main-model"},
        "messages": [{"role": "user", "content": "{query}"}],
        **extra,
    }


BACKUP = [{"provider": "backup", "settings": {"model": "backup-model"}}]


async def test_a_failing_provider_falls_back_to_a_working_one(
    worker_with_backup: RunningWorker, upstream: OpenAIServer, backup: OpenAIServer
) -> None:
    upstream.handler = lambda body: Reply(status=503, error="overloaded")
    backup.handler = lambda body: Reply(tokens=[" from", " backup"])
    async with WSClient(worker_with_backup.ws_url) as client:
        job_id, messages = await client.run(assistant={"streams": [stream(fallbacks=BACKUP)]})
        assert text_of(messages) == " from backup"
        done = messages[-1]
        assert done["type"] == "done" and done["providers"] == ["backup"]
        await client.send({"type": "status", "job_id": job_id})
        assert (await client.wait_for("status"))["providers"] == ["backup"]
    # The main provider had its retry first (2 tries), then the backup its model.
    assert len(upstream.chat_requests) == 2
    assert [r.body["model"] for r in backup.chat_requests] == ["backup-model"]
    async with httpx.AsyncClient(base_url=worker_with_backup.http_url) as http:
        metrics = (await http.get("/metrics")).text
    assert 'llm_worker_provider_fallbacks_total{provider="openai"} 1.0' in metrics


async def test_when_every_provider_fails_the_job_says_what_each_said(
    worker_with_backup: RunningWorker, upstream: OpenAIServer, backup: OpenAIServer
) -> None:
    upstream.handler = lambda body: Reply(status=400, error="no such model")
    backup.handler = lambda body: Reply(status=401, error="bad key")
    async with WSClient(worker_with_backup.ws_url) as client:
        _, messages = await client.run(assistant={"streams": [stream(fallbacks=BACKUP)]})
    failed = messages[-1]
    assert failed["type"] == "failed"
    assert failed["message"].startswith("every provider of the stream failed: 'openai': ")
    assert "HTTP 400: no such model" in failed["message"]
    assert "'backup': provider 'backup'" in failed["message"]
    assert "HTTP 401: bad key" in failed["message"]
    assert len(upstream.chat_requests) == 1 and len(backup.chat_requests) == 1  # no retries of 4xx


async def test_no_fallback_once_output_reached_listeners(
    worker_with_backup: RunningWorker, upstream: OpenAIServer, backup: OpenAIServer
) -> None:
    upstream.handler = lambda body: Reply(tokens=[" a", " b", " c"], cut_after=2)
    backup.handler = lambda body: Reply(tokens=[" never"])
    async with WSClient(worker_with_backup.ws_url) as client:
        _, messages = await client.run(assistant={"streams": [stream(fallbacks=BACKUP)]})
    assert text_of(messages) == " a b"
    assert messages[-1]["type"] == "failed"
    assert backup.chat_requests == []


async def test_an_inner_stream_falls_back_too(
    worker_with_backup: RunningWorker, upstream: OpenAIServer, backup: OpenAIServer
) -> None:
    def main(body: dict[str, Any]) -> Reply:
        if body["messages"][-1]["content"].startswith("Improve"):
            return Reply(tokens=[" improved"])
        return Reply(status=500, error="down")

    upstream.handler = main
    backup.handler = lambda body: Reply(tokens=[" draft"])
    second = stream(messages=[{"role": "user", "content": "Improve:{previous_stream_output}"}])
    assistant = {"streams": [stream(fallbacks=BACKUP), second]}
    async with WSClient(worker_with_backup.ws_url) as client:
        _, messages = await client.run(assistant=assistant)
    assert text_of(messages) == " improved"
    assert messages[-1]["providers"] == ["backup", "openai"]
    improve = [r for r in upstream.chat_requests if "Improve" in r.body["messages"][-1]["content"]]
    assert improve[0].body["messages"][-1]["content"] == "Improve: draft"


async def test_fallbacks_are_checked_when_the_job_is_added(
    worker_with_backup: RunningWorker,
) -> None:
    async with WSClient(worker_with_backup.ws_url) as client:
        bad = [{"provider": "nope"}]
        await client.send({"type": "add", "id": 1, "query": "q",
                           "assistant": {"streams": [stream(fallbacks=bad)]}})  # fmt: skip
        refused = await client.wait_for("error")
        assert "assistant.streams[0]: fallbacks[0]: unknown provider 'nope'" in refused["message"]
        too_many = BACKUP * 5
        await client.send({"type": "add", "id": 2, "query": "q",
                           "assistant": {"streams": [stream(fallbacks=too_many)]}})  # fmt: skip
        refused = await client.wait_for("error")
        assert "fallbacks" in refused["message"] and "at most 4" in refused["message"]
