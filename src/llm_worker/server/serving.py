"""uvicorn, as this service runs it: its server, and its HTTP and WebSocket protocols
with the limits no application code can set.

* At most ``MAX_CONNECTIONS`` connections are open at once: one more is answered
  503 and closed, before it costs more than a moment's file descriptor.
* A connection has ``HANDSHAKE_TIMEOUT_SECONDS`` to send a request's headers (a
  WebSocket upgrade's included): half-open sockets are closed, not kept.
* A request's body has ``BODY_TIMEOUT_SECONDS``, plus a second for every
  ``BODY_MIN_BYTES_PER_SECOND`` bytes it delivers, to arrive (a minimum rate past a
  grace): a body that trickles or stops is answered 408 and its connection closed.
  A request answered before its body ended (a 401, a 413) is read no further:
  its connection is shut for writing and closed, after at most
  ``LINGER_SECONDS`` in which what the client still sends is dropped, so that a
  client still sending reads its answer rather than a reset.
* A WebSocket connection offers the application its transport (ASGI extension
  ``llm-worker.transport``): how much it has yet to send, and a way to close it
  with a reason even while the peer reads nothing; an HTTP request, whether the
  peer reads what it is sent, whether its writes are stalled (bytes pending that
  the peer's TCP has not acknowledged for a while: a black-holed path, which the
  kernel's buffers hide from the first test) and a way to hang up (for event
  streams).
* On a stop, new connections are refused at once, but the open ones are closed
  only once :meth:`~llm_worker.server.app.Service.drain` is over.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import resource
import signal
import socket
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from llm_worker.config import ConfigError, Settings
from llm_worker.wire import errors

if TYPE_CHECKING:
    from starlette.applications import Starlette

log = logging.getLogger(__name__)

TRANSPORT_EXTENSION = "llm-worker.transport"
# After writing a close frame to a peer that reads nothing, how long before hanging up.
CLOSE_GRACE_SECONDS = 5.0
# File descriptors kept for everything but client connections (files, the store, models).
RESERVED_FILES = 256


# How long an answered request's connection drops what its client still sends.
LINGER_SECONDS = 2.0
# Where struct tcp_info holds tcpi_bytes_acked (Linux 4.1 and later).
_TCP_INFO_BYTES_ACKED = 120


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    handshake_timeout: float
    body_timeout: float = 10.0
    body_min_rate: int = 16384


class Transport:
    """What a WebSocket connection's application may ask of its transport."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    def unsent(self) -> int:
        """Bytes written and not yet taken by the peer."""
        transport = self._protocol.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def blocked(self) -> bool:
        """Whether a send would wait for the peer to read first."""
        return not self._protocol.writable.is_set()

    def close_now(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason``, behind what is unsent, without waiting
        for room to write; hang up if the peer has not answered shortly after."""
        protocol = self._protocol
        if protocol.close_sent or protocol.transport is None or protocol.transport.is_closing():
            return
        protocol.conn.send_close(code, reason)
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        protocol.close_sent = True
        protocol.close_timer = protocol.loop.call_later(
            CLOSE_GRACE_SECONDS, protocol.transport.abort
        )


class HttpTransport:
    """What an HTTP response streaming for long (Server-Sent Events) may ask of its
    transport: whether the peer reads, and a way to hang up on one that does not."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: HttpToolsProtocol) -> None:
        self._protocol = protocol

    def blocked(self) -> bool:
        """Whether a send would wait for the peer to read first."""
        return bool(self._protocol.flow.write_paused)

    def delivery(self) -> tuple[int, int] | None:
        """(bytes pending, bytes the peer's TCP has acknowledged so far), or ``None``
        where the system does not tell (not Linux, not TCP). Bytes pending that stay
        unacknowledged mean a peer that reads nothing, or a path that drops what
        is sent: either way, the peer hears nothing more."""
        transport = self._protocol.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or transport.is_closing():
            return None
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            unsent = bytearray(4)
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, unsent)
        except (OSError, AttributeError):
            return None
        if len(info) < _TCP_INFO_BYTES_ACKED + 8:
            return None
        pending = transport.get_write_buffer_size() + struct.unpack("i", unsent)[0]
        return pending, struct.unpack_from("Q", info, _TCP_INFO_BYTES_ACKED)[0]

    def abort(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.abort()


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, offering :class:`Transport` to the app.

    A text message that is not UTF-8 closes the connection 1007, as uvicorn does,
    but logs one INFO line instead of an ERROR with a traceback: a client's bad
    input is not a fault of ours.
    """

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][TRANSPORT_EXTENSION] = Transport(self)

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError as exc:
                self.frames = []
                log.info("closing a WebSocket that sent a text message not UTF-8 (1007): %s", exc)
                self.conn.send_close(1007, "a text message must be UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under :attr:`limits`: the connection cap, the header
    deadline, the body's deadline and minimum rate, and no reading on once answered."""

    limits: ConnectionLimits
    _deadline: asyncio.TimerHandle | None = None
    _body_deadline: asyncio.TimerHandle | None = None
    _body_started = 0.0
    _body_bytes = 0
    _lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.server_state.connections) >= self.limits.max_connections:
            transport.write(
                _refusal(
                    errors.TOO_MANY_CONNECTIONS,
                    "too many connections (MAX_CONNECTIONS); try again shortly",
                    retry_after=1,
                )
            )
            transport.close()
            return
        super().connection_made(transport)
        self._start_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_deadline()

    def on_headers_complete(self) -> None:
        self._stop_deadline()
        self._body_started, self._body_bytes = self.loop.time(), 0
        super().on_headers_complete()
        scope = getattr(self, "scope", None)
        if scope is not None and scope.get("type") == "http":
            scope.setdefault("extensions", {})[TRANSPORT_EXTENSION] = HttpTransport(self)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._stop_body_deadline()
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self._lingering:
            return  # refused in connection_made, or answered: dropped
        super().data_received(data)
        if self._body_deadline is None and self._body_unfinished():
            self._body_deadline = self.loop.call_at(
                self._body_started + self.limits.body_timeout, self._check_body
            )

    def on_response_complete(self) -> None:
        if not self._body_unfinished(answered=True) or self.transport.is_closing():
            super().on_response_complete()
            return
        # Answered before its body ended: read no more of it.
        self._stop_body_deadline()
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        self._stop_body_deadline()
        if self.transport is not None:
            super().connection_lost(exc)

    def _body_unfinished(self, answered: bool = False) -> bool:
        """Whether the current request's body has yet to end (and, unless
        ``answered``, the request has yet to be answered)."""
        cycle = self.cycle
        return (
            cycle is not None
            and cycle.more_body
            and not cycle.disconnected
            and (answered or not cycle.response_complete)
        )

    def _check_body(self) -> None:
        self._body_deadline = None
        if not self._body_unfinished() or self.transport.is_closing():
            return
        now = self.loop.time()
        # Past the grace, each byte delivered buys 1/rate seconds: the body's
        # average rate may not fall below the minimum.
        allowed = self._body_started + self.limits.body_timeout
        allowed += self._body_bytes / self.limits.body_min_rate
        if self.flow.read_paused:  # the app has yet to take what came: not the peer's fault
            allowed = max(allowed, now + self.limits.body_timeout)
        if now < allowed:
            self._body_deadline = self.loop.call_at(allowed, self._check_body)
            return
        log.info(
            "closing a connection whose request body came too slowly: %d bytes in %.1fs",
            self._body_bytes,
            now - self._body_started,
        )
        cycle = self.cycle
        if not cycle.response_started:
            self.transport.write(
                _refusal(errors.REQUEST_TIMEOUT, "the request's body took too long to arrive")
            )
        # The app reading the body hears that the client is gone, and answers no one.
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.close()

    def _stop_body_deadline(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _start_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.handshake_timeout, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.write(
                _refusal(errors.REQUEST_TIMEOUT, "the request took too long to arrive")
            )
            self.transport.close()


def http_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, under ``limits``."""
    return type("HttpProtocol", (HttpProtocol,), {"limits": limits})


def _refusal(code: str, message: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP response refusing a connection below the app, in the API's error shape."""
    status = errors.CODES[code]
    body = errors.error_body(code, message)
    retry = f"retry-after: {retry_after}\r\n" if retry_after is not None else ""
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"{retry}content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def allow_connections(wanted: int) -> int:
    """Raise this process's file limit as far as allowed; the connections it leaves room for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + RESERVED_FILES)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    room = max(soft - RESERVED_FILES, 1)
    if wanted > room:
        log.warning(
            "MAX_CONNECTIONS=%d but the process may open %d files: taking %d connections at most",
            wanted,
            soft,
            room,
        )
        return room
    return wanted


def event_loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class Service(Protocol):
    """What the server stops gracefully: the parts a process runs (``app.Service``)."""

    settings: Settings

    async def drain(self) -> None:
        """Take no new jobs; let running ones finish and reach their listeners."""


class Server(uvicorn.Server):
    """uvicorn's server, serving the app as this service needs.

    ``on_ready`` is called once the listening socket accepts connections, so a
    line saying so never comes early. On a stop, new connections are refused at
    once, but the open ones are closed only once :meth:`Service.drain` is over:
    a listener gets the end of every job that was running.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        service: Service,
        on_ready: Callable[[uvicorn.Server], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.service = service
        self.on_ready = on_ready

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:  # a second SIGTERM or SIGINT: no more waiting
            stop_at_once(sig)
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready(self)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        log.info(
            "stopping: taking no new connections or jobs; waiting up to %.0fs for running jobs "
            "(a second SIGTERM or Ctrl-C stops at once)",
            self.service.settings.shutdown_grace_seconds,
        )
        draining = asyncio.create_task(self.service.drain())
        while not draining.done() and not self.force_exit:
            await asyncio.wait({draining}, timeout=0.1)
        draining.cancel()
        try:
            await draining
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("draining failed; closing connections now")
        await super().shutdown(sockets)


def stop_at_once(signum: int) -> None:
    """End the process now, by ``signum`` as if it were not handled: a second SIGTERM
    or SIGINT during a stop, for whoever will not wait for the drain."""
    log.warning("stopping at once: %s during the stop", signal.Signals(signum).name)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # not reached: the signal's default action ends the process


def make_server(app: Starlette, on_ready: Callable[[uvicorn.Server], None] | None = None) -> Server:
    """The server of an app made by :func:`~llm_worker.server.app.create_app`: the same for the
    command and the tests."""
    settings: Settings = app.state.settings
    return Server(server_config(app, settings), app.state.service, on_ready)


def server_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    """How uvicorn serves the app."""
    limits = ConnectionLimits(
        max_connections=allow_connections(settings.max_connections),
        handshake_timeout=settings.handshake_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        body_min_rate=settings.body_min_bytes_per_second,
    )
    return uvicorn.Config(
        app,
        host=settings.listen_address,
        port=settings.listen_port,
        loop=event_loop_name(),
        http=http_protocol(limits),
        # Writes each frame in one call, which the gateway relies on (see Connection.send).
        ws=WebSocketProtocol,
        ws_max_size=settings.ws_max_frame_bytes,
        # Token frames are tiny; compressing them costs CPU and ~100 KiB per connection.
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=None,
        backlog=2048,
        # Running jobs had their grace before connections are closed (Server.shutdown).
        timeout_graceful_shutdown=5,
    )


def check_can_listen(host: str, port: int, *, host_setting: str, port_setting: str) -> None:
    """Raise :class:`~llm_worker.config.ConfigError`, naming the setting, if ``host``:
    ``port`` cannot be listened on: checked before anything else starts, so that an
    address in use stops the start-up before a database file or a connection exists.

    (A socket bound here and handed to the server would do too, but uvloop serves
    a duplicate of it, and the original would go on accepting after a stop.)
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(
            f"{host_setting} {host!r} is not an address of this machine: {exc}"
        ) from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{port_setting} {port} on {host} is in use by another process"
                ) from None
            raise ConfigError(
                f"cannot listen on {host_setting} {host!r}, {port_setting} {port}: "
                f"{exc.strerror or exc}"
            ) from None
