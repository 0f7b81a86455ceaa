"""An OCI source whose layers are gzip: the modelcar re-pushed by skopeo with ``--dest-compress-format gzip``
(what ``docker push`` and most build tools write), read into S3.

Each layer is inflated (zlib-ng) as it streams, its compressed bytes checked against the layer digest on the way.
Opt-in (``--only 'ocigz-s3/*'``): the setup compresses the whole model once, and the bench smoke test pins the
default rows. ``ocigz-s3-capped/*`` reads the same image through :mod:`tests.bench.capped`, at
:data:`CAPPED_MB_PER_S` per connection: the layers are read one after the other, so there one connection is the
limit.
"""

from __future__ import annotations

import subprocess
import time

from tests.bench.capped import capped_link
from tests.bench.peers import tool
from tests.bench.rows import Row, check_s3, model_sync, s3_dest
from tests.bench.stack import SOURCE_IMAGE, Bench, say

__all__ = ["CAPPED_MB_PER_S", "GZIP_IMAGE", "gzip_rows", "push_gzip_image"]

GZIP_IMAGE = "models/source-gzip:v1"
CAPPED_MB_PER_S = 20.0
"""What each connection of the capped row carries at most, server to client."""


def push_gzip_image(bench: Bench) -> None:
    """Copy the source modelcar to :data:`GZIP_IMAGE` in the same registry with gzip layers."""
    source = bench.source_image()
    assert bench.src_oci is not None
    started = time.monotonic()
    subprocess.run(
        [
            tool("skopeo"),
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-compress",
            "--dest-compress-format=gzip",
            f"docker://{source}",
            f"docker://{bench.src_oci.host}/{GZIP_IMAGE}",
        ],
        check=True,
        timeout=bench.step_timeout,
        capture_output=True,
    )
    say(
        f"gzip modelcar {bench.src_oci.host}/{GZIP_IMAGE} copied from {SOURCE_IMAGE} in {time.monotonic() - started:.1f} s"
    )


def gzip_rows(bench: Bench) -> list[Row]:
    proxies: dict[str, str] = {}

    def source(*, capped: bool = False) -> dict[str, str]:
        bench.need("imagegz")
        assert bench.src_oci is not None
        host = bench.src_oci.host
        if capped:  # one proxy for every run of the row, stopped with the bench's servers
            if host not in proxies:
                proxies[host] = bench.stack.enter_context(capped_link(host, CAPPED_MB_PER_S))
            host = proxies[host]
        return {
            "MODEL_SYNC_SOURCE_TYPE": "oci",
            "MODEL_SYNC_SOURCE_OCI_URI": f"{host}/{GZIP_IMAGE}",
            "MODEL_SYNC_SOURCE_OCI_ENABLE_TLS_VERIFY": "false",
        }

    return [
        Row(
            "ocigz-s3/model-sync",
            "oci(gzip layers)->s3",
            "model-sync",
            "s3",
            lambda r: model_sync(r, source(), s3_dest(r)),
            check_s3,
            needs=frozenset({"image", "imagegz"}),
            opt_in=True,
        ),
        Row(
            "ocigz-s3-capped/model-sync",
            f"oci(gzip layers, {CAPPED_MB_PER_S:.0f} MB/s per connection)->s3",
            "model-sync",
            "s3",
            lambda r: model_sync(r, source(capped=True), s3_dest(r)),
            check_s3,
            needs=frozenset({"image", "imagegz"}),
            opt_in=True,
        ),
    ]
