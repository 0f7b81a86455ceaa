"""job.http.backend: httpx's connections on asyncio's transports, against real sockets on 127.0.0.1.

What httpx and httpcore did on anyio's streams, they do here: bodies arrive whole and in order, a stalled
server is a read or write timeout, a refused or dropped connection is httpx's own error, a connection the
server closed while idle is not reused, an unread body stops the socket's reading, TLS works. What the
helper relies on inside httpx and httpcore is checked too, so an upgrade that moves it fails here.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpcore
import httpx
import pytest

from job.http.backend import BUFFER_LIMIT, AsyncioBackend, on_asyncio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serve(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def client(**kwargs: object) -> httpx.AsyncClient:
    return on_asyncio(httpx.AsyncClient(**kwargs))  # type: ignore[arg-type]


def test_the_default_transport_gets_the_backend_and_proxies_and_test_transports_keep_theirs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    c = client()
    assert isinstance(c._transport._pool._network_backend, AsyncioBackend)  # type: ignore[attr-defined]
    proxies = [t for t in c._mounts.values() if t is not None]
    assert proxies, "the environment's proxy is still mounted"
    assert not any(isinstance(getattr(t._pool, "_network_backend", None), AsyncioBackend) for t in proxies)  # type: ignore[attr-defined]
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    assert client(transport=mock)._transport is mock


def test_httpcore_hands_the_pools_backend_to_each_connection() -> None:
    source = inspect.getsource(httpcore.AsyncConnectionPool.create_connection)
    assert "network_backend=self._network_backend" in source
    assert "self._pool = httpcore.AsyncConnectionPool(" in inspect.getsource(httpx.AsyncHTTPTransport.__init__)


async def test_a_body_arrives_whole_and_the_connection_is_reused() -> None:
    body = bytes(range(256)) * 40_000  # 10 MB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
        writer.close()

    async with serve(handler) as port, client() as c:
        for _ in range(2):
            response = await c.get(f"http://127.0.0.1:{port}/")
            assert response.content == body
        stream = response.extensions["network_stream"]
        assert stream.get_extra_info("server_addr")[1] == port
        assert stream.get_extra_info("ssl_object") is None


async def test_a_server_that_closed_an_idle_connection_gets_a_new_one() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # keep-alive was offered; the server closes anyway

    async with serve(handler) as port, client() as c:
        assert (await c.get(f"http://127.0.0.1:{port}/")).text == "ok"
        await asyncio.sleep(0.1)
        assert (await c.get(f"http://127.0.0.1:{port}/")).text == "ok"
    assert connections == 2


async def test_a_stalled_server_is_a_read_timeout_and_a_short_body_an_error() -> None:
    released = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await released.wait()
        writer.close()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    async with serve(stall) as port, client(timeout=0.3) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get(f"http://127.0.0.1:{port}/")
        released.set()
    async with serve(cut) as port, client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get(f"http://127.0.0.1:{port}/")


async def test_a_server_that_does_not_read_is_a_write_timeout() -> None:
    done = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()
        writer.close()

    async with serve(deaf) as port:
        try:
            async with client(timeout=httpx.Timeout(30, write=0.5)) as c:
                with pytest.raises(httpx.WriteTimeout):
                    await c.post(f"http://127.0.0.1:{port}/", content=bytes(64 * 1024 * 1024))
        finally:
            done.set()  # before the server closes: it may wait for its handlers


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with serve(lambda r, w: asyncio.sleep(0)) as port:
        pass  # the port is free again
    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(f"http://127.0.0.1:{port}/")


async def test_an_unread_body_stops_the_socket_being_read() -> None:
    """64 MiB sent at once, none of it read for a while: the client holds about BUFFER_LIMIT, the rest waits in
    the server's send buffer."""
    size = 64 * 1024 * 1024
    backlog: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + bytes(size))
        await asyncio.sleep(0.5)
        backlog.append(writer.transport.get_write_buffer_size())
        await writer.drain()
        writer.close()

    async with serve(handler) as port, client() as c, c.stream("GET", f"http://127.0.0.1:{port}/") as response:
        await asyncio.sleep(0.8)
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
    assert received == size
    assert backlog[0] > size - 8 * BUFFER_LIMIT - 16 * 1024 * 1024  # kernel buffers aside, the client held ~1 MiB


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_is_negotiated_on_the_connection(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
        await writer.drain()
        writer.close()

    async with serve(handler, server_context) as port:
        async with client(verify=ssl.create_default_context(cafile=str(cert))) as c:
            response = await c.get(f"https://127.0.0.1:{port}/")
            assert response.text == "secret"
            assert response.extensions["network_stream"].get_extra_info("ssl_object") is not None
        async with client() as c:  # the system's CAs do not know this certificate
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await c.get(f"https://127.0.0.1:{port}/")


async def test_closing_a_connection_drops_what_it_still_had_to_send() -> None:
    """A cancelled upload's connection is closed by httpcore: the rest of its queued body is not sent on."""
    received = 0
    done = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await asyncio.sleep(0.5)  # the client's buffers fill, then it gives up
        while chunk := await reader.read(1024 * 1024):
            received += len(chunk)
        done.set()
        writer.close()

    size = 128 * 1024 * 1024
    async with serve(slow) as port:
        async with client() as c:
            upload = asyncio.create_task(c.post(f"http://127.0.0.1:{port}/", content=bytes(size)))
            await asyncio.sleep(0.2)
            upload.cancel()
            with pytest.raises(asyncio.CancelledError):
                await upload
        await asyncio.wait_for(done.wait(), 10)
    assert received < size // 2
