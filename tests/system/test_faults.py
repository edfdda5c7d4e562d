"""Faults caused for real, and what every listener recorded: ``kill -9`` at the worst
moment and at random ones, a full disk, an unwritable database, Redis restarted empty
or paused. No mock stands in for the store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_worker.store.redis import JOB_LOST
from llm_worker.testing.openai_server import OpenAIServer
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.testing.redis_server import RedisServer, free_port, unique_prefix
from llm_worker.wire.dialects import SEED_TYPES
from tests.support.histories import ASSISTANT, Echo, Listener, add_jobs, check_history
from tests.support.wsclient import WSClient, text_of

ECHO = Echo(tokens=10)


def assert_clean(output: str) -> None:
    """Nothing unhandled in a process's log."""
    for sign in ("Traceback", "never retrieved"):
        where = output.find(sign)
        assert where < 0, output[max(where - 1500, 0) : where + 4000]


# -- kill -9 -------------------------------------------------------------------


async def test_kill_9_the_moment_a_listener_receives_done_takes_back_nothing(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    upstream.handler = ECHO.replies(0.001)
    env = clean_env(LISTEN_PORT="0", STORE_URL="sqlite:///jobs.db", OPENAI_API_KEY="k",
                    OPENAI_BASE_URL=upstream.base_url)  # fmt: skip
    async with processes() as started:
        worker = await WorkerProcess.start(env, tmp_path)
        started.append(worker)
        for trial in range(20):
            query = f"trial{trial}"
            async with WSClient(worker.ws_url) as client:
                job_id = await client.add(query=query)
                seen = []
                while not seen or seen[-1]["type"] != "done":
                    message = await client.recv()
                    if message.get("job_id") == job_id and "seq" in message:
                        seen.append(message)
                worker.kill()  # at once: whatever was shown must be on disk
            await worker.process.wait()
            worker = await WorkerProcess.start(env, tmp_path)
            started.append(worker)
            async with WSClient(worker.ws_url) as client:
                await client.send({"type": "status", "job_id": job_id})
                status = await client.expect("status")
                assert status["state"] == "done", (trial, status)
                assert status["output"] == text_of(seen) == ECHO.text(query)
                # Resuming after the done: the done again, never a re-run.
                await client.send({"type": "listen", "job_id": job_id, "after": seen[-1]["seq"]})
                assert await client.job_messages(job_id) == [seen[-1]]
    assert all(len(requests) == 1 for requests in by_query(upstream).values())


def by_query(upstream: OpenAIServer) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for request in upstream.chat_requests:
        found.setdefault(request.body["messages"][-1]["content"], []).append(request)
    return found


async def test_random_kill_9s_of_a_sqlite_worker_break_no_promise(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    upstream.handler = ECHO.replies(0.03)
    port = free_port()
    env = clean_env(LISTEN_PORT=str(port), STORE_URL="sqlite:///jobs.db", OPENAI_API_KEY="k",
                    OPENAI_BASE_URL=upstream.base_url, JOB_MAX_ATTEMPTS="50")  # fmt: skip
    url = f"ws://127.0.0.1:{port}/ws/"
    chance = random.Random(9)
    queries = [f"job{i}" for i in range(100)]
    async with processes() as started:
        started.append(await WorkerProcess.start(env, tmp_path))
        listener = Listener(url)
        adding = asyncio.create_task(
            add_jobs(url, queries, listener, pause=lambda: chance.uniform(0, 0.05))
        )

        async def kill_now_and_then() -> None:
            for _ in range(12):
                await asyncio.sleep(chance.uniform(0.2, 0.8))
                started[-1].kill()
                await started[-1].process.wait()
                started.append(await WorkerProcess.start(env, tmp_path))

        killing = asyncio.create_task(kill_now_and_then())
        await asyncio.wait_for(listener.run(done=lambda: adding.done() and killing.done()), 120)
        acknowledged = await adding
    assert listener.connections > 1  # it had to come back, and resume
    assert len(acknowledged) >= 80, "most adds were acknowledged"
    attempts = [check_history(listener.frames[job_id], ECHO.text(query))
                for query, job_id in acknowledged.items()]  # fmt: skip
    assert max(attempts) > 1, "some jobs were cut and ran again"
    for process in started:
        assert_clean(process.output)


async def test_random_kill_9s_of_redis_workers_break_no_promise(
    upstream: OpenAIServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    upstream.handler = ECHO.replies(0.03)
    env = clean_env(LISTEN_PORT="0", STORE_URL=redis_server.url, REDIS_PREFIX=unique_prefix(),
                    OPENAI_API_KEY="k", OPENAI_BASE_URL=upstream.base_url,
                    WORKER_HEARTBEAT_TIMEOUT_SECONDS="1", JOB_MAX_ATTEMPTS="50")  # fmt: skip
    chance = random.Random(11)
    queries = [f"job{i}" for i in range(100)]
    async with processes() as started:
        gateway = await WorkerProcess.start(env, tmp_path, role="gateway")
        workers = [await WorkerProcess.start(env, tmp_path, role="worker") for _ in range(2)]
        started += [gateway, *workers]
        listener = Listener(gateway.ws_url)
        adding = asyncio.create_task(
            add_jobs(gateway.ws_url, queries, listener, pause=lambda: chance.uniform(0, 0.05))
        )

        async def kill_now_and_then() -> None:
            for _ in range(12):
                await asyncio.sleep(chance.uniform(0.2, 0.8))
                victim = chance.randrange(len(workers))
                workers[victim].kill()
                await workers[victim].process.wait()
                workers[victim] = await WorkerProcess.start(env, tmp_path, role="worker")
                started.append(workers[victim])

        killing = asyncio.create_task(kill_now_and_then())
        await asyncio.wait_for(listener.run(done=lambda: adding.done() and killing.done()), 180)
        acknowledged = await adding
    assert len(acknowledged) == len(queries)  # the gateway never died
    attempts = [check_history(listener.frames[job_id], ECHO.text(query))
                for query, job_id in acknowledged.items()]  # fmt: skip
    assert max(attempts) > 1, "some jobs were taken over and ran again"
    for process in started:
        assert_clean(process.output)


# -- the disk ------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and chattr need root")


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``: a disk that fills up."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write to ``disk`` until it is full; the file that filled it."""
    filler = disk / "filler"
    with open(filler, "wb") as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 65536)
            file.flush()
    return filler


async def check_store_failure_and_recovery(
    worker: WorkerProcess, upstream: OpenAIServer, break_it: Any, mend_it: Any
) -> None:
    """Jobs streaming, the store breaks: each listener gets ``failed`` naming the store,
    nothing refused runs, the process lives; once mended, new jobs run."""
    upstream.handler = ECHO.replies(0.05)
    async with WSClient(worker.ws_url) as full, WSClient(worker.ws_url, seed=True) as seed:
        running = [await full.add(f"r{i}", query=f"running{i}") for i in range(2)]
        running.append(await seed.add("s", query="seed"))
        for client, job_id in [(full, running[0]), (full, running[1]), (seed, running[2])]:
            await client.wait_for("running", job_id)
        break_it()
        for client, job_id in [(full, running[0]), (full, running[1]), (seed, running[2])]:
            end = await client.first_of({"done", "failed"}, job_id, timeout=15)
            assert end["type"] == "failed", end
            assert end["message"].startswith("the job store could not save the job: "), end
        # While it is broken, adds are refused, and the model never hears of them.
        await full.send(
            {"type": "add", "id": "refused", "query": "refused", "assistant": ASSISTANT}
        )
        error = await full.wait_for("error", timeout=15)
        assert (error["ref"], error["code"]) == ("refused", "store_unavailable")
        assert error["message"].startswith("the job store could not save the job: ")
        await seed.send(
            {"type": "add", "id": "refused", "query": "refused", "assistant": ASSISTANT}
        )
        job_id = (await seed.wait_for("resp_add"))["job_id"]
        assert (await seed.first_of({"failed"}, job_id, timeout=15))["message"].startswith(
            "the job store could not save the job: "
        )
        assert "refused" not in by_query(upstream)
        mend_it()
        upstream.handler = ECHO.replies(0)
        _, messages = await full.run(request_id="after", query="after")
        assert messages[-1]["type"] == "done"
        assert text_of(messages) == ECHO.text("after")
        assert {m["type"] for m in seed.backlog if "seq" in m} <= SEED_TYPES
    assert worker.process.returncode is None, "the process died"


@needs_root
async def test_a_full_disk_fails_the_jobs_it_touches_then_jobs_run_again(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", "16m") as disk:
        env = clean_env(LISTEN_PORT="0", STORE_URL=f"sqlite:///{disk}/jobs.db",
                        OPENAI_API_KEY="k", OPENAI_BASE_URL=upstream.base_url)  # fmt: skip
        async with processes() as started:
            worker = await WorkerProcess.start(env, tmp_path)
            started.append(worker)
            filler: list[Path] = []
            await check_store_failure_and_recovery(
                worker,
                upstream,
                break_it=lambda: filler.append(fill(disk)),
                mend_it=lambda: filler[0].unlink(),
            )
        assert_clean(worker.output)


def chattr(flag: str, *paths: Path) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        subprocess.run(["chattr", flag, *existing], check=True)


@needs_root
async def test_an_unwritable_database_fails_the_jobs_it_touches_and_kills_nothing(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    database = tmp_path / "jobs.db"
    files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    env = clean_env(LISTEN_PORT="0", STORE_URL="sqlite:///jobs.db", OPENAI_API_KEY="k",
                    OPENAI_BASE_URL=upstream.base_url)  # fmt: skip
    try:
        async with processes() as started:
            worker = await WorkerProcess.start(env, tmp_path)
            started.append(worker)
            await check_store_failure_and_recovery(
                worker,
                upstream,
                break_it=lambda: chattr("+i", *files),
                mend_it=lambda: chattr("-i", *files),
            )
        assert_clean(worker.output)
        # No shared-memory index file was mapped: nothing a failing disk could SIGBUS.
        assert not files[2].exists()
    finally:
        chattr("-i", *files)


# -- Redis ---------------------------------------------------------------------


async def gateway_and_worker(
    redis: RedisServer, upstream: OpenAIServer, tmp_path: Path, started: list[WorkerProcess]
) -> tuple[WorkerProcess, WorkerProcess]:
    """A gateway and a worker sharing ``redis``, with a grace period of one second."""
    env = clean_env(LISTEN_PORT="0", STORE_URL=redis.url, REDIS_PREFIX=unique_prefix(),
                    OPENAI_API_KEY="k", OPENAI_BASE_URL=upstream.base_url,
                    REDIS_OUTAGE_GRACE_SECONDS="1")  # fmt: skip
    gateway = await WorkerProcess.start(env, tmp_path, role="gateway")
    started.append(gateway)
    worker = await WorkerProcess.start(env, tmp_path, role="worker")
    started.append(worker)
    return gateway, worker


async def health(gateway: WorkerProcess) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{gateway.port}/healthz", timeout=10)).status_code


async def test_redis_restarted_empty_loses_its_jobs_but_not_the_service(
    upstream: OpenAIServer, own_redis: RedisServer, tmp_path: Path
) -> None:
    upstream.handler = ECHO.replies(0.2)
    async with processes() as started:
        gateway, worker = await gateway_and_worker(own_redis, upstream, tmp_path, started)
        async with WSClient(gateway.ws_url) as full, WSClient(gateway.ws_url, seed=True) as seed:
            lost = [await full.add(f"j{i}", query=f"lost{i}") for i in range(3)]
            for job_id in lost:
                await seed.send({"type": "listen", "job_id": job_id})
                await full.wait_for("running", job_id)
                # Following it before Redis goes: a listen that arrives after the job is
                # lost is answered as for any unknown job (a failed without a seq).
                await seed.wait_for("running", job_id)
            own_redis.stop(kill=True)
            own_redis.wipe()
            await asyncio.sleep(1.5)
            assert await health(gateway) == 503
            own_redis.start()
            # Every listener of a lost job is told so, in its own dialect.
            for client in (full, seed):
                for job_id in lost:
                    end = await client.first_of({"done", "failed"}, job_id, timeout=20)
                    assert end == {"type": "failed", "job_id": job_id, "message": JOB_LOST,
                                   "seq": end["seq"]}  # fmt: skip
            # The queue is made again: new jobs run, on the same processes.
            upstream.handler = ECHO.replies(0)
            _, messages = await full.run(request_id="new", query="new")
            assert messages[-1]["type"] == "done"
            assert text_of(messages) == ECHO.text("new")
            assert await health(gateway) == 200
    for process in (gateway, worker):
        assert_clean(process.output)
    # Said by whichever process meets the loss first (the gateway's health probe may).
    assert "Redis has lost the job queue" in worker.output + gateway.output


async def test_redis_paused_past_the_grace_period_then_back(
    upstream: OpenAIServer, own_redis: RedisServer, tmp_path: Path
) -> None:
    upstream.handler = ECHO.replies(0.2)
    async with processes() as started:
        gateway, worker = await gateway_and_worker(own_redis, upstream, tmp_path, started)
        async with WSClient(gateway.ws_url) as full, WSClient(gateway.ws_url, seed=True) as seed:
            job_id = await full.add(query="patient")
            await seed.send({"type": "listen", "job_id": job_id})
            await full.wait_for("running", job_id)
            own_redis.pause()
            try:
                notice = await full.wait_for("error", timeout=15)
                assert (notice["ref"], notice["code"]) == (job_id, "store_unavailable")
                assert "unreachable" in notice["message"]
                assert await health(gateway) == 503
            finally:
                own_redis.resume()
            messages = await full.job_messages(job_id, timeout=60)
            assert messages[-1]["type"] == "done"
            check_history([m for m in messages if "seq" in m], ECHO.text("patient"))
            seed_messages = await seed.job_messages(job_id, timeout=60)
            assert {m["type"] for m in seed_messages} <= SEED_TYPES
            assert text_of(seed_messages) == ECHO.text("patient")
            assert await health(gateway) == 200
    for process in (gateway, worker):
        assert_clean(process.output)
