"""What the SQLite store adds to the contract: the jobs outlive the process."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from llm_worker.jobs.model import EventKind, JobSpec, JobState
from llm_worker.jobs.templates import Assistant
from llm_worker.store.sqlite import DatabaseInUse, SQLiteStore
from tests.support.clock import ManualClock
from tests.support.stores import until_shown

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
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute(sql).fetchall()


def crash_copy(path: Path) -> Path:
    """The database as a crash would leave it now: its files, copied aside.

    (A store keeps its file locked while it runs; the copy reads what is on
    disk, the write-ahead log included.)
    """
    copy = path.with_name(f"crash-{path.name}")
    for suffix in ("", "-wal"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            shutil.copyfile(source, f"{copy}{suffix}")
    return copy


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
    await until_shown(store, interrupted, 2)  # saved, as everything shown is
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
        # Until the claim is saved, readers see the first attempt; then its reset.
        await until_shown(store, interrupted, 3)
        events = await store.read(interrupted)
        assert [(e.seq, e.kind, e.attempt) for e in events] == [(3, EventKind.RESET, 2)]
        # Listeners resuming after what they saw of attempt 1 get the reset.
        assert [e.kind for e in await store.read(interrupted, after=2)] == [EventKind.RESET]
    finally:
        await store.close()


async def test_a_kept_request_outlives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = await opened(path)
    kept = SPEC.model_copy(update={"keep_request": True})
    kept_id = (await store.submit(kept)).id
    plain_id = (await store.submit(SPEC)).id
    for job_id in (kept_id, plain_id):
        await store.claim(max_wait=0)
        await store.append(job_id, 1, EventKind.DONE)
    await store.close()

    store = await opened(path)
    try:
        assert await store.request(kept_id) == kept
        assert await store.request(plain_id) is None
    finally:
        await store.close()


async def test_submit_returns_only_once_the_job_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = await opened(path)
    try:
        job_id = (await store.submit(SPEC)).id
        # What a crash at this moment would leave on disk.
        assert rows(crash_copy(path), "SELECT id, state FROM jobs") == [(job_id, "pending")]
    finally:
        await store.close()


async def test_deltas_are_shown_once_on_disk_many_to_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = await opened(path)
    try:
        job_id = (await store.submit(SPEC)).id
        await store.claim(max_wait=0)
        await store.append(job_id, 1, EventKind.RUNNING)
        await until_shown(store, job_id, 1)
        commits = store.sqlite.commits
        for index in range(50):
            await store.append(job_id, 1, EventKind.RUNNING, f"t{index}")
        # Not shown before they are saved...
        assert [e.seq for e in await store.read(job_id)] == [1]
        await until_shown(store, job_id, 51)
        # ... and then they are on disk: fifty deltas in a commit or two, not fifty.
        assert rows(crash_copy(path), "SELECT count(*) FROM events") == [(51,)]
        assert store.sqlite.commits - commits <= 2
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
    clock = ManualClock()
    store = await opened(path, clock=clock)
    job_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    await store.append(job_id, 1, EventKind.DONE)
    await store.close()
    # Started again within the TTL (by the store's clock): the job is kept...
    store = await opened(path, clock=clock)
    try:
        assert await store.get(job_id) is not None
    finally:
        await store.close()
    clock.advance(61)
    # ...and once it has passed, deleted as the store starts.
    store = await opened(path, clock=clock)
    try:
        assert await store.get(job_id) is None
    finally:
        await store.close()
    assert rows(path, "SELECT count(*) FROM jobs") == [(0,)]
    assert rows(path, "SELECT count(*) FROM events") == [(0,)]


async def test_notices_outlive_a_restart_and_kinds_from_a_newer_version_are_left_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    store = await opened(path)
    job_id = (await store.submit(SPEC)).id
    await store.claim(max_wait=0)
    await store.append(job_id, 1, EventKind.RUNNING)
    await store.append(job_id, 1, EventKind.NOTICE, "loading local model 'm'")
    await store.append(job_id, 1, EventKind.NOTICE, "to be a kind from the future")
    await store.append(job_id, 1, EventKind.RUNNING, "an answer")
    await store.append(job_id, 1, EventKind.DONE)
    await until_shown(store, job_id, 5)
    await store.close()
    # As a newer version might have written it: a kind this one does not know.
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("UPDATE events SET kind = 'from-the-future' WHERE seq = 3")

    store = await opened(path)
    try:
        events = await store.read(job_id)
        assert [(e.seq, e.kind, e.message) for e in events] == [
            (1, EventKind.RUNNING, ""),
            (2, EventKind.NOTICE, "loading local model 'm'"),
            (4, EventKind.RUNNING, "an answer"),
            (5, EventKind.DONE, ""),
        ]
        for after, seqs in ((2, [4, 5]), (3, [4, 5]), (4, [5])):
            followed = [e.seq async for batch in store.follow(job_id, after) for e in batch]
            assert followed == seqs, after
    finally:
        await store.close()
