"""``llm-worker serve`` started as a user starts it, in its own process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from llm_worker.config import Settings
from llm_worker.testing.openai_server import OpenAIServer
from tests.test_seed_compat import SEED_ADD_REQUEST
from tests.wsclient import WSClient, text_of

LISTENING = re.compile(rb"listening on ws://([\d.]+):(\d+)/ws/")
COMMAND = [sys.executable, "-m", "llm_worker", "serve"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without settings of ours, plus ``extra``."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


@asynccontextmanager
async def worker_process(
    env: dict[str, str], cwd: Path, args: list[str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, list[bytes]]]:
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        *(args or []),
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[bytes] = []
    try:
        port = None
        while port is None:
            line = await asyncio.wait_for(process.stdout.readline(), 20)
            assert line, b"".join(lines).decode()
            lines.append(line)
            if match := LISTENING.search(line):
                port = int(match.group(2))
        while b"Application startup complete" not in lines[-1]:
            lines.append(await asyncio.wait_for(process.stdout.readline(), 20))
        yield process, port, lines
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        lines.append(await asyncio.wait_for(process.stdout.read(), 20))
        await asyncio.wait_for(process.wait(), 20)


async def test_serve_runs_the_seed_example_and_stops_cleanly_on_sigterm(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    env = clean_env(
        LISTEN_PORT="0", OPENAI_API_KEY="sk-from-env", OPENAI_BASE_URL=upstream.base_url
    )
    async with worker_process(env, tmp_path) as (process, port, lines):
        async with WSClient(f"ws://127.0.0.1:{port}/ws/") as client:
            await client.send(SEED_ADD_REQUEST)
            job_id = (await client.expect("resp_add"))["job_id"]
            messages = await client.job_messages(job_id)
        assert messages[-1]["type"] == "done"
        assert text_of(messages) == "Echo: How tall is it?"
        assert upstream.chat_requests[0].headers["authorization"] == "Bearer sk-from-env"
        async with httpx.AsyncClient() as http:
            health = await http.get(f"http://127.0.0.1:{port}/healthz")
        assert health.json()["status"] == "ok"

        process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.returncode in (0, -signal.SIGTERM)
    output = b"".join(lines).decode()
    assert "Application shutdown complete" in output
    assert "listening on ws://127.0.0.1:" in output  # the safe default address
    assert "Traceback" not in output


async def test_settings_come_from_the_env_file(upstream: OpenAIServer, tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "worker.log"
    (tmp_path / ".env").write_text(
        "LISTEN_PORT=0\n"
        "OPENAI_API_KEY=sk-from-dotenv\n"
        f"OPENAI_BASE_URL={upstream.base_url}\n"
        f"LOG_FILE={log_file}\n"
        "LOG_FORMAT=[%(levelname)s] %(message)s\n"
    )
    async with worker_process(clean_env(), tmp_path) as (_, port, lines):
        async with WSClient(f"ws://127.0.0.1:{port}/ws/") as client:
            _, messages = await client.run(query="from dotenv")
        assert text_of(messages) == "Echo: from dotenv"
    assert upstream.chat_requests[0].headers["authorization"] == "Bearer sk-from-dotenv"
    assert b"[INFO] llm-worker" in b"".join(lines)
    logged = log_file.read_text()
    assert "[INFO] job " in logged
    assert " done in " in logged


async def test_the_environment_wins_over_the_env_file(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    (tmp_path / "custom.env").write_text(
        "LISTEN_PORT=0\nOPENAI_API_KEY=sk-file\nOPENAI_BASE_URL=http://127.0.0.1:9/v1\n"
    )
    env = clean_env(OPENAI_API_KEY="sk-env", OPENAI_BASE_URL=upstream.base_url)
    async with worker_process(env, tmp_path, ["--env-file", "custom.env"]) as (_, port, _lines):
        async with WSClient(f"ws://127.0.0.1:{port}/ws/") as client:
            _, messages = await client.run()
        assert messages[-1]["type"] == "done"
    assert upstream.chat_requests[0].headers["authorization"] == "Bearer sk-env"


async def failed_start(env: dict[str, str], cwd: Path) -> tuple[int | None, bytes]:
    """Start the command expecting it to refuse; its exit code and all it printed."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 20)
    return process.returncode, output


async def test_bad_settings_stop_start_up_with_a_clear_message(tmp_path: Path) -> None:
    code, output = await failed_start(
        clean_env(WORKER_CONCURRENCY="0", LISTEN_PORT="http"), tmp_path
    )
    assert code == 2
    assert b"bad setting LISTEN_PORT" in output
    assert b"bad setting WORKER_CONCURRENCY: Input should be greater than or equal to 1" in output


async def test_a_bad_providers_file_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "providers.toml").write_text("[providers.x]\nbase_url = 3\n")
    code, output = await failed_start(
        clean_env(PROVIDERS_FILE="providers.toml", LISTEN_PORT="0"), tmp_path
    )
    assert code == 2
    assert b"cannot start: PROVIDERS_FILE providers.toml: providers.x.base_url" in output


def test_defaults_are_safe() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    if "LISTEN_ADDRESS" not in os.environ:
        assert settings.listen_address == "127.0.0.1"
    assert Settings.model_fields["listen_address"].default == "127.0.0.1"
    assert Settings.model_fields["listen_port"].default == 8001
    assert Settings.model_fields["worker_concurrency"].default == 16
    assert Settings.model_fields["job_ttl_seconds"].default == 3600
