"""Reading ahead on a link that caps each connection (job.readahead), against a real distribution registry.

The link is :func:`tests.bench.capped.capped_link`, a proxy giving each connection a few MB/s: one read of
a blob is slowed to that, several at once are not. Segments are made small so that a few MiB show it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from job.oci.client import OciClient
from job.readahead import ReadAhead
from tests.bench.capped import capped_link
from tests.integration.test_oci import file, log_lines, push_layers, read_all, tar_layer
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
