"""A loopback TCP proxy that fails on command: between a client and a worker, it cuts
every connection through it at once (a network failure, as both ends see it), holds
what the worker sends, drops new connections (a worker away), and can be pointed at
another port (a restarted worker)."""

from __future__ import annotations

import asyncio
import contextlib
import socket


class CuttingProxy:
    """``async with CuttingProxy(target_port) as proxy:`` forwards ``proxy.url`` to
    ``127.0.0.1:target_port``; set ``target_port`` to retarget new connections."""

    def __init__(self, target_port: int, worker_receive_buffer: int | None = None) -> None:
        self.target_port = target_port
        self.worker_receive_buffer = worker_receive_buffer
        """SO_RCVBUF of its sockets to the worker; unset: the system's (autotuned, large)."""
        self.port = 0
        self.accepted = 0
        """Connections accepted so far, forwarded or not."""
        self.dropped = 0
        """Connections dropped on arrival: while blocked, or with nobody at ``target_port``."""
        self.blocked = False
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._accepted_more = asyncio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self._flowing.set()
        self.cut()
        await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def cut(self) -> int:
        """Abort every connection through the proxy, both sides; how many there were."""
        links = list(self._links)
        for client_side, worker_side in links:
            client_side.transport.abort()
            worker_side.transport.abort()
        self._links.clear()
        return len(links)

    def block(self) -> None:
        """Drop each new connection on arrival (the connections open stay)."""
        self.blocked = True

    def unblock(self) -> None:
        self.blocked = False

    def hold(self) -> None:
        """Stop passing on what the worker sends (the client hears nothing more)."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def black_hole(self) -> None:
        """Stop forwarding and reading, both ways, closing neither side: as a path
        that went dark looks to the worker, once the buffers between are full."""
        self._flowing.clear()
        for client_side, worker_side in self._links:
            client_side.transport.pause_reading()
            worker_side.transport.pause_reading()

    async def accepted_at_least(self, count: int, timeout: float = 30) -> None:
        """Wait until the proxy has accepted ``count`` connections in all."""
        async with asyncio.timeout(timeout):
            while self.accepted < count:
                await self._accepted_more.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._accepted_more.set()
        self._accepted_more = asyncio.Event()
        try:
            worker_reader, worker_writer = await self._connect()
        except OSError:
            self.dropped += 1
            writer.transport.abort()  # as a refused connection looks through a proxy
            return
        link = (writer, worker_writer)
        self._links.add(link)
        try:
            pipes = {
                asyncio.ensure_future(self._pipe(reader, worker_writer, hold=False)),
                asyncio.ensure_future(self._pipe(worker_reader, writer, hold=True)),
            }
            _, unfinished = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for pipe in unfinished:
                pipe.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        finally:
            self._links.discard(link)
            writer.transport.abort()
            worker_writer.transport.abort()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.blocked:
            raise ConnectionRefusedError("the proxy is blocked")
        if self.worker_receive_buffer is None:
            return await asyncio.open_connection("127.0.0.1", self.target_port)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.worker_receive_buffer)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.target_port))
        except OSError:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if hold:
                    await self._flowing.wait()
                writer.write(data)
                await writer.drain()
