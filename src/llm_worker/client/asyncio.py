"""The asyncio client: a :class:`~llm_worker.client.session.Session` over a WebSocket,
opened again with back-off when it drops. The session holds every rule of the
protocol; this module opens, sends, reads and wakes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from llm_worker.aio.tasks import TaskSet
from llm_worker.client.errors import ClientError, ConnectionLost, JobCancelled, JobFailed
from llm_worker.client.events import TERMINAL_TYPES, Cancelled, Event, Failed, Status, Terminal
from llm_worker.client.results import Result
from llm_worker.client.session import SUBPROTOCOLS, Change, Follow, Request, Session

log = logging.getLogger(__name__)

# Handshake refusals worth retrying: a timeout, too many requests or connections, a
# restart behind a proxy. Any other (401 bad key, 403 origin, 400 protocol) stays so.
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Far above any frame the service sends (merged text is at most 32 K characters), far
# below what would hurt: a frame this large is a bug, not an answer.
_MAX_FRAME_BYTES = 64 * 1024 * 1024
_CONNECT_ERRORS = (OSError, TimeoutError, EOFError, WebSocketException)


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


class _CannotConnect(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


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
    consumer is, once it has read half of them (see :mod:`llm_worker.client.session`).
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
        self._session = Session(max_buffered_events)
        self.url = websocket_url(url)
        self.max_buffered_events = self._session.max_buffered_events
        self.give_up_after = give_up_after
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.open_timeout = open_timeout
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._ws: ClientConnection | None = None
        self.protocol: str | None = None
        """The protocol the service speaks on the last connection (``llm-worker.v3``, or
        ``llm-worker.v2`` for an older service, which sends no typed events)."""
        # One batch of frames at a time, in order: an unlisten must not overtake the
        # listen it undoes.
        self._sends = asyncio.Lock()
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
        if self._session.failure is not None:
            raise self._session.failure  # closed, or given up: a new Client starts afresh
        try:
            ws = await self._open()
        except _CannotConnect as exc:
            raise ConnectionLost(exc.message) from None
        self._connected(ws)
        self._supervisor = asyncio.create_task(self._run(ws), name="llm-worker-client")

    async def close(self) -> None:
        """Close the connection. Jobs go on in the service; their iterations here end
        with :class:`ClientError`."""
        if self._session.failure is not None and self._supervisor is None:
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
        if self._session.failure is None:
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
        full queue, ...; its ``code`` says which); :class:`ConnectionLost` if the
        connection dropped before the answer: the job may or may not exist then,
        and is not sent again, which could run it twice.
        """
        await self._until_connected()
        request = self._session.add(query, assistant, history, variables)
        follow, listen_token = await self._answer(request)
        return Job(self, follow, listen_token)

    def job(self, job_id: str, after: int = 0) -> Job:
        """Follow a job by its id: its events after ``seq`` ``after``, then live.

        Iterating raises :class:`JobNotFound` if the service knows no such job.
        One client follows a job once: :class:`ClientError` if it follows this
        one already (use the :class:`Job` it has).
        """
        follow = self._session.follow(job_id, after)
        self._flush()
        return Job(self, follow)

    async def status(self, job_id: str) -> Status:
        """The job's state, queue position, text so far and error.

        :class:`JobNotFound` for a job the service does not know. Asked again
        after a reconnection: asking twice changes nothing.
        """
        await self._until_connected()
        answer = await self._answer(self._session.status(job_id))
        assert isinstance(answer, Status)
        return answer

    async def cancel(self, job_id: str) -> None:
        """Stop a queued or running job; returns once the service acknowledged it.

        :class:`RequestRefused` if the job already ended (or is unknown:
        :class:`JobNotFound`); :class:`ConnectionLost` if the connection dropped
        before the acknowledgement, when the job may or may not be cancelled.
        """
        await self._until_connected()
        await self._answer(self._session.cancel(job_id))

    async def _answer(self, request: Request) -> Any:
        """What the service answers ``request``, sent now."""
        request.waiter = asyncio.get_running_loop().create_future()
        self._flush()
        try:
            return await request.waiter
        finally:
            self._session.withdraw(request)

    async def _next(self, follow: Follow) -> Event | ClientError:
        """The next event (or the error that ends them) of a followed job, once there is one."""
        while (item := self._session.take(follow)) is None:
            follow.waker.clear()
            await follow.waker.wait()
        self._flush()  # taking it may have followed a paused job again
        return item

    async def _until_connected(self) -> None:
        """Return once there is a connection; raise the failure if there will be none."""
        while True:
            if self._session.failure is not None:
                raise self._session.failure
            if self._ws is not None:
                return
            await self._state_changed.wait()

    def _notify(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    def _apply(self, changes: list[Change]) -> None:
        """Wake whoever waits on what the session changed."""
        for change in changes:
            if isinstance(change, Request):
                waiter = change.waiter
                if waiter is None or waiter.done():
                    continue
                if change.error is not None:
                    waiter.set_exception(change.error)
                else:
                    waiter.set_result(change.result)
            elif change.waker is not None:
                change.waker.set()

    def _flush(self) -> None:
        """Send what the session has to send, in order, in the background."""
        frames = self._session.frames_to_send()
        if frames and self._ws is not None:
            self._background.spawn(self._send_quietly(self._ws, frames), name="send")

    async def _send_quietly(self, ws: ClientConnection, frames: list[str]) -> None:
        # A connection that drops meanwhile is the reader's to notice, and to replace.
        async with self._sends:
            with contextlib.suppress(ConnectionClosed):
                for frame in frames:
                    await ws.send(frame)

    # -- the connection -----------------------------------------------------

    async def _open(self) -> ClientConnection:
        try:
            ws = await connect(
                self.url,
                subprotocols=[Subprotocol(name) for name in SUBPROTOCOLS],
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
        if ws.subprotocol not in SUBPROTOCOLS:
            await ws.close()
            raise _CannotConnect(
                f"{self.url} speaks none of the protocols {', '.join(SUBPROTOCOLS)}", False
            )
        self.protocol = ws.subprotocol
        return ws

    def _connected(self, ws: ClientConnection) -> None:
        """A new connection: the session asks again for what it follows."""
        self._ws = ws
        self._session.connected()
        self._flush()
        self._notify()

    def _dropped(self) -> None:
        """The connection is gone: what must not be asked twice fails."""
        self._ws = None
        self._apply(self._session.dropped())
        self._notify()

    def _fail(self, error: ClientError) -> None:
        """No connection any more: everything waiting gets ``error``."""
        self._ws = None
        self._apply(self._session.fail(error))
        self._notify()

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
        """Hand frames to the session until the connection closes; whether any came."""
        healthy = False
        try:
            async for raw in ws:
                healthy = True
                self._apply(self._session.receive(raw))
                self._flush()
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


class Job:
    """A job the client follows: ``async for event in job`` yields its events up to its
    end (:class:`Done`, :class:`Failed` or :class:`Cancelled`), each once.

    ``id`` is the job's id; ``listen_token`` (with keys on) lets a connection
    without a key follow it; ``last_seq`` is the ``seq`` of the last event
    yielded, what to resume after (``client.job(id, after=job.last_seq)``).
    """

    def __init__(self, client: Client, follow: Follow, listen_token: str | None = None) -> None:
        self.id = follow.job_id
        self.listen_token = listen_token
        self.last_seq = follow.filter.last_seq
        self._client = client
        self._follow = follow
        follow.waker = asyncio.Event()
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
        item = await self._client._next(self._follow)
        if isinstance(item, ClientError):
            self._end = item
            raise item
        if isinstance(item, TERMINAL_TYPES):
            self._end = item
        seq = getattr(item, "seq", None)
        if seq is not None:
            self.last_seq = max(self.last_seq, seq)
        return item

    @property
    def ended(self) -> bool:
        """Whether the job's end (or an error) has been yielded."""
        return self._end is not None

    @property
    def message(self) -> dict[str, Any]:
        """The assistant message of the events yielded so far (text, reasoning, refusal,
        tool calls in progress; a :class:`Reset` voids them); once done, the finished
        one the service sent with :class:`Done` (``llm-worker.v3``), whole even if the
        job was followed from a later ``seq``. Append it to the history as it is."""
        return self._follow.assembly.message()

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls of :attr:`message` (``{"id", "type", "function": {"name",
        "arguments"}}``), their arguments as far as they came; ``[]`` when none."""
        return list(self.message.get("tool_calls") or [])

    async def text(self) -> str:
        """The job's answer once it is done (the last attempt's, after a :class:`Reset`).

        Reads the events not read yet. :class:`JobFailed` or :class:`JobCancelled`
        if the job did not finish.
        """
        await self._finish()
        return self._follow.assembly.text

    async def result(self) -> Result:
        """The finished job: its assistant message to append to the history, its tool
        calls, usage and finish reason. Reads the events not read yet;
        :class:`JobFailed` or :class:`JobCancelled` if the job did not finish."""
        await self._finish()
        return self._follow.assembly.result()

    async def _finish(self) -> None:
        async for _ in self:
            pass
        end = self._end
        if isinstance(end, Failed):
            raise JobFailed(end.message)
        if isinstance(end, Cancelled):
            raise JobCancelled(f"job {self.id} was cancelled")

    async def cancel(self) -> None:
        """Stop the job: see :meth:`Client.cancel`. Its events then end with
        :class:`Cancelled`."""
        await self._client.cancel(self.id)

    async def status(self) -> Status:
        """The job's state: see :meth:`Client.status`."""
        return await self._client.status(self.id)
