"""The floor rows: what any client spends here on a route, and what model-sync's libraries spend on a start,
each next to model-sync in the same rounds (README, Performance).

* ``s3-oci/client-floor``: :mod:`tests.bench.client_floor` on the model's files in the source bucket (presigned
  GETs, largest first), pushed as blobs to the run's registry, as many at a time as model-sync's default
  ``MODEL_SYNC_PARALLEL_FILES``: the socket copies and the sha256 a byte needs, nothing else.
* ``uri-oci/client-floor``: the same for the model's tar.gz (``--gunzip``), inflated with zlib-ng.
* ``start/model-sync``: s3 -> oci of an 8-byte model (``s3://models/tiny/``): a whole job's start and end, with
  nothing to move. ``start/libraries``: :mod:`tests.bench.library_start`, the imports and the S3 client of the
  libraries model-sync is built on, alone. Their difference is what model-sync itself does in a start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.bench.peers import Step
from tests.bench.rows import Row, Run, check_oci, model_sync, oci_dest
from tests.bench.stack import MODEL_PREFIX, SRC_BUCKET, TINY_PREFIX, Bench

__all__ = ["PARALLEL_FILES", "client_floor_row", "gunzip_floor_row", "start_rows"]

PARALLEL_FILES = 4
"""model-sync's default ``MODEL_SYNC_PARALLEL_FILES``: the s3 client floor's streams."""
HERE = Path(__file__).parent


def client_floor_row(bench: Bench) -> Row:
    def steps(run: Run) -> list[Step]:
        assert run.dst_oci is not None
        s3 = bench.source_s3().client()
        paths = sorted(bench.model.files, key=lambda path: -bench.model.files[path])
        urls = [
            s3.generate_presigned_url("get_object", Params={"Bucket": SRC_BUCKET, "Key": MODEL_PREFIX + path})
            for path in paths
        ]
        repository = f"bench/client-floor-{run.index}"
        script = str(HERE / "client_floor.py")
        argv = [sys.executable, "-I", "-S", script, run.dst_oci.host, repository, str(PARALLEL_FILES), *urls]
        return [Step("push", argv, dict(os.environ))]

    return Row("s3-oci/client-floor", "s3->oci", "client floor: sockets + sha256, nothing else", "oci", steps)


def gunzip_floor_row(bench: Bench) -> Row:
    def steps(run: Run) -> list[Step]:
        assert run.dst_oci is not None
        url = bench.uri_source()["MODEL_SYNC_SOURCE_URI"]
        repository = f"bench/client-floor-{run.index}"
        argv = [sys.executable, "-I", str(HERE / "client_floor.py"), "--gunzip", run.dst_oci.host, repository, url]
        return [Step("push", argv, dict(os.environ))]

    what = "client floor: sockets + inflate + sha256, nothing else"
    return Row("uri-oci/client-floor", "uri(tar.gz)->oci", what, "oci", steps, needs=frozenset({"targz"}))


def start_rows(bench: Bench) -> list[Row]:
    tiny = frozenset({"tiny"})

    def libraries(run: Run) -> list[Step]:
        return [Step("start", [sys.executable, "-P", str(HERE / "library_start.py")], dict(os.environ))]

    return [
        Row(
            "start/model-sync",
            "start (s3->oci, 8 bytes)",
            "model-sync",
            "oci",
            lambda r: model_sync(r, bench.s3_source(TINY_PREFIX), oci_dest(r)),
            lambda r: check_oci(r, files=1),
            needs=tiny,
        ),
        Row(
            "start/libraries",
            "start (s3->oci, 8 bytes)",
            "its libraries alone: imports + an S3 client",
            "dir",
            libraries,
            needs=tiny,
        ),
    ]
