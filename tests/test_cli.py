"""``llm-worker serve`` started as a user starts it, in its own process."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx

from llm_worker.config import Settings
from llm_worker.testing.openai_server import OpenAIServer
from llm_worker.testing.processes import COMMAND, WorkerProcess, clean_env, processes
from tests.test_seed_compat import SEED_ADD_REQUEST
from tests.wsclient import WSClient, text_of


async def test_serve_runs_the_seed_example_and_stops_cleanly_on_sigterm(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    env = clean_env(
        LISTEN_PORT="0", OPENAI_API_KEY="sk-from-env", OPENAI_BASE_URL=upstream.base_url
    )
    worker = await WorkerProcess.start(env, tmp_path)
    try:
        async with WSClient(worker.ws_url) as client:
            await client.send(SEED_ADD_REQUEST)
            job_id = (await client.expect("resp_add"))["job_id"]
            messages = await client.job_messages(job_id)
        assert messages[-1]["type"] == "done"
        assert text_of(messages) == "Echo: How tall is it?"
        assert upstream.chat_requests[0].headers["authorization"] == "Bearer sk-from-env"
        async with httpx.AsyncClient() as http:
            health = await http.get(f"http://127.0.0.1:{worker.port}/healthz")
        assert health.json()["status"] == "ok"
    finally:
        code = await worker.stop()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in worker.output
    assert "listening on ws://127.0.0.1:" in worker.output  # the safe default address
    assert "Traceback" not in worker.output
    # The default store is a SQLite file in the working directory.
    assert (tmp_path / "llm-worker.db").exists()


async def test_settings_come_from_the_env_file(upstream: OpenAIServer, tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "worker.log"
    (tmp_path / ".env").write_text(
        "LISTEN_PORT=0\n"
        "OPENAI_API_KEY=sk-from-dotenv\n"
        f"OPENAI_BASE_URL={upstream.base_url}\n"
        f"LOG_FILE={log_file}\n"
        "LOG_FORMAT=[%(levelname)s] %(message)s\n"
        "LOG_LEVEL=debug\n"
        "STORE_URL=memory://\n"
    )
    async with processes() as started:
        worker = await WorkerProcess.start(clean_env(), tmp_path)
        started.append(worker)
        async with WSClient(worker.ws_url) as client:
            _, messages = await client.run(query="from dotenv")
        assert text_of(messages) == "Echo: from dotenv"
    assert upstream.chat_requests[0].headers["authorization"] == "Bearer sk-from-dotenv"
    assert "[INFO] llm-worker" in worker.output
    logged = log_file.read_text()
    assert "[DEBUG] job " in logged
    assert " done in " in logged
    assert not (tmp_path / "llm-worker.db").exists()


async def test_the_environment_wins_over_the_env_file(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    (tmp_path / "custom.env").write_text(
        "LISTEN_PORT=0\nOPENAI_API_KEY=sk-file\nOPENAI_BASE_URL=http://127.0.0.1:9/v1\n"
    )
    env = clean_env(OPENAI_API_KEY="sk-env", OPENAI_BASE_URL=upstream.base_url)
    async with processes() as started:
        worker = await WorkerProcess.start(env, tmp_path, "--env-file", "custom.env")
        started.append(worker)
        async with WSClient(worker.ws_url) as client:
            _, messages = await client.run()
        assert messages[-1]["type"] == "done"
    assert upstream.chat_requests[0].headers["authorization"] == "Bearer sk-env"


async def failed_start(env: dict[str, str], cwd: Path, *args: str) -> tuple[int | None, bytes]:
    """Start the command expecting it to refuse; its exit code and all it printed."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
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


async def test_a_bad_store_url_stops_start_up(tmp_path: Path) -> None:
    code, output = await failed_start(clean_env(STORE_URL="postgres://db"), tmp_path)
    assert code == 2
    assert b"cannot start: STORE_URL 'postgres://db' is not one of" in output


async def test_split_roles_need_a_shared_store(tmp_path: Path) -> None:
    for role in ("gateway", "worker"):
        code, output = await failed_start(
            clean_env(STORE_URL="sqlite:///jobs.db"), tmp_path, "--role", role
        )
        assert code == 2
        assert f"--role {role} needs a store shared between processes".encode() in output


async def test_two_processes_cannot_share_one_sqlite_file(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    env = clean_env(LISTEN_PORT="0", STORE_URL="sqlite:///jobs.db")
    async with processes() as started:
        started.append(await WorkerProcess.start(env, tmp_path))
        code, output = await failed_start(env, tmp_path)
    assert code == 2
    # One line that says what to do, no traceback.
    (line,) = output.decode().splitlines()
    assert "cannot start: jobs.db is in use by llm-worker pid" in line, output
    assert "use a redis:// STORE_URL" in line


async def test_the_port_accepts_connections_once_the_listening_line_is_logged(
    tmp_path: Path,
) -> None:
    # Clients (and orchestrators) wait for the line, then connect at once.
    async with processes() as started:
        for attempt in range(3):
            workdir = tmp_path / str(attempt)
            workdir.mkdir()
            worker = await WorkerProcess.start(clean_env(LISTEN_PORT="0"), workdir)
            started.append(worker)
            _, writer = await asyncio.open_connection("127.0.0.1", worker.port)
            writer.close()
            await writer.wait_closed()


def test_defaults_are_safe() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    if "LISTEN_ADDRESS" not in os.environ:
        assert settings.listen_address == "127.0.0.1"
    assert Settings.model_fields["listen_address"].default == "127.0.0.1"
    assert Settings.model_fields["listen_port"].default == 8001
    assert Settings.model_fields["worker_concurrency"].default == 16
    assert Settings.model_fields["job_ttl_seconds"].default == 3600
    assert Settings.model_fields["store_url"].default == "sqlite:///llm-worker.db"
    assert Settings.model_fields["job_max_attempts"].default == 3
    assert Settings.model_fields["worker_heartbeat_timeout_seconds"].default == 15
