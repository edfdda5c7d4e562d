"""A receiver of webhooks: a real HTTP/1.1 server on a free loopback port that records
each request it gets and answers as the test scripts it (a status per request, then 200).

Plain asyncio, one request per connection (it answers ``Connection: close``), so that
nothing of the deliverer's side is taken for granted: what arrives is what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    statuses: list[int] = field(default_factory=list)
    """The status of each request to come, in turn; 200 once they are used up."""
    fail_each_once: bool = False
    """Answer 500 to the first request of each ``webhook-id``, whatever the order."""
    location: str = ""
    """Where a 3xx answer points."""
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Once ``count`` requests have arrived: all of them so far."""
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.received) >= count)
        return list(self.received)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in filter(None, lines[1:]):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = self.statuses.pop(0) if self.statuses else 200
            seen = {r.headers.get("webhook-id") for r in self.received}
            if self.fail_each_once and headers.get("webhook-id") not in seen:
                status = 500
            extra = f"location: {self.location}\r\n" if 300 <= status < 400 else ""
            reply = b"received" if status < 300 else b"no " * 200
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-length: {len(reply)}\r\n{extra}"
                "connection: close\r\n\r\n".encode()
                + reply
            )
            await writer.drain()
            async with self._arrived:
                self.received.append(Received(method, path, headers, body))
                self._arrived.notify_all()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver | None = None, port: int = 0) -> AsyncIterator[Receiver]:
    """A receiver listening on ``port`` (0: a free one) until the block ends."""
    receiver = receiver or Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", port)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()
