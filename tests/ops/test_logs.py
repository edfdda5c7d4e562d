"""LOG_JSON: one JSON object per line, and lines about a job say which, and whose."""

from __future__ import annotations

import json
from pathlib import Path

from llm_worker.server.access import key_hash
from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from tests.support.wsclient import WSClient

KEY = "key-of-alice-0123456789"


async def test_json_lines_carry_the_job_and_its_tenant(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    upstream.handler = lambda body: Reply(status=400, error="no such model")
    (tmp_path / "keys.toml").write_text(f'[tenants.alice]\nkeys = ["{key_hash(KEY)}"]\n')
    env = clean_env(
        LISTEN_PORT="0", LOG_JSON="true", API_KEYS_FILE="keys.toml", STORE_URL="memory://",
        OPENAI_API_KEY="k", OPENAI_BASE_URL=upstream.base_url,
    )  # fmt: skip
    async with processes() as started:
        worker = await WorkerProcess.start(env, tmp_path)
        started.append(worker)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with WSClient(worker.ws_url, additional_headers=headers) as client:
            job_id = await client.add(query="hello")
            assert (await client.job_messages(job_id))[-1]["type"] == "failed"
        await worker.stop()
    entries = [json.loads(line) for line in worker.lines if line.strip()]  # every line is JSON
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    about_job = [e for e in entries if job_id in e["message"]]
    assert any(e["message"].startswith(f"job {job_id} failed") for e in about_job), about_job
    for entry in about_job:
        assert entry["job_id"] == job_id, entry
        assert entry["tenant"] == "alice", entry
    # Lines about no job carry no job fields.
    ready = next(e for e in entries if "listening on ws://" in e["message"])
    assert "job_id" not in ready
