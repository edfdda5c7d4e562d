"""A scheduled job outlives its worker: ``kill -9`` while it waits (``delay: 4``), the
worker started again on the same store runs it once it is due, not before; on SQLite
and on Redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from tests.support.sse import all_events
from tests.support.stores import store_settings
from tests.support.wsclient import assistant, text_of

TOKENS = [" after", " the", " restart"]


@pytest.fixture(params=["sqlite", "redis"])
def env(request: pytest.FixtureRequest, upstream: OpenAIServer) -> dict[str, str]:
    store = store_settings(request, request.param)
    return clean_env(
        LISTEN_PORT="0", OPENAI_API_KEY="k", OPENAI_BASE_URL=upstream.base_url, **store
    )


async def test_a_delayed_job_survives_a_kill(
    env: dict[str, str], upstream: OpenAIServer, tmp_path: Path
) -> None:
    calls: list[float] = []

    def reply(body: dict[str, Any]) -> Reply:
        calls.append(time.monotonic())
        return Reply(tokens=TOKENS)

    upstream.handler = reply
    async with processes() as started:
        started.append(await WorkerProcess.start(env, tmp_path))
        url = f"http://127.0.0.1:{started[-1].port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            posted_at = time.monotonic()
            body = {"query": "q", "assistant": assistant(), "delay": 4}
            created = await http.post("/v1/jobs", json=body)
            assert created.status_code == 201, created.text
            job_id = created.json()["job_id"]
        started[-1].kill()
        await started[-1].process.wait()

        started.append(await WorkerProcess.start(env, tmp_path))
        url = f"http://127.0.0.1:{started[-1].port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            status = (await http.get(f"/v1/jobs/{job_id}")).json()
            assert time.monotonic() - posted_at < 3.8, "restarted too late to tell"
            assert status["state"] == "scheduled"
            frames = [event["data"] for event in await all_events(http, job_id)]
            assert text_of(frames) == "".join(TOKENS)
    assert len(calls) == 1
    assert 3.9 <= calls[0] - posted_at < 8.0, calls[0] - posted_at
