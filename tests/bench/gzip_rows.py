"""An OCI source whose layers are gzip: the modelcar re-pushed by skopeo with ``--dest-compress-format gzip``
(what ``docker push`` and most build tools write), read into S3.

Each layer is inflated (zlib-ng) as it streams, its compressed bytes checked against the layer digest on the way.
Opt-in (``--only 'ocigz-s3/*'``): the setup compresses the whole model once, and the bench smoke test pins the
default rows. The same image through a capped link: :mod:`tests.bench.capped_rows`.
"""

from __future__ import annotations

import subprocess
import time

from tests.bench.peers import tool
from tests.bench.rows import Row, check_s3, model_sync, s3_dest
from tests.bench.stack import SOURCE_IMAGE, Bench, say

__all__ = ["GZIP_IMAGE", "gzip_rows", "gzip_source", "push_gzip_image"]

GZIP_IMAGE = "models/source-gzip:v1"


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


def gzip_source(bench: Bench, host: str | None = None, **more: str) -> dict[str, str]:
    """The gzip image as a source, through ``host`` (a proxy's ``host:port``) when given."""
    bench.need("imagegz")
    assert bench.src_oci is not None
    return {
        "MODEL_SYNC_SOURCE_TYPE": "oci",
        "MODEL_SYNC_SOURCE_OCI_URI": f"{host or bench.src_oci.host}/{GZIP_IMAGE}",
        "MODEL_SYNC_SOURCE_OCI_ENABLE_TLS_VERIFY": "false",
        **more,
    }


def gzip_rows(bench: Bench) -> list[Row]:
    return [
        Row(
            "ocigz-s3/model-sync",
            "oci(gzip layers)->s3",
            "model-sync",
            "s3",
            lambda r: model_sync(r, gzip_source(bench), s3_dest(r)),
            check_s3,
            needs=frozenset({"image", "imagegz"}),
            opt_in=True,
        ),
    ]
