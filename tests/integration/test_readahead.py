"""Reading ahead on a link that caps each connection (job.readahead): a real distribution registry, and the
http test server (ranges, validators) for the ``uri`` source.

The link is :func:`tests.bench.capped.capped_link`, a proxy giving each connection a few MB/s: one read of
a blob is slowed to that, several at once are not. Segments are made small so that a few MiB show it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from job.config import UriLocation
from job.engine.transfer import TransferSettings, transfer
from job.http.settings import HttpSettings
from job.oci.client import OciClient
from job.readahead import ReadAhead
from job.sources.uri import UriSource
from tests.bench.capped import capped_link
from tests.fakes import MemoryDestination
from tests.integration.test_oci import file, log_lines, push_layers, read_all, tar_layer
from tests.servers.http import HttpTestServer
from tests.servers.registry import Registry

pytestmark = pytest.mark.integration

SEGMENT = 256 * 1024


async def test_a_blob_read_over_a_capped_link_comes_in_several_ranged_reads_with_its_digest(
    registry_plain: Registry,
) -> None:
    reg = registry_plain
    data = os.urandom(3 * 1024 * 1024 + 5)
    pusher = OciClient(reg.host, tls_verify=False)
    digest = await pusher.push_blob("models/ahead", data)
    await pusher.aclose()
    before = len(log_lines(reg, f"GET /v2/models/ahead/blobs/{digest}"))
    with capped_link(reg.host, 4) as link:
        client = OciClient(link, tls_verify=False, side="source")
        client.read_ahead = ReadAhead(4, 3 * SEGMENT, segment=SEGMENT)
        hasher, size = hashlib.sha256(), 0
        async with client.open_blob("models/ahead", digest, size=len(data)) as body:
            async for chunk in body:
                hasher.update(chunk)
                size += len(chunk)
        await client.aclose()
    assert (size, "sha256:" + hasher.hexdigest()) == (len(data), digest)
    assert client.read_ahead.held == 0
    assert len(log_lines(reg, f"GET /v2/models/ahead/blobs/{digest}")) - before > 4


async def test_a_gzip_image_read_over_a_capped_link_reads_its_layer_ahead(
    registry_plain: Registry, tmp_path: Path
) -> None:
    reg = registry_plain
    big = os.urandom(2 * 1024 * 1024)
    layer = tar_layer([file("models/big.bin", big), file("models/small.json", b"{}")], compress=True)
    reference = f"{reg.host}/models/ahead-gz:v1"
    push_layers(reg, tmp_path / "layout", reference, layer)
    blob = layer[0]
    before = len(log_lines(reg, f"GET /v2/models/ahead-gz/blobs/sha256:{hashlib.sha256(blob).hexdigest()}"))
    with capped_link(reg.host, 4) as link:
        location = reg.location(f"{link}/models/ahead-gz:v1", registry=link, tls_verify=False)
        files = await read_all(location, read_ahead=ReadAhead(4, 3 * SEGMENT, segment=SEGMENT))
    assert files == {"big.bin": big, "small.json": b"{}"}
    reads = len(log_lines(reg, f"GET /v2/models/ahead-gz/blobs/sha256:{hashlib.sha256(blob).hexdigest()}")) - before
    assert reads > 2


# --- http(s): a file, an archive, resumable or not -------------------------------------------------------


async def read_uri(uri: str, tmp_path: Path) -> dict[str, bytes]:
    source = UriSource(
        UriLocation(uri),
        storage_path=tmp_path / "storage",
        settings=HttpSettings(initial_wait=0.01, max_wait=0.05),
        read_ahead=ReadAhead(4, 3 * SEGMENT, segment=SEGMENT),
    )
    memory = MemoryDestination()
    await transfer(source, memory, TransferSettings(parallel_files=2))
    return memory.stored


@pytest.mark.parametrize("query", ["", "?etag=0"], ids=["etag", "last-modified"])
async def test_an_http_file_over_a_capped_link_is_read_ahead_with_its_validator(
    http_server: HttpTestServer, tmp_path: Path, query: str
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = f"/files/ahead{query.replace('?', '-').replace('=', '')}.bin"
    http_server.write(path.removeprefix("/files/"), data)
    an_hour_ago = time.time() - 3600  # a strong Last-Modified: a validator for If-Range
    os.utime(http_server.root / path.removeprefix("/files/"), (an_hour_ago, an_hour_ago))
    origin = http_server.origin.removeprefix("http://")
    with capped_link(origin, 4) as link:
        stored = await read_uri(f"http://{link}{path}{query}", tmp_path)
    assert stored == {path.rsplit("/", 1)[1]: data}
    gets = [r for r in http_server.seen(path) if r.method == "GET"]
    ranged = [r for r in gets if "range" in r.headers]
    assert len(ranged) > 4
    # each range is pinned to the version the first answer served
    validator = "if-match" if not query else "if-range"
    assert all(validator in r.headers for r in ranged)


async def test_an_http_file_without_ranges_is_one_read_on_a_capped_link(
    http_server: HttpTestServer, tmp_path: Path
) -> None:
    data = os.urandom(1024 * 1024)
    path = http_server.write("ahead-noranges.bin", data)
    origin = http_server.origin.removeprefix("http://")
    with capped_link(origin, 4) as link:
        stored = await read_uri(f"http://{link}{path}?ranges=0", tmp_path)
    assert stored == {"ahead-noranges.bin": data}
    assert len([r for r in http_server.seen(path) if r.method == "GET"]) == 1


async def test_a_file_replaced_while_it_is_read_ahead_is_never_stored_spliced(
    http_server: HttpTestServer, tmp_path: Path
) -> None:
    # v1 is dated an hour ago (a strong Last-Modified, the only validator with etag=0); v2 replaces it, as a
    # web server's files are replaced (a rename: responses under way keep reading v1), once ranges are running.
    # The ranges asked for after it carry If-Range: <v1's date>, are answered 200 (the whole of v2), and that is
    # an error where the stream reaches them: the engine sends the file again, and v2 is stored whole.
    v1, v2 = os.urandom(3 * 1024 * 1024), os.urandom(3 * 1024 * 1024)
    rel = f"ahead-replaced-{os.getpid()}.bin"
    path = http_server.write(rel, v1)
    an_hour_ago = time.time() - 3600
    os.utime(http_server.root / rel, (an_hour_ago, an_hour_ago))

    async def replace_once_ranges_run() -> None:
        while len([r for r in http_server.seen(path) if "range" in r.headers]) < 2:
            await asyncio.sleep(0.005)
        (http_server.root / "replacement.tmp").write_bytes(v2)
        os.replace(http_server.root / "replacement.tmp", http_server.root / rel)

    origin = http_server.origin.removeprefix("http://")
    with capped_link(origin, 4) as link:
        replacing = asyncio.create_task(replace_once_ranges_run())
        stored = await asyncio.wait_for(read_uri(f"http://{link}{path}?etag=0", tmp_path), 60)
        await asyncio.wait_for(replacing, 1)
    assert stored == {rel: v2}
    whole = [r for r in http_server.seen(path) if r.method == "GET" and "range" not in r.headers]
    assert len(whole) == 2  # the first read, and the file sent again
