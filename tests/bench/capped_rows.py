"""Rows on a link where each connection, not the link, is the limit (:mod:`tests.bench.capped`), opt-in.

What a CDN or object store in front of a registry or a download does to one stream: ``ocigz-s3-capped/*`` reads
the gzip image (:mod:`tests.bench.gzip_rows`; its layers are read one after the other) and ``uri-oci-capped/*``
the model's tar.gz over http, each connection capped at :data:`CAPPED_MB_PER_S` server to client. ``model-sync``
reads ahead in parallel ranges once a read proves slow (``job.readahead``); ``one-read`` is the same job with
that turned off (``MODEL_SYNC_PARALLEL_READS=1``), in the same rounds. ``--only '*-capped/*'`` runs them.
"""

from __future__ import annotations

from tests.bench.capped import capped_link
from tests.bench.gzip_rows import gzip_source
from tests.bench.rows import Row, check_oci, check_s3, model_sync, oci_dest, s3_dest
from tests.bench.stack import Bench

__all__ = ["CAPPED_MB_PER_S", "capped_rows"]

CAPPED_MB_PER_S = 20.0
"""What each connection of a capped row carries at most, server to client."""

ONE_READ = {"MODEL_SYNC_PARALLEL_READS": "1"}


def capped_rows(bench: Bench) -> list[Row]:
    proxies: dict[str, str] = {}

    def through_proxy(host: str) -> str:
        """One proxy per server for every run of the rows, stopped with the bench's servers."""
        if host not in proxies:
            proxies[host] = bench.stack.enter_context(capped_link(host, CAPPED_MB_PER_S))
        return proxies[host]

    def gzip_image(**more: str) -> dict[str, str]:
        assert bench.src_oci is not None
        return gzip_source(bench, through_proxy(bench.src_oci.host), **more)

    def targz(**more: str) -> dict[str, str]:
        source = bench.uri_source()
        scheme, _, rest = source["MODEL_SYNC_SOURCE_URI"].partition("://")
        host, _, path = rest.partition("/")
        return {**source, "MODEL_SYNC_SOURCE_URI": f"{scheme}://{through_proxy(host)}/{path}", **more}

    rate = f"{CAPPED_MB_PER_S:.0f} MB/s per connection"
    gz = frozenset({"image", "imagegz"})
    return [
        Row(
            "ocigz-s3-capped/model-sync",
            f"oci(gzip layers, {rate})->s3",
            "model-sync",
            "s3",
            lambda r: model_sync(r, gzip_image(), s3_dest(r)),
            check_s3,
            needs=gz,
            opt_in=True,
        ),
        Row(
            "ocigz-s3-capped/one-read",
            f"oci(gzip layers, {rate})->s3, no read ahead",
            "model-sync",
            "s3",
            lambda r: model_sync(r, gzip_image(**ONE_READ), s3_dest(r)),
            check_s3,
            needs=gz,
            opt_in=True,
        ),
        Row(
            "uri-oci-capped/model-sync",
            f"uri(tar.gz, {rate})->oci",
            "model-sync",
            "oci",
            lambda r: model_sync(r, targz(), oci_dest(r)),
            check_oci,
            needs=frozenset({"targz"}),
            opt_in=True,
        ),
        Row(
            "uri-oci-capped/one-read",
            f"uri(tar.gz, {rate})->oci, no read ahead",
            "model-sync",
            "oci",
            lambda r: model_sync(r, targz(**ONE_READ), oci_dest(r)),
            check_oci,
            needs=frozenset({"targz"}),
            opt_in=True,
        ),
    ]
