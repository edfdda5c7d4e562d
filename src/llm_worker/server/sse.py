"""One job's reply as a live Server-Sent Events response: the transport every event
stream of the HTTP API shares (``/v1/jobs/{id}/events``, and OpenAI's chat
completions and responses streamed), so each gets the same care:

- it counts as a follower of its job while it relays it, so a stopping worker lets
  it relay the job's end (:meth:`Gateway.drain`), as a WebSocket's followers do;
- a reader that leaves it unread for ``SLOW_LISTENER_SECONDS`` is cut, whether its
  writes wait (the buffers between are full) or what was sent stays unacknowledged
  by the reader's TCP (a path that went dark, which the kernel's buffers hide from
  the first test);
- a client that goes away before the job's end is noticed at once, and the stream's
  :meth:`~JobStream.client_gone` decides what that does to the job (the jobs API
  leaves it running; the OpenAI doors cancel it, unless asked not to).

A subclass says what bytes the stream is made of (:meth:`~JobStream.chunks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llm_worker.ops.logs import set_job
from llm_worker.server.access import Principal
from llm_worker.server.serving import TRANSPORT_EXTENSION

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from llm_worker.server.gateway import Gateway

log = logging.getLogger(__name__)
T = TypeVar("T")

SSE_HEADERS = {
    "cache-control": "no-cache",
    # Tells nginx not to buffer the stream.
    "x-accel-buffering": "no",
}
KEEPALIVE = b": keep-alive\n\n"
"""A comment: what a stream sends when idle (every SSE parser skips it), which also
finds a reader gone."""


class JobStream(Response):
    """A job's reply streamed as Server-Sent Events; :meth:`chunks` makes its bytes."""

    media_type = "text/event-stream"

    def __init__(
        self,
        gateway: Gateway,
        principal: Principal,
        job_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # Not Response.__init__: it would say the body is empty (content-length: 0).
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})
        self.gateway = gateway
        self.principal = principal
        self.job_id = job_id

    def chunks(self) -> AsyncIterator[bytes]:
        """The stream's bytes, until it is to end (the job's end, or sooner)."""
        raise NotImplementedError

    async def client_gone(self) -> None:
        """The reader left (or was cut) before :meth:`chunks` ended: the job runs on."""

    def side_tasks(self, send: Send) -> list[Coroutine[Any, Any, None]]:
        """More work beside the relay for as long as it lasts (none here); one that
        returns ends the stream."""
        return []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        relaying = asyncio.create_task(self._relay(transport, send), name=f"sse-{self.job_id}")
        tasks = [
            relaying,
            asyncio.create_task(disconnected(receive), name="sse-disconnect"),
            asyncio.create_task(self._watch_delivery(transport), name="sse-delivery"),
            *(asyncio.create_task(side) for side in self.side_tasks(send)),
        ]
        self.gateway.streams[relaying] = self.job_id
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.gateway.streams.pop(relaying, None)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
        if relaying.done() and not relaying.cancelled() and relaying.exception() is None:
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await self.client_gone()

    async def _relay(self, transport: Any, send: Send) -> None:
        set_job(self.job_id, self.principal.tenant)  # this task's log lines are about the job
        limit = self.gateway.limits.slow_listener_seconds
        async for data in self.chunks():
            message = {"type": "http.response.body", "body": data, "more_body": True}
            if transport is None or not transport.blocked():
                await send(message)
                continue
            try:
                await asyncio.wait_for(send(message), limit)
            except TimeoutError:
                log.info("cutting an event stream left unread for %.0fs", limit)
                transport.abort()
                raise OSError("the reader was too slow") from None

    async def _watch_delivery(self, transport: Any) -> None:
        """Returns, having hung up, once bytes sent have stayed unacknowledged by the
        reader's TCP for ``SLOW_LISTENER_SECONDS``: a reader that has stopped reading
        once the buffers between are full, or a path that went dark, where small
        writes (keep-alives) never fill the buffers that :meth:`_relay` waits on."""
        limit = self.gateway.limits.slow_listener_seconds
        interval = min(limit, self.gateway.limits.sse_keepalive_seconds) / 2
        loop = asyncio.get_running_loop()
        acked, progressed = -1, loop.time()
        while True:
            await asyncio.sleep(interval)
            delivery = transport.delivery() if transport is not None else None
            if delivery is None:
                continue  # unknown here: the slow-reader cut alone applies
            pending, now_acked = delivery
            now = loop.time()
            if not pending or now_acked != acked:
                acked, progressed = now_acked, now
            elif now - progressed >= limit:
                log.info(
                    "cutting an event stream whose reader has acknowledged nothing for %.0fs",
                    now - progressed,
                )
                transport.abort()
                return


class ClientGone(Exception):
    """The client went away before its answer was ready."""


async def unless_gone(work: Awaitable[T], receive: Receive) -> T:
    """What ``work`` comes to; :class:`ClientGone`, ``work`` cancelled, if the client
    goes away first (a request waited for: a chat completion, a response not streamed)."""
    doing = asyncio.ensure_future(work)
    leaving = asyncio.ensure_future(disconnected(receive))
    try:
        await asyncio.wait({doing, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (doing, leaving):
            task.cancel()
    if not doing.done() or doing.cancelled():
        raise ClientGone
    return doing.result()


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
