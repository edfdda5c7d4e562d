"""``llm-worker serve`` in processes of their own, started as a user starts them.

For tests and benchmarks: a process counts as started when it says it is ready
(a gateway once its port accepts connections, a worker once it claims jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from llm_worker.config import Settings

LISTENING = re.compile(r"listening on ws://([\d.]+):(\d+)/ws/")
COMMAND = [sys.executable, "-m", "llm_worker", "serve"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without settings of ours, plus ``extra``."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


class WorkerProcess:
    """A running ``llm-worker serve``; its output is read continuously into ``lines``."""

    def __init__(self, process: asyncio.subprocess.Process, role: str) -> None:
        self.process = process
        self.role = role
        self.lines: list[str] = []
        self.port: int | None = None
        self.said_ready = False
        self._ready = asyncio.Event()
        self._line_read = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, env: dict[str, str], cwd: Path, *args: str, role: str = "all", timeout: float = 20
    ) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            *COMMAND,
            "--role",
            role,
            *args,
            env=env,
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        started = cls(process, role)
        try:
            await asyncio.wait_for(started._ready.wait(), timeout)
        except TimeoutError:
            await started.stop()
            raise AssertionError(f"{role} did not start:\n{started.output}") from None
        if not started.said_ready:
            # It ended before it was ready: say why, rather than hand out no port.
            await started.stop()
            raise AssertionError(f"{role} stopped before it was ready:\n{started.output}")
        return started

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.lines.append(text)
            self._line_read.set()
            # The lines that say the process is ready: a gateway's once its port accepts.
            if match := LISTENING.search(text):
                self.port = int(match.group(2))
                self.said_ready = True
                self._ready.set()
            elif "worker ready" in text:
                self.said_ready = True
                self._ready.set()
        self._ready.set()
        self._line_read.set()

    async def said(self, text: str, count: int = 1, timeout: float = 10) -> None:
        """Wait until ``count`` lines of the output hold ``text``."""
        async with asyncio.timeout(timeout):
            while sum(text in line for line in self.lines) < count:
                if self._reader.done():
                    raise AssertionError(f"ended without saying {text!r}:\n{self.output}")
                self._line_read.clear()
                await self._line_read.wait()

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        return kib / 1024

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def ws_url(self) -> str:
        assert self.port is not None, "not a gateway"
        return f"ws://127.0.0.1:{self.port}/ws/"

    def kill(self) -> None:
        """``kill -9``: no clean-up of any kind."""
        self.process.send_signal(signal.SIGKILL)

    async def stop(self, timeout: float = 20) -> int | None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        return self.process.returncode


@contextlib.asynccontextmanager
async def processes() -> AsyncIterator[list[WorkerProcess]]:
    """A list to put started processes in; every one is stopped at the end."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for process in started:
            with contextlib.suppress(Exception):
                await process.stop()
