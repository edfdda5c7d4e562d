"""A client of the seed's protocol as strict as the real one, F-AI's backend.

F-AI's ``LLMWorkerConnection`` shares one WebSocket between all its requests,
knows the types ``resp_add``, ``running`` and ``done``, and on any other drops
the connection: every request in flight on it then waits for ever. This client
does the same (``known`` sets which types it knows), but records the frame that
killed it, and lets a waiting request fail after a timeout instead of hanging,
so that a test can say what went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import websockets

F_AI_TYPES = frozenset({"resp_add", "running", "done"})


class JobFailed(Exception):
    """The job ended with ``failed`` (for a client that knows that type)."""


class SeedClient:
    def __init__(self, url: str, known: frozenset[str] = F_AI_TYPES) -> None:
        self.url = url
        self.known = known
        self.violations: list[dict[str, Any]] = []
        """Frames of types the client does not know; the first one killed the connection."""
        self._answers: dict[Any, asyncio.Future[str]] = {}
        self._job_of: dict[Any, str] = {}
        self._request_of: dict[str, Any] = {}
        self._text: dict[str, list[str]] = {}
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SeedClient:
        # No subprotocol and no query parameter: the seed's dialect.
        self._ws = await websockets.connect(self.url, max_size=None, compression=None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()

    async def ask(
        self, request_id: Any, query: str, assistant: dict[str, Any], timeout: float = 30
    ) -> str:
        """Send an ``add`` and return the job's whole text once it is ``done``."""
        answer = self._answers[request_id] = asyncio.get_running_loop().create_future()
        await self._ws.send(
            json.dumps({"type": "add", "id": request_id, "query": query, "assistant": assistant})
        )
        return await asyncio.wait_for(answer, timeout)

    def job_id(self, request_id: Any) -> str:
        return self._job_of[request_id]

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            kind = message["type"]
            if kind not in self.known:
                # What F-AI's client does: its handler raises, the connection is dropped
                # and nothing on it is answered any more.
                self.violations.append(message)
                await self._ws.close()
                return
            if kind == "resp_add":
                self._job_of[message["id"]] = message["job_id"]
                self._request_of[message["job_id"]] = message["id"]
                self._text[message["job_id"]] = []
            elif kind == "running":
                self._text[message["job_id"]].append(message["message"])
            elif kind == "done":
                job_id = message["job_id"]
                self._settle(job_id, result="".join(self._text.pop(job_id)))
            elif kind == "failed":
                self._settle(message["job_id"], error=JobFailed(message["message"]))

    def _settle(self, job_id: str, *, result: str = "", error: Exception | None = None) -> None:
        answer = self._answers.pop(self._request_of.pop(job_id))
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(result)
