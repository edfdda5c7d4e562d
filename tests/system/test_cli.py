"""``llm-worker serve`` started as a user starts it, in its own process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from llm_worker.config import Settings
from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import COMMAND, WorkerProcess, clean_env, processes
from tests.support.wsclient import WSClient, assistant, text_of
from tests.wire.test_seed_compat import SEED_ADD_REQUEST


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


async def test_sigterm_drains_running_jobs_to_their_listeners_then_stops(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    tokens = [f" t{i}" for i in range(25)]
    upstream.handler = lambda body: Reply(tokens=tokens, delay=0.1)  # 2.5 s a reply
    env = clean_env(
        LISTEN_PORT="0",
        OPENAI_API_KEY="k",
        OPENAI_BASE_URL=upstream.base_url,
        WORKER_CONCURRENCY="3",
        SHUTDOWN_GRACE_SECONDS="30",
    )
    worker = await WorkerProcess.start(env, tmp_path)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.port}", timeout=30)
    try:
        async with (
            WSClient(worker.ws_url) as full,
            WSClient(worker.ws_url, seed=True) as seed,
            WSClient(worker.ws_url) as idle,
        ):
            running = [await full.add("a"), await seed.add("b")]
            # And one followed over HTTP, as Server-Sent Events.
            over_http = await http.post("/v1/jobs", json={"query": "c", "assistant": assistant()})
            streamed = asyncio.create_task(sse_frames(http, over_http.json()["job_id"]))
            queued = await full.add("queued")
            for client, job_id in zip((full, seed), running, strict=True):
                await client.wait_for("running", job_id)
            worker.process.send_signal(signal.SIGTERM)
            stopped_at = asyncio.get_running_loop().time()

            # No new connections; the open ones may follow their jobs, but add none.
            await refused(worker.ws_url)
            await full.send({"type": "add", "id": "late", "query": "q", "assistant": assistant()})
            error = await full.wait_for("error")
            assert error["ref"] == "late" and "shutting down" in error["message"]
            await seed.send({"type": "add", "id": "late", "query": "q", "assistant": assistant()})
            resp_add = await seed.wait_for("resp_add")
            assert "shutting down" in (await seed.wait_for("failed", resp_add["job_id"]))["message"]

            # Every running job's answer reaches its listener whole.
            for client, job_id in zip((full, seed), running, strict=True):
                messages = await client.job_messages(job_id, timeout=20)
                assert messages[-1]["type"] == "done"
                assert text_of(messages) == "".join(tokens)
            frames = await asyncio.wait_for(streamed, 20)
            assert frames[-1]["type"] == "done"
            assert text_of(frames) == "".join(tokens)
            # Then every connection is closed: "service restart", come back later.
            for client in (full, seed, idle):
                code, rest = await until_closed(client)
                assert code == 1012
                assert all(m["job_id"] == queued for m in rest), rest
        await asyncio.wait_for(worker.process.wait(), 10)
        # Done when the jobs were, not at the end of the 30 s grace.
        assert asyncio.get_running_loop().time() - stopped_at < 15
    finally:
        await http.aclose()
        await worker.stop()
    assert "stopping: taking no new connections or jobs" in worker.output
    assert "Traceback" not in worker.output
    # The queued job waits in the database for the next start.
    assert len(upstream.chat_requests) == 3


async def sse_frames(http: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    """The frames of a job's event stream, until it ends."""
    async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        return [
            json.loads(line.removeprefix("data: "))
            async for line in response.aiter_lines()
            if line.startswith("data: ")
        ]


async def until_closed(client: WSClient) -> tuple[int | None, list[dict[str, Any]]]:
    """The code the server closed the connection with, and what came before it."""
    messages = []
    try:
        while True:
            messages.append(await client.recv(timeout=10))
    except websockets.ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), messages


async def refused(url: str, timeout: float = 5) -> None:
    """Return once a new connection to ``url`` is refused."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            async with WSClient(url):
                pass
        except (OSError, websockets.InvalidStatus):
            return
        assert asyncio.get_running_loop().time() < deadline, "new connections still accepted"
        await asyncio.sleep(0.05)


# -- settings checked at start ------------------------------------------------


async def test_misspelt_and_unknown_variables_of_ours_are_warned_about(tmp_path: Path) -> None:
    env = clean_env(
        LISTEN_PORT="0", STORE_URL="memory://", WORKER_CONCURENCY="4", LLM_WORKER_COLOUR="1"
    )
    (tmp_path / ".env").write_text("OPENAI_API_BASE=http://127.0.0.1:9/v1\n")
    async with processes() as started:
        worker = await WorkerProcess.start(env, tmp_path)
        started.append(worker)
    output = worker.output
    assert (
        "WORKER_CONCURENCY is not a setting and is ignored: did you mean WORKER_CONCURRENCY?"
        in (output)
    )
    assert (
        "OPENAI_API_BASE is not a setting and is ignored: did you mean OPENAI_BASE_URL?" in output
    )
    assert "LLM_WORKER_COLOUR is not a setting and is ignored" in output


async def test_a_missing_env_file_named_on_the_command_line_is_an_error(tmp_path: Path) -> None:
    code, output = await failed_start(clean_env(), tmp_path, "--env-file", "/nonexistent/x.env")
    assert code == 2
    assert output.decode().splitlines() == [
        "llm-worker: --env-file /nonexistent/x.env: no such file"
    ]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            {"OPENAI_BASE_URL": "notaurl"},
            "bad setting OPENAI_BASE_URL: must be an http:// or https:// URL",
        ),
        ({"VLLM_URI": "gpu-box:8000"}, "bad setting VLLM_URI: must be an http:// or https:// URL"),
        ({"ANTHROPIC_BASE_URL": "ftp://x"}, "bad setting ANTHROPIC_BASE_URL: must be an http://"),
        (
            {"LISTEN_ADDRESS": "999.1.1.1"},
            "cannot start: LISTEN_ADDRESS '999.1.1.1' is not an address",
        ),
        ({"ECHO_PROVIDER": "maybe"}, "bad setting ECHO_PROVIDER"),
    ],
)
async def test_a_bad_value_names_its_setting_before_anything_is_on_disk(
    env: dict[str, str], said: str, tmp_path: Path
) -> None:
    code, output = await failed_start(
        clean_env(LISTEN_PORT="0", STORE_URL="sqlite:///jobs.db", **env), tmp_path
    )
    assert code == 2
    text = output.decode()
    assert said in text, text
    assert "Traceback" not in text
    assert not (tmp_path / "jobs.db").exists()


async def test_a_port_in_use_is_said_before_the_database_exists(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = await failed_start(
            clean_env(LISTEN_PORT=str(port), STORE_URL="sqlite:///jobs.db"), tmp_path
        )
    assert code == 2
    (line,) = output.decode().splitlines()
    assert line.endswith(
        f"cannot start: LISTEN_PORT {port} on 127.0.0.1 is in use by another process"
    )
    assert os.listdir(tmp_path) == []


async def test_a_malformed_yaml_providers_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text("providers:\n  x: [unclosed\n")
    code, output = await failed_start(
        clean_env(PROVIDERS_FILE="providers.yaml", LISTEN_PORT="0"), tmp_path
    )
    assert code == 2
    (line,) = output.decode().splitlines()
    assert "cannot start: PROVIDERS_FILE providers.yaml is not valid YAML:" in line


async def test_a_providers_file_base_url_must_be_a_url(tmp_path: Path) -> None:
    (tmp_path / "providers.toml").write_text('[providers.x]\nbase_url = "gpu-box:8000/v1"\n')
    code, output = await failed_start(
        clean_env(PROVIDERS_FILE="providers.toml", LISTEN_PORT="0"), tmp_path
    )
    assert code == 2
    assert b"providers.x: Value error, base_url must be an http:// or https:// URL" in output or (
        b"providers.x: base_url must be an http:// or https:// URL" in output
    ), output


async def test_the_sqlite_store_speaks_in_its_own_name(tmp_path: Path) -> None:
    env = clean_env(LISTEN_PORT="0", STORE_URL="sqlite:///jobs.db")
    async with processes() as started:
        worker = await WorkerProcess.start(env, tmp_path)
        started.append(worker)
    assert "llm_worker.store.sqlite: 0 jobs kept" in worker.output
    assert "llm_worker.store.memory" not in worker.output
