"""A WebSocket test client that speaks the worker's protocol (real ``websockets``)."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

import websockets

from llm_worker.wire.dialects import SUBPROTOCOL

TERMINAL = frozenset({"done", "failed", "cancelled"})


def assistant(
    *messages: dict[str, Any], provider: str = "openai", **settings: Any
) -> dict[str, Any]:
    """A one-stream assistant template; by default system + history + ``{query}``."""
    return {
        "streams": [
            {
                "provider": provider,
                "settings": {"model": "gpt-test", **settings},
                "messages": list(messages)
                or [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"insert": "history"},
                    {"role": "user", "content": "{query}"},
                ],
            }
        ]
    }


class WSClient:
    """A client of the full protocol (``llm-worker.v2``), or of the seed's with ``seed=True``."""

    def __init__(self, url: str, *, seed: bool = False, **connect_kwargs: Any) -> None:
        self.url = url
        self.connect_kwargs = {
            # Unbounded: a test may leave messages unread, which must not stall the close.
            "max_size": None,
            "max_queue": None,
            "compression": None,
            **({} if seed else {"subprotocols": [SUBPROTOCOL]}),
            **connect_kwargs,
        }
        self.backlog: deque[dict[str, Any]] = deque()
        self.ws: Any = None

    async def __aenter__(self) -> WSClient:
        self.ws = await websockets.connect(self.url, **self.connect_kwargs)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.ws.close()

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def _next(self, timeout: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
        return json.loads(raw)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next message, from the backlog first."""
        if self.backlog:
            return self.backlog.popleft()
        return await self._next(timeout)

    async def expect(self, message_type: str, timeout: float = 10.0) -> dict[str, Any]:
        message = await self.recv(timeout)
        assert message["type"] == message_type, f"expected {message_type}, got {message}"
        return message

    async def wait_for(
        self, message_type: str, job_id: str | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first message of that type (and job); others go to the backlog."""
        return await self.first_of({message_type}, job_id, timeout)

    async def first_of(
        self, types: set[str], job_id: str | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first message of one of ``types`` (and of the job); others go to the
        backlog, where later waits find them."""

        def wanted(message: dict[str, Any]) -> bool:
            return message["type"] in types and job_id in (None, message.get("job_id"))

        deadline = asyncio.get_running_loop().time() + timeout
        for index, message in enumerate(self.backlog):
            if wanted(message):
                del self.backlog[index]
                return message
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            message = await self._next(max(remaining, 0.001))
            if wanted(message):
                return message
            self.backlog.append(message)

    async def job_messages(self, job_id: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Every message of the job, up to and including its terminal one."""
        collected: list[dict[str, Any]] = []
        ended = False
        others: deque[dict[str, Any]] = deque()
        for message in self.backlog:
            if not ended and message.get("job_id") == job_id:
                collected.append(message)
                ended = message["type"] in TERMINAL
            else:
                others.append(message)
        self.backlog = others
        deadline = asyncio.get_running_loop().time() + timeout
        while not ended:
            remaining = deadline - asyncio.get_running_loop().time()
            message = await self._next(max(remaining, 0.001))
            if message.get("job_id") == job_id:
                collected.append(message)
                ended = message["type"] in TERMINAL
            else:
                self.backlog.append(message)
        return collected

    async def add(self, request_id: str = "req", **fields: Any) -> str:
        """Send ``add`` and return the job id from ``resp_add``."""
        fields.setdefault("query", "Hello there")
        fields.setdefault("assistant", assistant())
        await self.send({"type": "add", "id": request_id, **fields})
        reply = await self.wait_for("resp_add")
        assert reply["id"] == request_id, reply
        return reply["job_id"]

    async def run(self, **fields: Any) -> tuple[str, list[dict[str, Any]]]:
        """Add a job and collect its messages to the end."""
        job_id = await self.add(**fields)
        return job_id, await self.job_messages(job_id)

    async def silent(self, within: float = 0.3) -> None:
        """Assert that no message arrives within ``within`` seconds."""
        assert not self.backlog, f"unexpected messages: {list(self.backlog)}"
        try:
            message = await self._next(within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message: {message}")


def text_of(messages: list[dict[str, Any]]) -> str:
    return "".join(m["message"] for m in messages if m["type"] == "running")


def assert_exactly_once(
    messages: list[dict[str, Any]], text: str, *, last_seq: int, after: int = 0
) -> None:
    """The job's events after ``after`` arrived once each, in order, to the terminal one.

    Deltas may come merged into fewer frames when the listener was behind (a
    replay, a burst): then a frame's ``seq`` is its last delta's. So: ``seq``
    strictly grows, the text is whole, the start frame (when replayed) is apart.
    """
    events = [m for m in messages if "seq" in m]
    seqs = [m["seq"] for m in events]
    assert seqs == sorted(set(seqs)), seqs
    assert all(seq > after for seq in seqs), (after, seqs)
    if after == 0:
        assert events[0] == {
            "type": "running",
            "job_id": events[0]["job_id"],
            "message": "",
            "seq": 1,
        }
    assert text_of(events) == text
    assert events[-1]["type"] in TERMINAL
    assert events[-1]["seq"] == last_seq


def done_frame(job_id: str, seq: int, request_body: dict[str, Any], tokens: int) -> dict[str, Any]:
    """The ``done`` of a one-stream job the loopback server answered with ``tokens``
    tokens to ``request_body``: its usage as that server counts it, and why it ended."""
    from llm_worker.testing.openai_server import prompt_tokens

    prompt = prompt_tokens(request_body)
    usage = {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}
    return {
        "type": "done",
        "job_id": job_id,
        "seq": seq,
        "usage": usage | {"streams": [usage]},
        "finish_reason": "stop",
        "providers": ["openai"],
    }
