"""A cut http download through the real process (``python -m job``): resumed only where it cannot mix versions.

The http test server sits behind the fault proxy, which resets the first GET after 512 KiB. Two servers the
retry ladder must cope with: one that dates its files and tags none (``etag=0``: ``Last-Modified`` only), whose
file is replaced at the very moment of the cut, and one that advertises ranges yet ignores ``Range``
(``ranges=ignore``). What lands in the S3 bucket (SeaweedFS, read back with boto3) is one whole version.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.integration.jobs import (
    FAST,
    get_artifact,
    read_s3,
    registry_env,
    run_job,
    s3_env,
    update_artifact_env,
)
from tests.servers.faultproxy import FaultProxy, reset
from tests.servers.http import HttpTestServer
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
_rng = random.Random(7)
V1 = _rng.randbytes(3 * MiB + 5)
V2 = _rng.randbytes(len(V1))  # same size: only the bytes tell the versions apart


def _env(registry: ModelRegistryStandin, s3: S3Server, bucket: str, out: str, uri: str) -> dict[str, str]:
    return {**FAST, **registry_env(registry.url), **update_artifact_env(registry.api_url),
            "MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI": uri,
            **s3_env("DESTINATION", s3, bucket, out)}  # fmt: skip


def _resumed_at(range_header: str | None) -> bool | None:
    """None for no Range; True for ``bytes=n-`` from a byte after the start (where the reset left the client)."""
    if range_header is None:
        return None
    match = re.fullmatch(r"bytes=(\d+)-", range_header)
    return match is not None and int(match.group(1)) > 0


def _write_old(server: HttpTestServer, rel: str, data: bytes) -> str:
    """Write ``data`` dated an hour ago, so its ``Last-Modified`` (returned) is strong (RFC 9110 8.8.2.2)."""
    server.write(rel, data)
    an_hour_ago = time.time() - 3600
    os.utime(server.root / rel, (an_hour_ago, an_hour_ago))
    return formatdate(an_hour_ago, usegmt=True)


def test_a_file_changed_between_the_cut_and_the_resume_is_never_stored_spliced(
    registry_standin: ModelRegistryStandin,
    seaweedfs_s3: S3Server,
    http_server: HttpTestServer,
    http_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    """Before: the first 512 KiB of v1 + the rest of v2, recorded LIVE. Now: GET (cut; v2 replaces v1), GET with
    Range and If-Range: <v1's date> (a 200: it changed), GET of the whole file: v2 stored whole."""
    rel = f"resume/dated-{uuid.uuid4().hex[:8]}.bin"
    modified = _write_old(http_server, rel, V1)
    rule = http_proxy.add(
        reset(512 * 1024), method="GET", path=rf"^/files/{rel}", on_fire=lambda _seen: http_server.write(rel, V2)
    )
    bucket, out = fresh_bucket(seaweedfs_s3, "resume"), "changed/m"
    env = _env(registry_standin, seaweedfs_s3, bucket, out, f"{http_proxy.url}/files/{rel}?etag=0")
    run = run_job(env, tmp_path, timeout=120)

    assert rule.fired == 1
    seen = http_server.seen(f"/files/{rel}")
    assert [_resumed_at(r.headers.get("range")) for r in seen] == [None, True, None], [
        r.headers.get("range") for r in seen
    ]
    assert seen[1].headers["if-range"] == modified and "if-match" not in seen[1].headers
    assert "changed since the download started" in run.stderr
    result = run.result()  # exit 0: the new version, whole
    assert read_s3(seaweedfs_s3, bucket, out) == {rel.rsplit("/", 1)[1]: V2}
    artifact = get_artifact(registry_standin.api_url, env["MODEL_SYNC_MODEL_ARTIFACT_ID"])
    assert artifact["state"] == "LIVE" and artifact["uri"] == result["uri"]
    assert "Traceback" not in run.stderr


def test_a_server_that_ignores_range_gets_the_file_stored_whole_after_a_cut(
    registry_standin: ModelRegistryStandin,
    seaweedfs_s3: S3Server,
    http_server: HttpTestServer,
    http_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    """Before: exit 1 after one cut ("the server ignored the Range request"). Now: GET (cut), GET with Range and
    If-Range (a 200: Range ignored, a retryable error), the whole-file retry's GET: stored whole, exit 0."""
    rel = f"resume/norange-{uuid.uuid4().hex[:8]}.bin"
    http_server.write(rel, V1)
    rule = http_proxy.add(reset(512 * 1024), method="GET", path=rf"^/files/{rel}")
    bucket, out = fresh_bucket(seaweedfs_s3, "resume"), "norange/m"
    env = _env(registry_standin, seaweedfs_s3, bucket, out, f"{http_proxy.url}/files/{rel}?ranges=ignore")
    run = run_job(env, tmp_path, timeout=120)

    assert rule.fired == 1
    seen = http_server.seen(f"/files/{rel}")
    assert [_resumed_at(r.headers.get("range")) for r in seen] == [None, True, None], [
        r.headers.get("range") for r in seen
    ]
    assert seen[1].headers["if-range"].startswith('"')
    assert "ignored the Range request" in run.stderr
    result = run.result()
    assert read_s3(seaweedfs_s3, bucket, out) == {rel.rsplit("/", 1)[1]: V1}
    artifact = get_artifact(registry_standin.api_url, env["MODEL_SYNC_MODEL_ARTIFACT_ID"])
    assert artifact["state"] == "LIVE" and artifact["uri"] == result["uri"]
    assert "Traceback" not in run.stderr
