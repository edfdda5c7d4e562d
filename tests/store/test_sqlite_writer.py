"""The SQLite store's writer process on its own: when the process it answers goes away
(a kill -9 of the worker), it ends quietly and keeps what it committed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from llm_worker.store import sqlite_writer as writer
from llm_worker.store.sqlite import SCHEMA

JOB_ROW = ("job-1", 1, "pending", 0, "{}", 1.0, None, None, "")


def start_writer(path: Path) -> subprocess.Popen[bytes]:
    """The writer as the store starts it, on a database with the store's schema, ready."""
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA)
    connection.close()
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", writer.__file__, str(path), "NORMAL"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert writer.read_frame(process.stdout) == ("ready",)
    return process


def send(process: subprocess.Popen[bytes], data: bytes) -> None:
    assert process.stdin is not None
    process.stdin.write(data)
    process.stdin.flush()


def ended(process: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    """Its exit status and what it said on stderr, once its input is closed."""
    assert process.stdin is not None and process.stderr is not None
    process.stdin.close()
    status = process.wait(timeout=30)
    return status, process.stderr.read()


def jobs_in(path: Path) -> list[Any]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT id, state FROM jobs").fetchall()
    connection.close()
    return rows


def test_a_round_answered_to_nobody_ends_the_writer_quietly(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    process = start_writer(path)
    assert process.stdout is not None
    process.stdout.close()  # the store's process has gone: nobody reads the answer
    send(process, writer.frame(("round", [("job-1", [(writer.INSERT_JOB, JOB_ROW)])])))
    assert ended(process) == (0, b"")
    assert jobs_in(path) == [("job-1", "pending")]  # committed before it found out


def test_a_request_cut_off_mid_frame_is_the_end_of_input(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    process = start_writer(path)
    whole = writer.frame(("round", [("job-1", [(writer.INSERT_JOB, JOB_ROW)])]))
    send(process, whole[: len(whole) // 2])
    assert ended(process) == (0, b"")
    assert jobs_in(path) == []  # half a round is no round
    assert process.stdout is not None
    assert process.stdout.read() == b""


def test_a_round_is_answered_while_the_store_listens(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    process = start_writer(path)
    assert process.stdout is not None
    send(process, writer.frame(("round", [("job-1", [(writer.INSERT_JOB, JOB_ROW)])])))
    assert writer.read_frame(process.stdout) == {}  # no job's write failed
    assert ended(process) == (0, b"")
    assert jobs_in(path) == [("job-1", "pending")]
