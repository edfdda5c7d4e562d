"""The gateway: the WebSocket endpoint clients talk to, and the HTTP endpoints.

Each connection reads requests one at a time and answers each; every job the
connection follows gets a task that copies the job's log from the store to the
socket, in the connection's dialect (:mod:`llm_worker.dialects`). A job never
depends on a connection: closing one stops its followers, never its jobs.

When the process stops, the gateway takes no new connections or jobs, and keeps
the open connections while jobs they follow are running (:meth:`Gateway.drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from llm_worker import protocol
from llm_worker.dialects import Dialect, Relay, negotiate, refusal
from llm_worker.jobs import JobState, output_of
from llm_worker.protocol import (
    AddRequest,
    CancelRequest,
    ListenRequest,
    PingRequest,
    ProtocolError,
    StatusRequest,
)
from llm_worker.runner import Runner
from llm_worker.store import JobStore, StoreError, UnknownJob
from llm_worker.tasks import TaskSet
from llm_worker.templates import TemplateError

log = logging.getLogger(__name__)

# Several queue moves in this window make one ``pending`` update per listener.
PENDING_COALESCE_SECONDS = 0.05
# What sending to, or receiving from, a connection that went away raises.
_GONE = (WebSocketDisconnect, WebSocketDisconnected, OSError)
SHUTTING_DOWN = "the worker is shutting down and takes no new jobs; try again shortly"


class Gateway:
    """What every connection shares: the store, the template checker, the limits."""

    def __init__(self, store: JobStore, runner: Runner, *, max_message_bytes: int) -> None:
        self.store = store
        self.runner = runner
        self.max_message_bytes = max_message_bytes
        self.connections: set[Connection] = set()
        self.draining = False
        """Set when the process stops: no new connections or jobs."""
        self._health_watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._health_watch = asyncio.create_task(self._watch_store(), name="store-health")

    async def stop(self) -> None:
        if self._health_watch is not None:
            self._health_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_watch

    async def _watch_store(self) -> None:
        """Tell listeners when the store has been away longer than its grace period."""
        while True:
            message = await self.store.outage()
            for connection in list(self.connections):
                connection.announce(message)
            await self.store.recovered()

    async def drain(self, until: float) -> None:
        """Take no new connections or jobs; return once no connection follows a job
        that is running or whose end it has yet to relay, or at ``until`` (loop time).
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        while (remaining := until - loop.time()) > 0:
            try:
                followers = await self._followers_of_started_jobs()
            except StoreError:
                return  # nothing more to relay while the store is away
            if not followers:
                return
            # Jobs a connection waits on may start elsewhere meanwhile: look again soon.
            await asyncio.wait(followers, timeout=min(remaining, 0.5))

    async def _followers_of_started_jobs(self) -> list[asyncio.Task[None]]:
        followers = []
        for connection in list(self.connections):
            for job_id, task in list(connection.followers.items()):
                if task.done():
                    continue
                record = await self.store.get(job_id)
                if record is not None and record.state is not JobState.PENDING:
                    followers.append(task)
        return followers

    async def websocket_endpoint(self, websocket: WebSocket) -> None:
        try:
            dialect, subprotocol = negotiate(
                websocket.scope.get("subprotocols", ()), websocket.query_params.get("protocol")
            )
        except ProtocolError as exc:
            await websocket.send_denial_response(PlainTextResponse(exc.message, status_code=400))
            return
        if self.draining:
            await websocket.send_denial_response(
                PlainTextResponse("the worker is shutting down", status_code=503)
            )
            return
        await websocket.accept(subprotocol)
        connection = Connection(self, websocket, dialect)
        self.connections.add(connection)
        try:
            await connection.serve()
        finally:
            self.connections.discard(connection)

    async def healthz(self, request: HTTPRequest) -> JSONResponse:
        if self.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        try:
            stats = await self.store.stats()
        except Exception as exc:
            # Up, but not serving: a load balancer should send clients elsewhere.
            if not isinstance(exc, StoreError):
                log.warning("the job store could not answer /healthz: %r", exc)
            return JSONResponse({"status": "store unavailable", "error": str(exc)}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "queued": stats.pending,
                "running": stats.running,
                "connections": len(self.connections),
            }
        )


class Connection:
    """One client's WebSocket: its requests in, its replies and jobs' events out."""

    def __init__(self, gateway: Gateway, websocket: WebSocket, dialect: Dialect) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.websocket = websocket
        self.dialect = dialect
        self.followers: dict[str, asyncio.Task[None]] = {}
        self._notices = TaskSet("connection")

    async def serve(self) -> None:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                await self.handle_frame(message.get("text"), message.get("bytes"))
        except _GONE:
            return
        finally:
            for task in self.followers.values():
                task.cancel()
            self.followers.clear()
            await self._notices.close()

    def announce(self, message: str) -> None:
        """An ``error`` about each job this connection follows, sent in the background
        (to full-protocol connections: the seed's clients know no such message)."""
        if self.dialect is not Dialect.FULL or not self.followers:
            return
        frames = [protocol.error(message, job_id) for job_id in self.followers]
        self._notices.spawn(self._send_quietly(frames), name="outage-notice")

    async def _send_quietly(self, frames: list[str]) -> None:
        with contextlib.suppress(*_GONE):
            for frame in frames:
                await self.send(frame)

    async def send(self, frame: str) -> None:
        # uvicorn's sans-I/O websockets protocol writes a whole frame per call,
        # so frames from concurrent followers never interleave mid-frame.
        await self.websocket.send_text(frame)

    async def refuse(self, request_type: str | None, ref: Any, message: str) -> None:
        """Answer a request that cannot be honoured, as this connection's dialect says."""
        for frame in refusal(self.dialect, request_type, ref, message):
            await self.send(frame)

    async def handle_frame(self, text: str | None, data: bytes | None) -> None:
        if text is None:
            size = len(data or b"")
            if size > self.gateway.max_message_bytes:
                await self.refuse(None, None, self._too_large(size))
            else:
                await self.refuse(None, None, "binary frames are not accepted: send JSON as text")
            return
        # A character takes at most 4 bytes in UTF-8: encode only when it could matter.
        if len(text) * 4 > self.gateway.max_message_bytes:
            size = len(text.encode())
            if size > self.gateway.max_message_bytes:
                # Read only for what it refers to, so that the refusal reaches its request.
                await self.refuse(*protocol.peek_request(text), self._too_large(size))
                return
        try:
            request = protocol.parse_request(text)
        except ProtocolError as exc:
            await self.refuse(exc.request_type, exc.ref, exc.message)
            return
        try:
            if isinstance(request, AddRequest):
                await self.add(request)
            elif isinstance(request, ListenRequest):
                await self.listen(request)
            elif isinstance(request, CancelRequest):
                await self.cancel(request)
            elif isinstance(request, StatusRequest):
                await self.status(request)
            elif isinstance(request, PingRequest):
                await self.send(protocol.pong(request.id))
        except StoreError as exc:
            await self.refuse(request.type, _ref(request), str(exc))
        except _GONE:
            raise
        except Exception:
            # A bug of ours must cost this one request, not the connection.
            log.exception("request %s failed", request.type)
            await self.refuse(
                request.type, _ref(request), f"internal error while handling {request.type!r}"
            )

    def _too_large(self, size: int) -> str:
        return (
            f"message too large: {size} bytes, the limit is "
            f"{self.gateway.max_message_bytes} (MAX_MESSAGE_BYTES)"
        )

    # -- requests -----------------------------------------------------------

    async def add(self, request: AddRequest) -> None:
        if self.gateway.draining:
            await self.refuse("add", request.id, SHUTTING_DOWN)
            return
        spec = request.to_spec()
        try:
            self.gateway.runner.check(spec)
        except TemplateError as exc:
            await self.refuse("add", request.id, f"invalid assistant template: {exc}")
            return
        record = await self.store.submit(spec)
        log.debug("job %s added", record.id)
        await self.send(protocol.resp_add(request.id, record.id))
        self.follow(record.id, after=0)

    async def listen(self, request: ListenRequest) -> None:
        if await self.store.get(request.job_id) is None:
            raise UnknownJob(f"unknown job_id {request.job_id!r}")
        if request.job_id in self.followers:
            if request.after is None:
                return  # already following: a second listen must not duplicate events
            self.followers.pop(request.job_id).cancel()
        self.follow(request.job_id, after=request.after or 0)

    async def cancel(self, request: CancelRequest) -> None:
        # Asked before cancelling: a follower ends as soon as it relays `cancelled`.
        following = request.job_id in self.followers
        record = await self.store.cancel(request.job_id)
        if record.state is not JobState.CANCELLED:
            await self.send(
                protocol.error(
                    f"job {record.id} already ended ({record.state.value}); nothing to cancel",
                    record.id,
                )
            )
        elif not following or self.dialect is Dialect.SEED:
            # A seed-dialect follower relays the cancel as `failed`: acknowledge it apart.
            await self.send(protocol.cancelled(record.id))

    async def status(self, request: StatusRequest) -> None:
        record = await self.store.get(request.job_id)
        if record is None:
            raise UnknownJob(f"unknown job_id {request.job_id!r}")
        position = await self.store.position(record.id)
        output = output_of(await self.store.read(record.id))
        await self.send(protocol.status(record, position, output))

    # -- following jobs -----------------------------------------------------

    def follow(self, job_id: str, after: int) -> None:
        task = asyncio.create_task(self._follow(job_id, after), name=f"follow-{job_id}")
        self.followers[job_id] = task
        task.add_done_callback(lambda t: self._forget(job_id, t))

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self.followers.get(job_id) is task:
            del self.followers[job_id]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, _GONE):
            log.error("following job %s failed", job_id, exc_info=exc)

    async def _follow(self, job_id: str, after: int) -> None:
        relay = Relay(job_id, self.dialect, after)
        positions: asyncio.Task[None] | None = None
        if self.dialect is Dialect.FULL and await self.store.position(job_id) is not None:
            positions = asyncio.create_task(self._announce_positions(job_id))
        try:
            async for batch in self.store.follow(job_id, after):
                if positions is not None:
                    positions.cancel()
                    positions = None
                for frame in relay.frames(batch):
                    await self.send(frame)
                if relay.finished:
                    return
        except UnknownJob:
            await self.refuse("listen", job_id, f"unknown job_id {job_id!r}")
        finally:
            if positions is not None:
                positions.cancel()

    async def _announce_positions(self, job_id: str) -> None:
        """Send ``pending`` now and whenever the job moves up, until it leaves the queue."""
        store = self.store
        last: int | None = None
        while True:
            position = await store.position(job_id)
            if position is None:
                return
            if position != last:
                await self.send(protocol.pending(job_id, position))
                last = position
            await store.queue_moved()
            await asyncio.sleep(PENDING_COALESCE_SECONDS)


def _ref(request: protocol.Request) -> str | int | None:
    """What an ``error`` about ``request`` refers to: its ``id``, else its ``job_id``."""
    request_id = getattr(request, "id", None)
    return request_id if request_id is not None else getattr(request, "job_id", None)
