"""A Python client of the worker: submit jobs, follow them, and ride out dropped connections.

::

    from llm_worker.client import Client, TextDelta

    assistant = {"streams": [{"provider": "openai", "settings": {"model": "gpt-4o-mini"},
                              "messages": [{"role": "user", "content": "{query}"}]}]}

    async with Client("ws://127.0.0.1:8001/ws/", api_key="lw-...") as client:
        job = await client.submit("How tall is the Eiffel tower?", assistant)
        async for event in job:
            if isinstance(event, TextDelta):
                print(event.text, end="", flush=True)

    # In a script or a notebook, without async:
    with SyncClient("http://127.0.0.1:8001") as client:
        print(client.submit("Bonjour ?", assistant).text())

It speaks the full protocol (``llm-worker.v2``, README "Protocol") over one
WebSocket that carries every job of the client. When the connection drops, the
client reconnects on its own and resumes each job it follows with ``listen``
and ``after`` = the last ``seq`` it got, so a consumer sees every event once,
in order, whatever happened to the connection. What it cannot make safe it
reports instead: an ``add`` or a ``cancel`` in flight when the connection
drops raises :class:`ConnectionLost` (sending it again could run the job
twice), and a job that runs again after its worker died yields :class:`Reset`.

What it holds for a job is bounded, however fast the job and slow its
consumer: at most ``max_buffered_events`` events wait to be iterated. When a
job's buffer is full, the client stops following that job (``unlisten``; its
frames still in flight are dropped), and once its consumer has read half of
them, follows it again with ``listen`` and ``after`` = the last ``seq`` it
buffered. The consumer still sees every event once, in order; the other jobs
on the connection flow meanwhile, since the connection is always read.

The frames a job's events arrive in are decoded and filtered by pure code
(:func:`decode_event`, :class:`EventFilter`), testable without a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from llm_worker.aio.tasks import TaskSet
from llm_worker.wire.dialects import SUBPROTOCOL

log = logging.getLogger(__name__)

T = TypeVar("T")

UNKNOWN_JOB = "unknown job_id"
"""How the service's refusal of a job it does not know begins."""
# Handshake refusals worth retrying: a timeout, too many requests or connections, a
# restart behind a proxy. Any other (401 bad key, 403 origin, 400 protocol) stays so.
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Far above any frame the service sends (merged text is at most 32 K characters), far
# below what would hurt: a frame this large is a bug, not an answer.
_MAX_FRAME_BYTES = 64 * 1024 * 1024


# -- errors -------------------------------------------------------------------


class ClientError(Exception):
    """Base of what the client raises about the service, the connection or a job."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectionLost(ClientError):
    """No connection to the service.

    It could not be opened, or it dropped and did not come back within the
    client's ``give_up_after`` seconds; or it dropped while an ``add`` or a
    ``cancel`` awaited its answer, which may or may not have been carried out.
    """


class RequestRefused(ClientError):
    """The service refused a request (an ``error`` naming it); the message says why."""


class JobNotFound(RequestRefused):
    """The service knows no such job: it never existed, it expired, or it is another
    tenant's."""


class JobFailed(ClientError):
    """The job ended ``failed``; the message is the service's reason."""


class JobCancelled(ClientError):
    """The job was cancelled (by this client or another)."""


# -- events (pure) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """An attempt at the job started (the empty ``running`` frame)."""

    seq: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Text of the job's answer. One frame may carry several consecutive pieces, with
    the ``seq`` of the last (a listener that fell behind catches up in fewer frames)."""

    text: str
    seq: int


@dataclass(frozen=True, slots=True)
class Pending:
    """The job waits in the queue; ``position`` 1 is next."""

    position: int


@dataclass(frozen=True, slots=True)
class Reset:
    """The job runs again from the start (its worker died): its text so far is void.

    :meth:`Job.text` discards what it gathered; a consumer showing the text should too.
    """

    attempt: int
    seq: int


@dataclass(frozen=True, slots=True)
class Done:
    """The job finished. ``usage``: the tokens its model calls took (``prompt_tokens``,
    ``completion_tokens``, ``total_tokens``, and per stream in ``streams``), ``None``
    where the models did not say; ``finish_reason``: why the answer ended;
    ``providers``: the provider that answered each stream (a fallback, perhaps)."""

    seq: int
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    providers: list[str | None] | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The job failed; ``message`` says why."""

    message: str
    seq: int


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The job was cancelled. ``seq`` is ``None`` when the service acknowledged a
    ``cancel`` on a connection that did not follow the job."""

    seq: int | None


@dataclass(frozen=True, slots=True)
class Notice:
    """A message from the service about the job that is no text of its answer.

    With a ``seq``, an event of the job's log (``notice``): why its listeners wait
    (its local model is loading, say), replayed to late listeners like the rest.
    Without, news of the service that changes nothing of the job (the job store is
    unreachable, say): events resume when the problem is over.
    """

    message: str
    seq: int | None = None


Event = Started | TextDelta | Pending | Reset | Done | Failed | Cancelled | Notice
Terminal = Done | Failed | Cancelled
TERMINAL_TYPES = (Done, Failed, Cancelled)


@dataclass(frozen=True, slots=True)
class Status:
    """The service's answer to ``status``."""

    state: Literal["pending", "running", "done", "failed", "cancelled"]
    position: int | None
    """The place in the queue while pending, 1 being next."""
    output: str
    """The text of the current attempt so far."""
    error: str | None
    """Why the job failed, when it did."""
    usage: dict[str, Any] | None = None
    """When done: the tokens the job took (see :class:`Done`)."""
    finish_reason: str | None = None
    providers: list[str | None] | None = None


def decode_event(frame: Mapping[str, Any]) -> Event | None:
    """The event a server frame about a job carries; ``None`` for any other frame.

    Raises ``KeyError``/``TypeError``/``ValueError`` for a frame missing a field its
    type requires.
    """
    kind = frame.get("type")
    if kind == "running":
        text = frame["message"]
        if not isinstance(text, str):
            raise TypeError("'message' is not a string")
        return TextDelta(text, int(frame["seq"])) if text else Started(int(frame["seq"]))
    if kind == "pending":
        return Pending(int(frame["position"]))
    if kind == "notice":
        return Notice(str(frame.get("message", "")), int(frame["seq"]))
    if kind == "reset":
        return Reset(int(frame["attempt"]), int(frame["seq"]))
    if kind == "done":
        seq = int(frame["seq"])
        return Done(seq, frame.get("usage"), frame.get("finish_reason"), frame.get("providers"))
    if kind == "failed":
        return Failed(str(frame.get("message", "")), int(frame["seq"]))
    if kind == "cancelled":
        seq = frame.get("seq")
        return Cancelled(None if seq is None else int(seq))
    return None


class EventFilter:
    """Lets through each event of one job once, in order, across reconnections.

    After a reconnection the service replays the job after the last ``seq``
    the client got; anything at or before it (a duplicate) is dropped. The end
    is let through once even when its ``seq`` is not past it: a ``listen`` with
    ``after`` at or past a finished job's end replays the end. Events without a
    ``seq`` (queue positions, the service's notices) carry no order and always
    pass, until the end.
    """

    __slots__ = ("ended", "last_seq")

    def __init__(self, after: int = 0) -> None:
        self.last_seq = after
        self.ended = False

    def admit(self, event: Event) -> bool:
        if self.ended:
            return False
        terminal = isinstance(event, TERMINAL_TYPES)
        seq = getattr(event, "seq", None)
        if seq is not None:
            if seq <= self.last_seq and not terminal:
                return False
            self.last_seq = max(self.last_seq, seq)
        self.ended = terminal
        return True


def websocket_url(url: str) -> str:
    """The WebSocket URL of a service given as ``ws(s)://.../ws/`` or an ``http(s)`` base.

    ``http://host:8001`` and ``http://host:8001/prefix`` become
    ``ws://host:8001/ws/`` and ``ws://host:8001/prefix/ws/``; a ``ws`` URL without
    a path gets ``/ws/``; any other ``ws`` URL is kept as it is.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("ws", "wss"):
        path = parts.path if parts.path not in ("", "/") else "/ws/"
    elif scheme in ("http", "https"):
        scheme = "wss" if scheme == "https" else "ws"
        path = parts.path.rstrip("/") + "/ws/"
    else:
        raise ValueError(f"not a ws://, wss://, http:// or https:// URL: {url!r}")
    if not parts.netloc:
        raise ValueError(f"no host in {url!r}")
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


# -- the asyncio client -------------------------------------------------------


class _CannotConnect(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


_CONNECT_ERRORS = (OSError, TimeoutError, EOFError, WebSocketException)


class _Follow:
    """One job the client follows: its events' way from the reader to the consumer.

    ``paused`` while its consumer has too many events to read: the service is
    asked to stop sending the job (``unlisten``), and ``fence`` names the ``ping``
    whose ``pong`` tells that the last of its frames has come (``None`` once it
    has: the job can be followed again from ``filter.last_seq``).
    """

    __slots__ = ("fence", "filter", "job_id", "paused", "queue")

    def __init__(self, job_id: str, after: int) -> None:
        self.job_id = job_id
        self.filter = EventFilter(after)
        self.queue: asyncio.Queue[Event | ClientError] = asyncio.Queue()
        self.paused = False
        self.fence: str | None = None


@dataclass(slots=True)
class _Request:
    """A ``cancel`` or ``status`` awaiting its answer."""

    kind: Literal["cancel", "status"]
    frame: str
    answer: asyncio.Future[Any]


class Client:
    """A connection to the service carrying every job of this client.

    ``url`` is the WebSocket endpoint (``ws://host:8001/ws/``) or the service's
    HTTP base (``http://host:8001``); ``api_key`` goes as ``Authorization:
    Bearer``, and may be a job's listen token. Use it as ``async with
    Client(url) as client:``, or call :meth:`connect` and :meth:`close`.

    A dropped connection is opened again after ``first_backoff`` seconds, the
    wait doubling up to ``max_backoff``; after ``give_up_after`` seconds without
    one, every job's iteration raises :class:`ConnectionLost`. The first
    connection is not retried: a wrong URL or key fails at once.

    At most ``max_buffered_events`` events of a job wait for its consumer; a job
    whose consumer falls that far behind is followed again, from where its
    consumer is, once it has read half of them (see the module's documentation).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        give_up_after: float = 60.0,
        first_backoff: float = 0.05,
        max_backoff: float = 2.0,
        open_timeout: float = 10.0,
        max_buffered_events: int = 1000,
    ) -> None:
        if max_buffered_events < 2:
            raise ValueError("max_buffered_events must be at least 2")
        self.url = websocket_url(url)
        self.max_buffered_events = int(max_buffered_events)
        self.give_up_after = give_up_after
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.open_timeout = open_timeout
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._ws: ClientConnection | None = None
        self._follows: dict[str, _Follow] = {}
        self._adds: dict[str, asyncio.Future[tuple[_Follow, str | None]]] = {}
        self._requests: dict[str, deque[_Request]] = {}
        self._add_ids = itertools.count(1)
        self._fences: dict[str, _Follow] = {}
        self._fence_ids = itertools.count(1)
        # One batch of follow requests at a time, in order: an unlisten must not
        # overtake the listen it undoes.
        self._follow_sends = asyncio.Lock()
        self._failure: ClientError | None = None
        self._state_changed = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._background = TaskSet("client")

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """Whether the client has a connection now (it may be between two)."""
        return self._ws is not None

    async def connect(self) -> None:
        """Open the connection; :class:`ConnectionLost` saying why if it cannot be."""
        if self._supervisor is not None:
            raise ClientError("the client is connected already")
        if self._failure is not None:
            raise self._failure  # closed, or given up: a new Client starts afresh
        try:
            ws = await self._open()
        except _CannotConnect as exc:
            raise ConnectionLost(exc.message) from None
        self._connected(ws)
        self._supervisor = asyncio.create_task(self._run(ws), name="llm-worker-client")

    async def close(self) -> None:
        """Close the connection. Jobs go on in the service; their iterations here end
        with :class:`ClientError`."""
        if self._failure is not None and self._supervisor is None:
            return
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        await self._background.close()
        if self._failure is None:
            self._fail(ClientError("the client is closed"))

    # -- requests -----------------------------------------------------------

    async def submit(
        self,
        query: str,
        assistant: Mapping[str, Any],
        history: list[Mapping[str, Any]] | None = None,
        variables: Mapping[str, str | int | float | bool] | None = None,
    ) -> Job:
        """Queue a job and follow it; the :class:`Job` once the service took it.

        :class:`RequestRefused` with the service's reason (an invalid template, a
        full queue, ...); :class:`ConnectionLost` if the connection dropped before
        the answer: the job may or may not exist then, and is not sent again,
        which could run it twice.
        """
        request_id = f"add-{next(self._add_ids)}"
        body: dict[str, Any] = {
            "type": "add",
            "id": request_id,
            "query": query,
            "assistant": assistant,
        }
        if history is not None:
            body["history"] = history
        if variables is not None:
            body["variables"] = variables
        frame = orjson.dumps(body).decode()
        ws = await self._connection()
        answer: asyncio.Future[tuple[_Follow, str | None]] = (
            asyncio.get_running_loop().create_future()
        )
        # Registered before sending: the answer may come before send() returns.
        self._adds[request_id] = answer
        try:
            with contextlib.suppress(ConnectionClosed):  # the reader fails the answer
                await ws.send(frame)
            follow, listen_token = await answer
        finally:
            self._adds.pop(request_id, None)
        return Job(self, follow, listen_token)

    def job(self, job_id: str, after: int = 0) -> Job:
        """Follow a job by its id: its events after ``seq`` ``after``, then live.

        Iterating raises :class:`JobNotFound` if the service knows no such job.
        One client follows a job once: :class:`ClientError` if it follows this
        one already (use the :class:`Job` it has).
        """
        if self._failure is not None:
            raise self._failure
        if job_id in self._follows:
            raise ClientError(f"this client follows job {job_id} already")
        follow = _Follow(job_id, after)
        self._follows[job_id] = follow
        if self._ws is not None:  # else the next connection asks for it
            frame = _listen(job_id, after)
            self._background.spawn(self._send_quietly(self._ws, [frame]), name="listen")
        return Job(self, follow)

    async def status(self, job_id: str) -> Status:
        """The job's state, queue position, text so far and error.

        :class:`JobNotFound` for a job the service does not know. Asked again
        after a reconnection: asking twice changes nothing.
        """
        frame = orjson.dumps({"type": "status", "job_id": job_id}).decode()
        answer = await self._request(job_id, "status", frame)
        assert isinstance(answer, Status)
        return answer

    async def cancel(self, job_id: str) -> None:
        """Stop a queued or running job; returns once the service acknowledged it.

        :class:`RequestRefused` if the job already ended (or is unknown:
        :class:`JobNotFound`); :class:`ConnectionLost` if the connection dropped
        before the acknowledgement, when the job may or may not be cancelled.
        """
        frame = orjson.dumps({"type": "cancel", "job_id": job_id}).decode()
        await self._request(job_id, "cancel", frame)

    async def _request(self, job_id: str, kind: Literal["cancel", "status"], frame: str) -> Any:
        ws = await self._connection()
        request = _Request(kind, frame, asyncio.get_running_loop().create_future())
        waiting = self._requests.setdefault(job_id, deque())
        waiting.append(request)
        try:
            with contextlib.suppress(ConnectionClosed):  # the reader fails or resends it
                await ws.send(frame)
            return await request.answer
        finally:
            with contextlib.suppress(ValueError):
                waiting.remove(request)
            if not waiting and self._requests.get(job_id) is waiting:
                del self._requests[job_id]

    async def _connection(self) -> ClientConnection:
        """The current connection, once there is one; the failure if there will be none."""
        while True:
            if self._failure is not None:
                raise self._failure
            if self._ws is not None:
                return self._ws
            await self._state_changed.wait()

    def _notify(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    # -- the connection -----------------------------------------------------

    async def _open(self) -> ClientConnection:
        try:
            ws = await connect(
                self.url,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                additional_headers=self._headers,
                open_timeout=self.open_timeout,
                max_size=_MAX_FRAME_BYTES,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
            message = f"{self.url} refused the connection: HTTP {status}"
            raise _CannotConnect(
                f"{message}: {reason}" if reason else message, status in _RETRYABLE_STATUS
            ) from None
        except _CONNECT_ERRORS as exc:
            raise _CannotConnect(
                f"cannot connect to {self.url}: {exc or type(exc).__name__}", True
            ) from None
        if ws.subprotocol != SUBPROTOCOL:
            await ws.close()
            raise _CannotConnect(f"{self.url} does not speak the protocol {SUBPROTOCOL}", False)
        return ws

    def _connected(self, ws: ClientConnection) -> None:
        """A new connection: ask again for every job followed, after what it got."""
        self._ws = ws
        frames = []
        for job_id, follow in self._follows.items():
            # Nothing of a paused job comes on a new connection: no fence to wait for.
            follow.fence = None
            if follow.paused and self._caught_up(follow):
                follow.paused = False
            if not follow.paused:
                frames.append(_listen(job_id, follow.filter.last_seq))
        for waiting in self._requests.values():
            frames.extend(request.frame for request in waiting if request.kind == "status")
        if frames:
            self._background.spawn(self._send_quietly(ws, frames), name="resume")
        self._notify()

    async def _send_quietly(self, ws: ClientConnection, frames: list[str]) -> None:
        # A connection that drops meanwhile is the reader's to notice, and to replace.
        async with self._follow_sends:
            with contextlib.suppress(ConnectionClosed):
                for frame in frames:
                    await ws.send(frame)

    # -- a bounded buffer per job ---------------------------------------------

    def _caught_up(self, follow: _Follow) -> bool:
        return follow.queue.qsize() <= self.max_buffered_events // 2

    def _pause(self, follow: _Follow) -> None:
        """Stop following a job whose consumer has a full buffer."""
        follow.paused = True
        if self._ws is None:
            return  # the next connection will not ask for it
        fence = f"fence-{next(self._fence_ids)}"
        follow.fence = fence
        self._fences[fence] = follow
        unlisten = orjson.dumps({"type": "unlisten", "job_id": follow.job_id}).decode()
        ping = orjson.dumps({"type": "ping", "id": fence}).decode()
        self._background.spawn(self._send_quietly(self._ws, [unlisten, ping]), name="unlisten")

    def _fenced(self, frame: dict[str, Any]) -> None:
        """A ``pong``: if it answers a fence, the job it fences sends nothing more."""
        follow = self._fences.pop(str(frame.get("id")), None)
        if follow is not None and follow.fence == frame.get("id"):
            follow.fence = None
            self._resume(follow)

    def _resume(self, follow: _Follow) -> None:
        """Follow a paused job again, from its last buffered event, if its consumer
        has caught up and the last of its frames has come."""
        if not follow.paused or follow.fence is not None or not self._caught_up(follow):
            return
        if self._follows.get(follow.job_id) is not follow:
            return
        follow.paused = False
        if self._ws is not None:  # else the next connection asks for it
            frame = _listen(follow.job_id, follow.filter.last_seq)
            self._background.spawn(self._send_quietly(self._ws, [frame]), name="resume")

    async def _run(self, ws: ClientConnection) -> None:
        """Read the connection; when it drops, open another and resume, until the
        client closes or gives up."""
        delay = self.first_backoff
        try:
            while True:
                healthy = await self._read(ws)
                self._dropped()
                if healthy:
                    delay = self.first_backoff
                ws, delay = await self._reconnect(delay)
                self._connected(ws)
        except ConnectionLost as exc:
            log.warning("%s", exc.message)
            self._fail(exc)
        except Exception:
            log.exception("the client's connection task failed")
            self._fail(ConnectionLost("the client's connection task failed (a bug)"))

    async def _read(self, ws: ClientConnection) -> bool:
        """Dispatch frames until the connection closes; whether any frame came."""
        healthy = False
        try:
            async for raw in ws:
                healthy = True
                self._dispatch(raw)
        except ConnectionClosed:
            pass
        log.info(
            "connection to %s closed (code %s%s); reconnecting",
            self.url,
            ws.close_code,
            f": {ws.close_reason}" if ws.close_reason else "",
        )
        return healthy

    async def _reconnect(self, delay: float) -> tuple[ClientConnection, float]:
        """A new connection, after waits that double up to ``max_backoff``; and the
        next wait. :class:`ConnectionLost` after ``give_up_after`` seconds."""
        deadline = time.monotonic() + self.give_up_after
        while True:
            # Jittered, so that the clients of a restarted service do not come back at once.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.max_backoff)
            try:
                return await self._open(), delay
            except _CannotConnect as exc:
                if not exc.retryable:
                    raise ConnectionLost(exc.message) from None
                if time.monotonic() >= deadline:
                    raise ConnectionLost(
                        f"{exc.message} (gave up after {self.give_up_after:g}s)"
                    ) from None
                log.debug("%s; trying again", exc.message)

    def _dropped(self) -> None:
        """The connection is gone: what awaited an answer that must not be asked twice
        fails; the rest waits for the next connection."""
        self._ws = None
        self._notify()
        self._fences.clear()  # the old connection sends nothing more
        for follow in self._follows.values():
            follow.fence = None
        lost = ConnectionLost(
            "the connection dropped before the answer came: "
            "the request may or may not have been carried out"
        )
        for answer in self._adds.values():
            if not answer.done():
                answer.set_exception(lost)
        self._adds.clear()
        for waiting in self._requests.values():
            for request in [r for r in waiting if r.kind == "cancel"]:
                waiting.remove(request)
                if not request.answer.done():
                    request.answer.set_exception(lost)

    def _fail(self, error: ClientError) -> None:
        """No connection any more: everything waiting gets ``error``."""
        self._failure = error
        self._ws = None
        for follow in self._follows.values():
            follow.queue.put_nowait(error)
        self._follows.clear()
        answers = list(self._adds.values())
        answers += [r.answer for waiting in self._requests.values() for r in waiting]
        for answer in answers:
            if not answer.done():
                answer.set_exception(error)
        self._adds.clear()
        self._requests.clear()
        self._notify()

    # -- frames in ----------------------------------------------------------

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            frame = orjson.loads(raw)
            if not isinstance(frame, dict):
                raise TypeError("not an object")
            kind = frame.get("type")
            if kind == "resp_add":
                self._added(frame)
            elif kind == "error":
                self._refused(frame)
            elif kind == "status":
                self._status(frame)
            elif kind == "pong":
                self._fenced(frame)
            else:
                self._job_event(frame)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring a frame the client does not understand (%s): %.200r", exc, raw)

    def _added(self, frame: dict[str, Any]) -> None:
        answer = self._adds.pop(str(frame.get("id")), None)
        if answer is None or answer.done():
            return  # its submit() was cancelled: the job runs, unfollowed here
        job_id = frame["job_id"]
        # Followed from now on: the job's first events may be in the next frame.
        follow = _Follow(job_id, 0)
        self._follows[job_id] = follow
        answer.set_result((follow, frame.get("listen_token")))

    def _refused(self, frame: dict[str, Any]) -> None:
        ref = frame.get("ref")
        message = str(frame.get("message", ""))
        error = JobNotFound(message) if message.startswith(UNKNOWN_JOB) else RequestRefused(message)
        if isinstance(ref, str) and (answer := self._adds.pop(ref, None)) is not None:
            if not answer.done():
                answer.set_exception(error)
            return
        # Requests are answered in order: a refusal is the oldest waiting request's.
        waiting = self._requests.get(ref) if isinstance(ref, str) else None
        if waiting:
            request = waiting.popleft()
            if not request.answer.done():
                request.answer.set_exception(error)
            return
        follow = self._follows.get(ref) if isinstance(ref, str) else None
        if follow is None:
            log.warning("the service refused a request: %s", message)
        elif isinstance(error, JobNotFound):
            del self._follows[follow.job_id]
            follow.queue.put_nowait(error)
        elif not follow.paused:
            follow.queue.put_nowait(Notice(message))

    def _status(self, frame: dict[str, Any]) -> None:
        waiting = self._requests.get(frame["job_id"])
        request = next((r for r in waiting or () if r.kind == "status"), None)
        if waiting is None or request is None:
            return
        waiting.remove(request)
        if not request.answer.done():
            request.answer.set_result(
                Status(
                    state=frame["state"],
                    position=frame.get("position"),
                    output=frame.get("output", ""),
                    error=frame.get("error"),
                    usage=frame.get("usage"),
                    finish_reason=frame.get("finish_reason"),
                    providers=frame.get("providers"),
                )
            )

    def _job_event(self, frame: dict[str, Any]) -> None:
        job_id = frame.get("job_id")
        if not isinstance(job_id, str):
            return
        waiting = self._requests.get(job_id)
        if waiting and frame.get("type") == "cancelled":
            # The acknowledgement of a cancel: bare, or the followed job's own event.
            for request in [r for r in waiting if r.kind == "cancel"]:
                waiting.remove(request)
                if not request.answer.done():
                    request.answer.set_result(None)
        follow = self._follows.get(job_id)
        if follow is None or follow.paused:
            return  # a paused job's frames in flight: asked for again on resuming
        event = decode_event(frame)
        if event is not None and follow.filter.admit(event):
            follow.queue.put_nowait(event)
            if follow.filter.ended:
                del self._follows[job_id]
            elif follow.queue.qsize() >= self.max_buffered_events:
                self._pause(follow)


def _listen(job_id: str, after: int) -> str:
    return orjson.dumps({"type": "listen", "job_id": job_id, "after": after}).decode()


class Job:
    """A job the client follows: ``async for event in job`` yields its events up to its
    end (:class:`Done`, :class:`Failed` or :class:`Cancelled`), each once.

    ``id`` is the job's id; ``listen_token`` (with keys on) lets a connection
    without a key follow it; ``last_seq`` is the ``seq`` of the last event
    yielded, what to resume after (``client.job(id, after=job.last_seq)``).
    """

    def __init__(self, client: Client, follow: _Follow, listen_token: str | None = None) -> None:
        self.id = follow.job_id
        self.listen_token = listen_token
        self.last_seq = follow.filter.last_seq
        self._client = client
        self._follow = follow
        self._queue = follow.queue
        self._text: list[str] = []
        self._end: Terminal | ClientError | None = None

    def __repr__(self) -> str:
        return f"<Job {self.id} last_seq={self.last_seq}>"

    def __aiter__(self) -> Job:
        return self

    async def __anext__(self) -> Event:
        end = self._end
        if isinstance(end, ClientError):
            raise end
        if end is not None:
            raise StopAsyncIteration
        item = await self._queue.get()
        if self._follow.paused:
            self._client._resume(self._follow)
        if isinstance(item, ClientError):
            self._end = item
            raise item
        if isinstance(item, TextDelta):
            self._text.append(item.text)
        elif isinstance(item, Reset):
            self._text.clear()
        elif isinstance(item, TERMINAL_TYPES):
            self._end = item
        seq = getattr(item, "seq", None)
        if seq is not None:
            self.last_seq = max(self.last_seq, seq)
        return item

    @property
    def ended(self) -> bool:
        """Whether the job's end (or an error) has been yielded."""
        return self._end is not None

    async def text(self) -> str:
        """The job's answer once it is done (the last attempt's, after a :class:`Reset`).

        Reads the events not read yet. :class:`JobFailed` or :class:`JobCancelled`
        if the job did not finish.
        """
        async for _ in self:
            pass
        end = self._end
        if isinstance(end, Failed):
            raise JobFailed(end.message)
        if isinstance(end, Cancelled):
            raise JobCancelled(f"job {self.id} was cancelled")
        return "".join(self._text)

    async def cancel(self) -> None:
        """Stop the job: see :meth:`Client.cancel`. Its events then end with
        :class:`Cancelled`."""
        await self._client.cancel(self.id)

    async def status(self) -> Status:
        """The job's state: see :meth:`Client.status`."""
        return await self._client.status(self.id)


# -- the blocking client ------------------------------------------------------


class SyncClient:
    """A :class:`Client` for code without an event loop of its own (scripts), or whose
    loop must not block (notebooks): the client runs on a loop in a thread of its own.

    ``with SyncClient(url) as client: print(client.submit(query, assistant).text())``.
    Options as for :class:`Client`.
    """

    def __init__(self, url: str, api_key: str | None = None, **options: float) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="llm-worker-client", daemon=True
        )
        self._thread.start()
        try:
            self._client = self._call(_connected_client(url, api_key, options))
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coroutine.close()
            raise ClientError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted (Ctrl-C): stop what it was doing
            raise

    def submit(
        self,
        query: str,
        assistant: Mapping[str, Any],
        history: list[Mapping[str, Any]] | None = None,
        variables: Mapping[str, str | int | float | bool] | None = None,
    ) -> SyncJob:
        """Queue a job and follow it: see :meth:`Client.submit`."""
        job = self._call(self._client.submit(query, assistant, history, variables))
        return SyncJob(self, job)

    def job(self, job_id: str, after: int = 0) -> SyncJob:
        """Follow a job by its id: see :meth:`Client.job`."""
        return SyncJob(self, self._call(_follow(self._client, job_id, after)))

    def status(self, job_id: str) -> Status:
        """See :meth:`Client.status`."""
        return self._call(self._client.status(job_id))

    def cancel(self, job_id: str) -> None:
        """See :meth:`Client.cancel`."""
        self._call(self._client.cancel(job_id))

    def close(self) -> None:
        """Close the connection and stop the client's thread."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _connected_client(url: str, api_key: str | None, options: dict[str, float]) -> Client:
    client = Client(url, api_key, **options)
    await client.connect()
    return client


async def _follow(client: Client, job_id: str, after: int) -> Job:
    return client.job(job_id, after)


async def _next_event(job: Job) -> Event | None:
    try:
        return await job.__anext__()
    except StopAsyncIteration:
        return None


class SyncJob:
    """A :class:`Job` for blocking code: ``for event in job``, ``job.text()``, ..."""

    def __init__(self, client: SyncClient, job: Job) -> None:
        self._client = client
        self._job = job

    def __repr__(self) -> str:
        return f"<SyncJob {self.id} last_seq={self.last_seq}>"

    @property
    def id(self) -> str:
        return self._job.id

    @property
    def listen_token(self) -> str | None:
        return self._job.listen_token

    @property
    def last_seq(self) -> int:
        return self._job.last_seq

    @property
    def ended(self) -> bool:
        return self._job.ended

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        event = self._client._call(_next_event(self._job))
        if event is None:
            raise StopIteration
        return event

    def text(self) -> str:
        """See :meth:`Job.text`."""
        return self._client._call(self._job.text())

    def cancel(self) -> None:
        """See :meth:`Job.cancel`."""
        self._client._call(self._job.cancel())

    def status(self) -> Status:
        """See :meth:`Job.status`."""
        return self._client._call(self._job.status())
