"""job.tuning: what it relies on in other libraries still exists and is used, and each setting has its effect.

A library upgrade that renames an attribute or drops a fallback would otherwise turn a setting into a silent
no-op, and the cost it removed would come back unnoticed. The start-up checks run in a fresh interpreter:
pytest's plugins may import httpx before ``job`` is.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import inspect
import json
import subprocess
import sys

import httpcore
import httpx
import pytest

from job import tuning

UNUSED_AT_START = ("rich", "click", "pygments", "cryptography", "OpenSSL", "model_signing", "boto3", "s3transfer")
"""Packages installed in the image that no transfer loads before its first byte (signing loads its own)."""


def test_every_route_starts_without_the_packages_it_never_uses() -> None:
    code = (
        "import json, sys\n"
        "import job.__main__, job.backends, job.pipeline\n"
        "import job.sources.s3, job.sources.oci, job.sources.uri, job.sources.pvc\n"
        "import job.destinations.s3, job.destinations.oci, job.destinations.pvc\n"
        "import job.s3.client, botocore.httpsession, httpx\n"
        "job.s3.client._session()\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules if sys.modules[m] is not None})))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert not set(UNUSED_AT_START) & set(loaded)
    assert {"httpx", "botocore", "aiobotocore"} <= set(loaded)


def test_the_libraries_fall_back_to_what_they_do_without_the_blocked_modules() -> None:
    import botocore.httpsession  # type: ignore[import-untyped]

    code = "import httpx, botocore.httpsession, ssl; print(botocore.httpsession.SSLContext is ssl.SSLContext)"
    out = subprocess.run(
        [sys.executable, "-c", "import job\n" + code.replace("; ", "\n")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert callable(httpx.main)
    assert botocore.httpsession.create_urllib3_context is not None


def test_read_sizes_are_set_where_the_libraries_read_them() -> None:
    tuning.apply()
    transport = asyncio.selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    assert transport.max_size == tuning.READ_SIZE
    assert "self.max_size" in inspect.getsource(transport._read_ready__data_received)
    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == tuning.READ_SIZE
    assert "self.READ_NUM_BYTES" in inspect.getsource(httpcore.AsyncHTTP11Connection._receive_event)


async def test_an_http_body_arrives_in_reads_larger_than_the_libraries_defaults() -> None:
    """8 MiB served at once and read after a pause: httpx passes on reads of more than 256 KiB."""
    body = bytes(8 * 1024 * 1024)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sizes: list[int] = []
    try:
        async with httpx.AsyncClient() as client, client.stream("GET", f"http://127.0.0.1:{port}/") as response:
            await asyncio.sleep(0.2)  # the socket fills
            async for chunk in response.aiter_raw():
                sizes.append(len(chunk))
                await asyncio.sleep(0.005)
    finally:
        server.close()
        await server.wait_closed()
    assert sum(sizes) == len(body)
    assert max(sizes) > 256 * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_chunks_reuse_the_heap_instead_of_faulting_pages_in() -> None:
    """1,000 chunks of 1 MiB allocated and freed in turn: a few hundred page faults, not one per page."""
    code = (
        "import job, resource\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for i in range(1000):\n"
        "    a = bytes(1024 * 1024 + i); b = bytearray(a); del a, b\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert faults < 2_000  # 1,000 x 2 x 256 pages when each chunk is freshly mapped


# --- h11's receive buffer ---------------------------------------------------------------------------------------

RESPONSES = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: 1\r\n\r\n0123456789"
    b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\nX-Folded: a\r\n b\r\n\r\n"
    b"4\r\nwxyz\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
    b"HTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.0 200 OK\r\n\r\nto the end of the connection"
)
"""Four responses on one connection: a counted body, a chunked one with a folded header and a trailer, none,
and one read until the connection closes."""


def _events(buffer: type, reads: list[bytes]) -> list[tuple[str, object]]:
    """The events an h11 client built with ``buffer`` parses from ``reads`` (four GETs in turn)."""
    import h11
    import h11._connection

    saved = h11._connection.ReceiveBuffer
    h11._connection.ReceiveBuffer = buffer  # type: ignore[misc]
    try:
        conn = h11.Connection(h11.CLIENT)
    finally:
        h11._connection.ReceiveBuffer = saved  # type: ignore[misc]
    seen: list[tuple[str, object]] = []
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    for data in [*reads, b""]:  # b"": the server closed the connection
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.ConnectionClosed):
                return seen
            if isinstance(event, h11.Data):
                seen.append(("Data", bytes(event.data)))
            elif isinstance(event, h11.Response | h11.EndOfMessage):
                seen.append((type(event).__name__, [(bytes(k), bytes(v)) for k, v in event.headers]))
            if isinstance(event, h11.EndOfMessage) and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
                conn.send(h11.EndOfMessage())
    return seen


@pytest.mark.parametrize("step", [1, 2, 3, 7, 16, 33, 64, len(RESPONSES)])
def test_the_pass_through_buffer_parses_what_h11s_own_buffer_parses(step: int) -> None:
    from h11._receivebuffer import ReceiveBuffer

    reads = [RESPONSES[i : i + step] for i in range(0, len(RESPONSES), step)]
    expected = _events(ReceiveBuffer, reads)
    assert [name for name, _ in expected].count("EndOfMessage") == 4
    assert b"".join(data for name, data in expected if name == "Data") == (  # type: ignore[misc]
        b"0123456789wxyzabcto the end of the connection"
    )
    assert _events(tuning.PassThroughBuffer, reads) == expected
    # the same reads as bytearrays and memoryview-backed bytes take h11's path and agree too
    assert _events(tuning.PassThroughBuffer, [bytearray(r) for r in reads]) == expected


def test_a_body_read_is_handed_on_without_a_copy() -> None:
    import h11

    tuning.apply()
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    read = bytes(range(256)) * 3906 + b"0123"
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(read) + 1000))
    assert isinstance(conn.next_event(), h11.Response)
    conn.receive_data(read)
    event = conn.next_event()
    assert isinstance(event, h11.Data)
    assert bytes(event.data) is read  # what httpcore yields: the very object the socket returned
    conn.receive_data(read[:1000] + b"rest")  # more than the body holds: the counted part, then the rest kept
    event = conn.next_event()
    assert isinstance(event, h11.Data) and bytes(event.data) == read[:1000]
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    assert conn.trailing_data == (b"rest", False)


def test_httpcore_copies_a_body_event_with_bytes_and_h11_builds_the_tunable_buffer() -> None:
    import h11._connection

    source = inspect.getsource(httpcore.AsyncHTTP11Connection._receive_response_body)
    assert "yield bytes(event.data)" in source  # bytes() of a bytes object is that object: no copy
    assert "ReceiveBuffer()" in inspect.getsource(h11._connection.Connection.__init__)
    tuning.apply()
    assert h11._connection.ReceiveBuffer is tuning.PassThroughBuffer


def _printed(code: str) -> list[str]:
    """The words ``code`` prints, run in a fresh interpreter (pytest's plugins have imported much already)."""
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()


def test_a_missing_sniffio_is_not_searched_for_again() -> None:
    code = (
        "import sys, importlib.util\n"
        "installed = importlib.util.find_spec('sniffio') is not None\n"
        "import job, httpcore._synchronization as s\n"
        "print(installed, sys.modules.get('sniffio', 'absent') is None, s.current_async_library())\n"
    )
    installed, blocked, library = _printed(code)
    assert library == "asyncio"
    assert blocked == str(installed == "False")


def test_the_console_script_loads_with_the_collector_paused_and_runs_with_it_on() -> None:
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["model-sync"] == "job.launch:main"
    code = (
        "import gc, job.__main__ as m\n"
        "m.main = lambda: print(gc.isenabled(), gc.get_freeze_count() > 10000)\n"
        "from job.launch import main\n"
        "main()\n"
    )
    assert _printed(code) == ["True", "True"]


def test_what_is_alive_when_a_transfer_starts_is_frozen_in_the_console_script_only() -> None:
    # The engine calls settled() as a transfer starts: a no-op in a library caller (or pytest), a freeze in the
    # one-job process the console script runs; at the script's end, everything is frozen before the exit.
    code = (
        "import atexit, gc, sys, job.__main__ as m\n"
        "from job.tuning import settled\n"
        "alive = []\n"
        "before = gc.get_freeze_count(); alive.append([]); settled(); print(gc.get_freeze_count() == before)\n"
        "def run():\n"
        "    before = gc.get_freeze_count(); alive.append([]); settled(); print(gc.get_freeze_count() > before)\n"
        "    alive.append([]); sys.exit(0)\n"
        "m.main = run\n"
        "atexit.register(lambda: print(not any(o is alive[-1] for o in gc.get_objects())))  # frozen: not listed\n"
        "from job.launch import main\n"
        "main()\n"
    )
    assert _printed(code) == ["True", "True", "True"]


def test_aiohttps_unused_default_tls_contexts_load_no_cas_and_everything_else_still_does() -> None:
    code = (
        "import ssl, job.s3.client, aiohttp.connector as c\n"
        "print(c._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'], c._SSL_CONTEXT_UNVERIFIED.verify_mode,\n"
        "      'set_default_verify_paths' in ssl.SSLContext.__dict__,\n"
        "      ssl.create_default_context().cert_store_stats()['x509_ca'] > 0)\n"
    )
    assert _printed(code) == ["0", "0", "False", "True"]  # verified default: no CA, fails closed; CERT_NONE; restored


def test_aiobotocore_never_asks_aiohttp_for_its_verified_default_context() -> None:
    import aiobotocore.httpsession  # type: ignore[import-untyped]
    import aiohttp.connector

    assert "_SSL_CONTEXT_VERIFIED = _make_ssl_context(True)" in inspect.getsource(aiohttp.connector)
    source = inspect.getsource(aiobotocore.httpsession.AIOHTTPSession)
    assert "ssl=ssl_context or False" in source  # its own context when verifying, else no verification
