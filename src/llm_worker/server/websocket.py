"""One client's WebSocket connection: its requests in, its replies and jobs' events out.

A connection reads requests one at a time and answers each; every job it
follows gets a task that copies the job's log from the store to the socket, in
the connection's dialect (:mod:`llm_worker.wire.dialects`). A job never depends on a
connection: closing one stops its followers, never its jobs.

What one connection may cost is bounded: it follows at most
``MAX_FOLLOWED_JOBS`` jobs; what it was sent and has not read stays below the
transport's high-water mark plus a frame (a frame of text is at most
:data:`~llm_worker.wire.events.MAX_FRAME_TEXT`), and a connection that leaves it
unread for ``SLOW_LISTENER_SECONDS`` is closed with code 1013, to come back and
resume with ``listen`` and ``after``; its queue positions cost O(1) per queue
move, however many of its jobs wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from llm_worker.aio.tasks import TaskSet
from llm_worker.jobs.model import JobState
from llm_worker.ops.logs import set_job
from llm_worker.server.access import Principal
from llm_worker.server.follower import Follower
from llm_worker.server.gateway import Gateway, credential, unauthorized
from llm_worker.server.idempotent import idempotent_add
from llm_worker.server.refusals import Refused, error_response, store_refusal
from llm_worker.server.serving import TRANSPORT_EXTENSION, Transport
from llm_worker.store import StoreError, UnknownJob
from llm_worker.wire import errors, protocol
from llm_worker.wire.dialects import Dialect, negotiate, refusal
from llm_worker.wire.protocol import (
    AddRequest,
    CancelRequest,
    ListenRequest,
    PingRequest,
    ProtocolError,
    StatusRequest,
    UnlistenRequest,
)

log = logging.getLogger(__name__)

# Several queue moves in this window make one ``pending`` update per listener.
PENDING_COALESCE_SECONDS = 0.05
# A connection's waiting jobs whose moves up it is told of (the oldest it follows):
# a queue move costs this many lookups per connection at most.
PENDING_WINDOW = 8
SLOW_CLOSE_CODE = 1013
# What sending to, or receiving from, a connection that went away raises.
GONE = (WebSocketDisconnect, WebSocketDisconnected, OSError)


class TooSlow(OSError):
    """The peer left what it was sent unread for too long; the connection is closing."""


class Connection:
    def __init__(
        self, gateway: Gateway, websocket: WebSocket, dialect: Dialect, principal: Principal
    ) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.websocket = websocket
        self.dialect = dialect
        self.principal = principal
        self.followers: dict[str, asyncio.Task[None]] = {}
        self._transport: Transport | None = websocket.scope.get("extensions", {}).get(
            TRANSPORT_EXTENSION
        )
        self._waiting: dict[str, int] = {}
        """Followed jobs still queued, oldest first, and the position last sent for each."""
        self._unannounced: dict[str, None] = {}
        """Followed jobs whose place has yet to be told (if they do wait)."""
        self._queue_news = asyncio.Event()
        self._background = TaskSet("connection")
        self._positions: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                await self.handle_frame(message.get("text"), message.get("bytes"))
        except GONE:
            return
        finally:
            for task in self.followers.values():
                task.cancel()
            self.followers.clear()
            await self._background.close()

    # -- sending ------------------------------------------------------------

    async def send(self, frame: str) -> None:
        # uvicorn's sans-I/O websockets protocol writes a whole frame per call,
        # so frames from concurrent followers never interleave mid-frame.
        transport = self._transport
        if transport is None or not transport.blocked():
            await self.websocket.send_text(frame)
            return
        # The peer reads slower than it is sent to: wait for room, not for ever.
        limit = self.gateway.limits.slow_listener_seconds
        try:
            await asyncio.wait_for(self.websocket.send_text(frame), limit)
        except TimeoutError:
            unsent = transport.unsent()
            log.info("closing a connection that left %d bytes unread for %.0fs", unsent, limit)
            transport.close_now(
                SLOW_CLOSE_CODE,
                f"too slow: {unsent // 1024} KiB unread for {limit:.0f}s; "
                "reconnect and resume with listen and after",
            )
            raise TooSlow("the connection was too slow") from None

    async def refuse(self, request_type: str | None, ref: Any, message: str, code: str) -> None:
        """Answer a request that cannot be honoured, as this connection's dialect says;
        ``code`` says why to a full-protocol client (:mod:`llm_worker.wire.errors`)."""
        for frame in refusal(self.dialect, request_type, ref, message, code):
            await self.send(frame)

    def announce(self, message: str, jobs: Collection[str] | None, code: str) -> None:
        """An ``error`` with ``code`` about each job this connection follows (of ``jobs``,
        if given), sent in the background (to full-protocol connections: the seed's
        clients know no such message)."""
        if self.dialect is Dialect.SEED or not self.followers:
            return
        about = [job_id for job_id in self.followers if jobs is None or job_id in jobs]
        frames = [protocol.error(message, job_id, code) for job_id in about]
        self._background.spawn(self._send_quietly(frames), name="outage-notice")

    async def _send_quietly(self, frames: list[str]) -> None:
        with contextlib.suppress(*GONE):
            for frame in frames:
                await self.send(frame)

    # -- requests -----------------------------------------------------------

    async def handle_frame(self, text: str | None, data: bytes | None) -> None:
        limit = self.gateway.limits.max_message_bytes
        if text is None:
            size = len(data or b"")
            if size > limit:
                await self.refuse(None, None, self._too_large(size), errors.PAYLOAD_TOO_LARGE)
            else:
                binary = "binary frames are not accepted: send JSON as text"
                await self.refuse(None, None, binary, errors.BAD_REQUEST)
            return
        # A character takes at most 4 bytes in UTF-8: encode only when it could matter.
        if len(text) * 4 > limit:
            size = len(text.encode())
            if size > limit:
                # Read only for what it refers to, so that the refusal reaches its request.
                await self.refuse(
                    *protocol.peek_request(text), self._too_large(size), errors.PAYLOAD_TOO_LARGE
                )
                return
        try:
            request = protocol.parse_request(text)
        except ProtocolError as exc:
            await self.refuse(exc.request_type, exc.ref, exc.message, exc.code)
            return
        try:
            if isinstance(request, AddRequest):
                await self.add(request)
            elif isinstance(request, ListenRequest):
                await self.listen(request)
            elif isinstance(request, UnlistenRequest):
                self.unlisten(request.job_id)
            elif isinstance(request, CancelRequest):
                await self.cancel(request)
            elif isinstance(request, StatusRequest):
                await self.status(request)
            elif isinstance(request, PingRequest):
                await self.send(protocol.pong(request.id))
        except StoreError as exc:
            code, _ = store_refusal(exc)
            await self.refuse(request.type, _ref(request), self._told(exc), code)
        except GONE:
            raise
        except Exception:
            # A bug of ours must cost this one request, not the connection.
            log.exception("request %s failed", request.type)
            await self.refuse(
                request.type,
                _ref(request),
                f"internal error while handling {request.type!r}",
                errors.INTERNAL_ERROR,
            )

    def _told(self, exc: StoreError) -> str:
        """What the client is told of ``exc``: a seed client, what it always was (an
        expired job is unknown to it, as it was before tombstones)."""
        if self.dialect is Dialect.SEED and isinstance(exc, UnknownJob):
            return str(UnknownJob(exc.job_id))
        return str(exc)

    def _too_large(self, size: int) -> str:
        return (
            f"message too large: {size} bytes, the limit is "
            f"{self.gateway.limits.max_message_bytes} (MAX_MESSAGE_BYTES)"
        )

    async def add(self, request: AddRequest) -> None:
        if (refused := self._cannot_follow_more()) is not None:
            await self.refuse("add", request.id, refused, errors.TOO_MANY_FOLLOWED_JOBS)
            return
        try:
            webhook = request.webhook if self.dialect is not Dialect.SEED else None
            once = None
            if self.dialect is not Dialect.SEED:
                once = idempotent_add(request.idempotency_key, "idempotency_key")
            seed = self.dialect is Dialect.SEED  # a seed client's stray fields change nothing
            record, token = await self.gateway.add_job(
                self.principal,
                request.to_spec(),
                webhook,
                once=once,
                run_at=None if seed else request.run_at,
                delay=None if seed else request.delay,
            )
        except Refused as exc:
            await self.refuse("add", request.id, exc.message, exc.code)
            return
        await self.send(protocol.resp_add(request.id, record.id, token))
        await self.follow(record.id, after=0)

    async def listen(self, request: ListenRequest) -> None:
        await self.gateway.visible(self.principal, request.job_id)
        if request.job_id in self.followers:
            if request.after is None:
                return  # already following: a second listen must not duplicate events
            self.followers.pop(request.job_id).cancel()
        elif (refused := self._cannot_follow_more()) is not None:
            await self.refuse("listen", request.job_id, refused, errors.TOO_MANY_FOLLOWED_JOBS)
            return
        await self.follow(request.job_id, after=request.after or 0)

    def unlisten(self, job_id: str) -> None:
        # Its follower stops before the next request is read, so the answer to that
        # request (a ping) comes after the last of the job's frames.
        task = self.followers.pop(job_id, None)
        if task is not None:
            task.cancel()
        self._waiting.pop(job_id, None)
        self._unannounced.pop(job_id, None)

    def _cannot_follow_more(self) -> str | None:
        limit = self.gateway.limits.max_followed_jobs
        if len(self.followers) < limit:
            return None
        return (
            f"this connection follows {limit} jobs, its limit (MAX_FOLLOWED_JOBS): "
            "follow some on another connection, or once some have ended"
        )

    async def cancel(self, request: CancelRequest) -> None:
        # Asked before cancelling: a follower ends as soon as it relays `cancelled`.
        following = request.job_id in self.followers
        try:
            record = await self.gateway.cancel_job(self.principal, request.job_id)
        except Refused as exc:
            await self.refuse("cancel", request.job_id, exc.message, exc.code)
            return
        if record.state is not JobState.CANCELLED:
            await self.refuse(
                "cancel",
                record.id,
                f"job {record.id} already ended ({record.state.value}); nothing to cancel",
                errors.JOB_ENDED,
            )
        elif not following or self.dialect is Dialect.SEED:
            # A seed-dialect follower relays the cancel as `failed`: acknowledge it apart.
            await self.send(protocol.cancelled(record.id))

    async def status(self, request: StatusRequest) -> None:
        status = await self.gateway.status_of(
            self.principal, request.job_id, self.dialect.typed, self.dialect is not Dialect.SEED
        )
        await self.send(status)

    # -- following jobs -----------------------------------------------------

    async def follow(self, job_id: str, after: int) -> None:
        task = asyncio.create_task(self._follow(job_id, after), name=f"follow-{job_id}")
        self.followers[job_id] = task
        task.add_done_callback(lambda t: self._forget(job_id, t))
        if self.dialect is not Dialect.SEED and job_id not in self._waiting:
            # Its place is told shortly, if it waits still: a job that starts at once
            # is not said to wait.
            self._unannounced[job_id] = None
            self._queue_news.set()
            if self._positions is None or self._positions.done():
                self._positions = self._background.spawn(
                    self._announce_positions(), name="positions"
                )

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self.followers.get(job_id) is task:
            del self.followers[job_id]
            self._waiting.pop(job_id, None)
            self._unannounced.pop(job_id, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, GONE):
            log.error("following job %s failed", job_id, exc_info=exc)

    async def _follow(self, job_id: str, after: int) -> None:
        set_job(job_id, self.principal.tenant)  # this task's log lines are about the job
        follower = Follower(self.store, self.gateway.metrics, job_id, self.dialect, after)
        try:
            async for frames in follower.frames():
                # Started (or ended): its place in the queue is of no more interest.
                self._waiting.pop(job_id, None)
                self._unannounced.pop(job_id, None)
                for frame in frames:
                    await self.send(frame.text)
        except UnknownJob as exc:
            code, _ = store_refusal(exc)
            await self.refuse("listen", job_id, self._told(exc), code)

    async def _announce_positions(self) -> None:
        """Send ``pending`` for each job that waits, then whenever one moves up: for the
        oldest few this connection follows, so that a queue move costs it O(1),
        however many of its jobs wait."""
        while self._waiting or self._unannounced:
            if not self._unannounced:
                moved = asyncio.ensure_future(self.store.queue_moved())
                news = asyncio.ensure_future(self._queue_news.wait())
                try:
                    await asyncio.wait({moved, news}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    moved.cancel()
                    news.cancel()
            await asyncio.sleep(PENDING_COALESCE_SECONDS)
            self._queue_news.clear()
            for job_id in list(self._unannounced):
                position = await self.store.position(job_id)
                if job_id not in self._unannounced:
                    continue  # it started meanwhile, or is followed no more
                del self._unannounced[job_id]
                if position is not None:
                    self._waiting[job_id] = position
                    await self.send(protocol.pending(job_id, position))
            for job_id in list(itertools.islice(self._waiting, PENDING_WINDOW)):
                position = await self.store.position(job_id)
                if job_id not in self._waiting:
                    continue  # it started meanwhile: its follower said so
                if position is None:
                    del self._waiting[job_id]
                elif position != self._waiting[job_id]:
                    self._waiting[job_id] = position
                    await self.send(protocol.pending(job_id, position))


def _ref(request: protocol.Request) -> str | int | None:
    """What an ``error`` about ``request`` refers to: its ``id``, else its ``job_id``."""
    request_id = getattr(request, "id", None)
    return request_id if request_id is not None else getattr(request, "job_id", None)


def websocket_endpoint(gateway: Gateway) -> Callable[[WebSocket], Awaitable[None]]:
    """The endpoint of ``/ws/``: a new WebSocket is checked before it is accepted (its
    dialect, its key or listen token, whether the process is stopping), then served
    by a :class:`Connection` until it closes."""

    async def endpoint(websocket: WebSocket) -> None:
        try:
            dialect, subprotocol = negotiate(
                websocket.scope.get("subprotocols", ()), websocket.query_params.get("protocol")
            )
        except ProtocolError as exc:
            await websocket.send_denial_response(
                error_response(errors.UNKNOWN_PROTOCOL, exc.message)
            )
            return
        principal = gateway.access.authenticate(credential(websocket))
        if principal is None:
            await websocket.send_denial_response(unauthorized())
            return
        if gateway.draining:
            await websocket.send_denial_response(
                error_response(errors.SHUTTING_DOWN, "the worker is shutting down")
            )
            return
        await websocket.accept(subprotocol)
        connection = Connection(gateway, websocket, dialect, principal)
        gateway.connections.add(connection)
        try:
            await connection.serve()
        finally:
            gateway.connections.discard(connection)

    return endpoint
