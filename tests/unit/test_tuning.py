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
