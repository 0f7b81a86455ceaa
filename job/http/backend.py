"""httpcore's network streams on asyncio's own transports, for the clients that carry a model's bytes.

httpx on asyncio reaches the socket through anyio: each read and each write of httpcore enters a cancel
scope and a ``fail_after`` timer, and anyio pauses and resumes the socket's reading around every read (an
``epoll_ctl`` each time). For a stream of 1 MiB reads that is most of the Python each byte costs outside
hashing and inflating (README, Performance, has the profile). :class:`AsyncioBackend` implements
httpcore's network backend directly on ``loop.create_connection``: a read returns what the protocol holds
(the bytes object the socket returned, not a copy), waiting with one timer only when nothing is there;
a write hands the buffer to the transport and waits only when the transport asks to (its high-water mark).

Reading stops while :data:`BUFFER_LIMIT` bytes wait unread, so memory stays bounded by connections, not by
how slowly the consumer reads. Timeouts and errors are httpcore's own (``ReadTimeout``, ``WriteError``...)
so httpx maps them as it does for anyio's streams. :func:`on_asyncio` puts a client's direct connections on
this backend; a proxy's transport, made from the environment, keeps httpx's own (it may need TLS inside TLS,
which asyncio's transports do not all support).
"""

# ruff: noqa: ASYNC109 - httpcore's stream and backend interface passes each timeout as an argument
from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import Any

import httpcore
import httpx

from job.tuning import READ_SIZE

__all__ = ["BUFFER_LIMIT", "HAPPY_EYEBALLS_DELAY", "AsyncioBackend", "AsyncioStream", "on_asyncio"]

BUFFER_LIMIT = READ_SIZE
"""Unread bytes a connection holds before it stops reading from its socket."""
HAPPY_EYEBALLS_DELAY = 0.25
"""Seconds before the next address of a host is tried in parallel (anyio's default, which httpx used)."""

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class _Protocol(asyncio.Protocol):
    """Received bytes queued as they came; what a reader or writer waits for."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.paused_reading = False
        self.paused_writing = False
        self.waiter: asyncio.Future[bool] | None = None
        """What a read or a write waits on: True when something happened, False when its timeout ran out."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= BUFFER_LIMIT and not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport: HTTP/1.1 never half-closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        self._wake()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def take(self, max_bytes: int) -> bytes:
        data = self.chunks.popleft()
        if len(data) > max_bytes:
            self.chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        self.buffered -= len(data)
        if self.paused_reading and self.buffered < BUFFER_LIMIT and self.transport is not None:
            self.paused_reading = False
            self.transport.resume_reading()
        return data


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection: httpcore's reads and writes on an asyncio transport."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        # read now: asyncio's TLS transport forgets them once closed
        self._extra = {ours: transport.get_extra_info(theirs) for ours, theirs in _EXTRA_INFO.items()}

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        while not protocol.chunks:
            if protocol.eof:
                if protocol.error is not None:
                    raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
                return b""
            if not await self._wait(timeout):
                raise httpcore.ReadTimeout("timed out reading from the server")
        return protocol.take(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.error is not None or self._transport.is_closing():
            raise httpcore.WriteError(str(protocol.error or "the connection is closed"))
        self._transport.write(buffer)
        while protocol.paused_writing:
            if protocol.error is not None or self._transport.is_closing():
                raise httpcore.WriteError(str(protocol.error or "the connection is closed"))
            if not await self._wait(timeout):
                raise httpcore.WriteTimeout("timed out writing to the server")

    async def _wait(self, timeout: float | None) -> bool:
        """Until the protocol's next event (data, EOF, a lost connection, writing resumed); False on timeout."""
        loop = self._protocol.loop
        waiter: asyncio.Future[bool] = loop.create_future()
        self._protocol.waiter = waiter
        if timeout is None:
            return await waiter
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    async def aclose(self) -> None:
        # abort, as anyio's stream did: a body still queued after a cancelled upload is dropped, not sent on
        self._transport.abort()
        await asyncio.sleep(0)

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        loop = self._protocol.loop
        try:
            transport = await loop.start_tls(
                self._transport,
                self._protocol,
                ssl_context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            )
        except TimeoutError as exc:
            self._transport.abort()
            raise httpcore.ConnectTimeout(f"TLS handshake: {exc or 'timed out'}") from exc
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.abort()
            raise httpcore.ConnectError(str(exc)) from exc
        if transport is None:  # pragma: no cover - the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle connection with something to read was closed by the server
            return self._protocol.eof or bool(self._protocol.chunks)
        return self._extra.get(info)


_EXTRA_INFO = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername", "socket": "socket"}
"""httpcore's names for a stream's facts, and asyncio's."""


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio's transports (the module docstring says why)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(
            lambda: _Protocol(loop),
            host,
            port,
            local_addr=(local_address, 0) if local_address else None,
            happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
        )
        return await _connected(connecting, f"{host}:{port}", timeout, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[SocketOption] | None = None
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        connecting = loop.create_unix_connection(lambda: _Protocol(loop), path)
        return await _connected(connecting, path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected(
    connecting: Coroutine[Any, Any, tuple[asyncio.Transport, _Protocol]],
    where: str,
    timeout: float | None,
    options: Iterable[SocketOption] | None,
) -> AsyncioStream:
    """The stream of a connection being made, its errors httpcore's, ``options`` set on its socket."""
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await connecting
    except TimeoutError as exc:
        raise httpcore.ConnectTimeout(f"connecting to {where} timed out") from exc
    except OSError as exc:
        raise httpcore.ConnectError(str(exc)) from exc
    sock: socket.socket | None = transport.get_extra_info("socket")
    for option in options or ():
        if sock is not None:
            sock.setsockopt(*option)
    return AsyncioStream(transport, protocol)


def on_asyncio(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """``client``, its direct connections made by :class:`AsyncioBackend`; returned for chaining.

    httpx has no parameter for the backend, and a ``transport=`` argument would turn off the proxies it reads
    from the environment. So the client is built as usual and its default transport's connection pool, which
    keeps the backend in ``_network_backend`` and hands it to each new connection, gets this one
    (``tests/unit/test_http_backend.py`` checks that this still holds). A transport a test passed in, and
    the proxies' transports, are left as they are.
    """
    transport = client._transport
    if type(transport) is httpx.AsyncHTTPTransport and isinstance(transport._pool, httpcore.AsyncConnectionPool):
        transport._pool._network_backend = AsyncioBackend()
    return client
