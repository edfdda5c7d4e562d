"""What the SQLite store adds to the contract: the jobs outlive the process."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from llm_worker.jobs import EventKind, JobSpec, JobState
from llm_worker.store.sqlite import DatabaseInUse, SQLiteStore
from llm_worker.templates import Assistant

SPEC = JobSpec(
    assistant=Assistant.model_validate(
        {
            "streams": [
                {
                    "provider": "openai",
                    "settings": {"model": "m", "temperature": 0.5},
                    "messages": [{"role": "system", "content": "{lang}"}, {"insert": "history"}],
                },
                {"pipeline": "echo"},
            ]
        }
    ),
    query="q",
    history=[{"role": "user", "content": "earlier"}],
    variables={"lang": "fr"},
)


async def opened(path: Path, **options: object) -> SQLiteStore:
    store = SQLiteStore(path, queue_max=100, job_ttl=60, **options)  # type: ignore[arg-type]
    await store.start()
    return store


def rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute(sql).fetchall()


async def test_jobs_survive_a_restart_and_running_ones_run_again(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = await opened(path)
    interrupted = (await store.submit(SPEC)).id
    finished = (await store.submit(SPEC)).id
    waiting = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    await store.claim(max_wait=0)
    await store.append(interrupted, 1, EventKind.RUNNING)
    await store.append(interrupted, 1, EventKind.RUNNING, "half an ans")
    await store.append(finished, 1, EventKind.RUNNING)
    await store.append(finished, 1, EventKind.RUNNING, "all of it")
    await store.append(finished, 1, EventKind.DONE)
    await asyncio.sleep(0.05)  # past the flush interval: the deltas are on disk
    await store.close()

    store = await opened(path)
    try:
        assert (await store.get(finished)).state is JobState.DONE  # type: ignore[union-attr]
        assert [e.message for e in await store.read(finished)] == ["", "all of it", ""]
        # The interrupted job is queued again ahead of the one that was waiting.
        assert await store.position(interrupted) == 1
        assert await store.position(waiting) == 2
        claim = await store.claim(max_wait=0)
        assert claim is not None
        assert claim.job_id == interrupted
        assert claim.attempt == 2
        assert claim.spec == SPEC
        events = await store.read(interrupted)
        assert [(e.kind, e.attempt) for e in events] == [(EventKind.RESET, 2)]
        # Listeners resuming after what they saw of attempt 1 get the reset.
        assert [e.kind for e in await store.read(interrupted, after=2)] == [EventKind.RESET]
    finally:
        await store.close()


async def test_submit_returns_only_once_the_job_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    # A long flush interval: only the explicit commit can have written the job.
    store = await opened(path, flush_ms=10_000)
    try:
        job_id = (await store.submit(SPEC)).id
        assert rows(path, "SELECT id, state FROM jobs") == [(job_id, "pending")]
    finally:
        await store.close()


async def test_deltas_are_committed_within_the_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = await opened(path, flush_ms=20)
    try:
        job_id = (await store.submit(SPEC)).id
        await store.claim(max_wait=0)
        for index in range(50):
            await store.append(job_id, 1, EventKind.RUNNING, f"t{index}")
        await asyncio.sleep(0.1)
        assert rows(path, "SELECT count(*) FROM events") == [(50,)]
        # Fifty deltas and the claim took a handful of commits, not fifty.
        assert store._writer is not None
        assert store._writer.commits < 10
    finally:
        await store.close()


async def test_one_process_owns_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = await opened(path)
    try:
        with pytest.raises(DatabaseInUse, match=r"in use by llm-worker pid \d+"):
            await opened(path)
    finally:
        await store.close()
    await (await opened(path)).close()  # free again once closed


async def test_expired_jobs_are_deleted_on_start(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path, queue_max=10, job_ttl=0.1)
    await store.start()
    job_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    await store.append(job_id, 1, EventKind.DONE)
    await store.close()
    await asyncio.sleep(0.2)
    store = SQLiteStore(path, queue_max=10, job_ttl=0.1)
    await store.start()
    try:
        assert await store.get(job_id) is None
        assert rows(path, "SELECT count(*) FROM jobs") == [(0,)]
        assert rows(path, "SELECT count(*) FROM events") == [(0,)]
    finally:
        await store.close()
