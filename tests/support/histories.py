"""Clients that keep going through faults, and what they recorded.

A :class:`Listener` follows jobs through a gateway that may die: it reconnects
and resumes each job after the last ``seq`` it saw, as a careful client does,
and records every event it was shown. :func:`check_history` then says whether
the store kept its promises to it (Jepsen-style: judge what the clients saw).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import websockets

from llm_worker.testing.openai_server import Reply
from llm_worker.wire.dialects import SUBPROTOCOL

TERMINAL = frozenset({"done", "failed", "cancelled"})
EVENTS = frozenset({"running", "reset"}) | TERMINAL
# InvalidMessage: the server was killed during the opening handshake.
_DROPPED = (
    websockets.ConnectionClosed, OSError, TimeoutError, websockets.InvalidStatus,
    websockets.InvalidMessage,
)  # fmt: skip


@dataclass(frozen=True)
class Echo:
    """Replies known in advance: the loopback model answers each query with ``tokens``
    numbered tokens made of it, so that a checker knows every job's full text."""

    tokens: int

    def tokens_for(self, query: str) -> list[str]:
        return [f" {query}.{i}" for i in range(self.tokens)]

    def text(self, query: str) -> str:
        return "".join(self.tokens_for(query))

    def replies(self, delay: float) -> Callable[[dict[str, Any]], Reply]:
        """An upstream handler sending the tokens ``delay`` seconds apart."""

        def handler(body: dict[str, Any]) -> Reply:
            return Reply(tokens=self.tokens_for(body["messages"][-1]["content"]), delay=delay)

        return handler


class Listener:
    def __init__(self, url: str) -> None:
        self.url = url
        self.frames: dict[str, list[dict[str, Any]]] = {}
        """Every event frame shown, by job."""
        self.notices: list[dict[str, Any]] = []
        """Anything else: pending positions, errors."""
        self.connections = 0
        self._new: asyncio.Queue[str] = asyncio.Queue()

    def follow(self, job_id: str) -> None:
        self.frames.setdefault(job_id, [])
        self._new.put_nowait(job_id)

    def ended(self, job_id: str) -> bool:
        frames = self.frames[job_id]
        return bool(frames) and frames[-1]["type"] in TERMINAL

    def all_ended(self) -> bool:
        return all(self.ended(job_id) for job_id in self.frames)

    def _after(self, job_id: str) -> int:
        return max((f["seq"] for f in self.frames[job_id] if "seq" in f), default=0)

    async def run(self, done: Callable[[], bool]) -> None:
        """Follow until ``done()`` and every job followed has ended."""
        while not (done() and self.all_ended()):
            with contextlib.suppress(*_DROPPED):
                async with websockets.connect(
                    self.url, subprotocols=[SUBPROTOCOL], max_size=None, open_timeout=2
                ) as ws:
                    self.connections += 1
                    await self._serve(ws, done)
            await asyncio.sleep(0.05)

    async def _serve(self, ws: Any, done: Callable[[], bool]) -> None:
        listening: set[str] = set()

        async def listen(job_id: str) -> None:
            if job_id not in listening and not self.ended(job_id):
                listening.add(job_id)
                after = self._after(job_id)
                await ws.send(json.dumps({"type": "listen", "job_id": job_id, "after": after}))

        while not self._new.empty():
            self._new.get_nowait()
        for job_id in list(self.frames):
            await listen(job_id)
        while not (done() and self.all_ended()):
            while not self._new.empty():
                await listen(self._new.get_nowait())
            with contextlib.suppress(TimeoutError):
                message = json.loads(await asyncio.wait_for(ws.recv(), 0.1))
                job_id = message.get("job_id")
                if message["type"] in EVENTS and job_id in self.frames:
                    self.frames[job_id].append(message)
                else:
                    self.notices.append(message)


async def add_jobs(
    url: str, queries: list[str], listener: Listener, pause: Callable[[], float]
) -> dict[str, str]:
    """Add a job per query, through drops; the acknowledged ones (query -> job id),
    each followed by ``listener``. An ``add`` whose ``resp_add`` was lost is not."""
    acknowledged: dict[str, str] = {}
    pending = list(queries)
    while pending:
        with contextlib.suppress(*_DROPPED):
            async with websockets.connect(
                url, subprotocols=[SUBPROTOCOL], max_size=None, open_timeout=2
            ) as ws:
                while pending:
                    query = pending[0]
                    request = {"type": "add", "id": query, "query": query, "assistant": ASSISTANT}
                    await ws.send(json.dumps(request))
                    pending.pop(0)  # sent: from now on, acknowledged or lost
                    while True:
                        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                        if message["type"] == "resp_add" and message["id"] == query:
                            acknowledged[query] = message["job_id"]
                            listener.follow(message["job_id"])
                            break
                        assert message["type"] != "error", message
                    await asyncio.sleep(pause())
        await asyncio.sleep(0.05)
    return acknowledged


ASSISTANT = {
    "streams": [
        {
            "provider": "openai",
            "settings": {"model": "m"},
            "messages": [{"role": "user", "content": "{query}"}],
        }
    ]
}


def check_history(frames: list[dict[str, Any]], full_text: str) -> int:
    """What a listener saw of one job kept every promise; returns how many attempts
    it saw.

    Seqs only grow; each attempt's text (between ``reset`` events) is a beginning
    of the one right answer, so nothing shown was contradicted but through a
    ``reset``; the job ended ``done`` with one attempt's complete text, and
    nothing came after its end.
    """
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(set(seqs)), f"seqs went back or repeated: {seqs}"
    assert frames and frames[-1]["type"] == "done", frames[-3:]
    assert all(f["type"] not in TERMINAL for f in frames[:-1]), "an event after the end"
    attempts = [""]
    for frame in frames:
        if frame["type"] == "reset":
            attempts.append("")
        elif frame["type"] == "running":
            attempts[-1] += frame["message"]
            assert full_text.startswith(attempts[-1]), (attempts[-1], full_text)
    assert attempts[-1] == full_text, (attempts, full_text)
    return len(attempts)
