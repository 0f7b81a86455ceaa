"""Hostile archives through the real process (``python -m job``, uri -> s3, update_artifact), as a user runs it:
a name that would forge a log line, and a 22 KB tar.gz of links that lists millions of files. Each ends in one
line, exit 1, nothing recorded LIVE; the link bomb's peak RSS is measured on the process itself."""

from __future__ import annotations

import gzip
import http.server
import io
import subprocess
import sys
import tarfile
import threading
import uuid
from pathlib import Path

import pytest

from tests.integration.jobs import (
    FAST,
    REPO,
    Run,
    get_artifact,
    job_env,
    registry_env,
    run_job,
    s3_env,
    update_artifact_env,
)
from tests.servers.faultproxy import FaultProxy, status
from tests.servers.http import HttpTestServer
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

FORGED = "2026-01-01T00:00:00Z ERROR job: forged line"
# Runs the job as its only child and writes the child's peak RSS (KiB, from getrusage) to argv[1].
_MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def tar_gz(build: callable) -> bytes:  # type: ignore[valid-type]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return gzip.compress(raw.getvalue())


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def env_for(url: str, registry: ModelRegistryStandin, s3: S3Server) -> dict[str, str]:
    return {**FAST, **registry_env(registry.url), **update_artifact_env(registry.api_url),
            "MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI": url,
            **s3_env("DESTINATION", s3, fresh_bucket(s3, "hostile"), "m")}  # fmt: skip


def test_an_entry_named_like_a_log_line_is_refused_and_forges_nothing(
    registry_standin: ModelRegistryStandin, http_server: HttpTestServer, seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    data = tar_gz(lambda tar: (add_file(tar, "ok.txt", b"ok"), add_file(tar, f"x\n{FORGED}", b"evil")))
    url = http_server.url(http_server.write(f"hostile/{uuid.uuid4().hex[:6]}.tar.gz", data))
    env = env_for(url, registry_standin, seaweedfs_s3)
    run = run_job(env, tmp_path)
    run.assert_one_line_failure(code=1)
    assert "control character" in run.message and "\\n2026-01-01" in run.message  # shown escaped
    assert not any(line.startswith(FORGED) for line in (run.stderr + run.stdout).splitlines())
    assert get_artifact(registry_standin.api_url, env["MODEL_SYNC_MODEL_ARTIFACT_ID"])["state"] != "LIVE"


def test_a_link_bomb_is_refused_at_the_file_bound_with_bounded_memory(
    registry_standin: ModelRegistryStandin, http_server: HttpTestServer, seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    """2,000 files and 1,500 links to their own folder: 3,002,000 files listed, 1.4 GB, before the bound."""

    def bomb(tar: tarfile.TarFile) -> None:
        for i in range(2000):
            add_file(tar, f"d/f{i}", b"")
        for i in range(1500):
            link = tarfile.TarInfo(f"d/l{i}")
            link.type, link.linkname = tarfile.SYMTYPE, "."
            tar.addfile(link)

    data = tar_gz(bomb)
    assert len(data) < 64 * 1024
    url = http_server.url(http_server.write(f"hostile/{uuid.uuid4().hex[:6]}.tar.gz", data))
    env = env_for(url, registry_standin, seaweedfs_s3)
    termination, rss_file = tmp_path / "termination", tmp_path / "rss"
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(rss_file), sys.executable, "-m", "job"],
        env=job_env(env, termination), cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    run = Run(proc.returncode, proc.stdout, proc.stderr, termination.read_text() if termination.exists() else "")
    run.assert_one_line_failure(code=1)
    assert "more than 100000 files" in run.message
    peak_mib = int(rss_file.read_text()) / 1024
    assert peak_mib < 300, f"peak RSS {peak_mib:.0f} MiB"
    print(f"link bomb: peak RSS {peak_mib:.0f} MiB")


def test_a_termination_message_over_4096_bytes_is_cut_on_a_character_boundary(tmp_path: Path) -> None:
    """A config error naming a long path of multibyte characters: the message is cut where Kubernetes cuts it,
    but never inside a character."""
    head = "unknown metadata key 'ModelArtifact.not_a_field' in "
    deep = tmp_path
    for _ in range(16):
        deep = deep / ("é" * 120)  # 240 bytes a component, within Linux's limits
    # A last component that puts byte 4096 of the message inside an "é"; an "a" before it when tmp_path's length
    # (pytest's run counter is part of it) has the other parity.
    candidates = [deep / (pad + "é" * extra) for pad in ("", "a") for extra in range(1, 120)]
    for candidate in candidates:
        message = (head + str(candidate)).encode()
        fits = len(str(candidate / "ModelArtifact.not_a_field").encode()) < 4095  # Linux's PATH_MAX
        if fits and len(message) > 4096 and message[4096 - 1] == 0xC3:
            deep = candidate
            break
    else:
        raise AssertionError("no path length puts the cut inside a character")
    deep.mkdir(parents=True)
    (deep / "ModelArtifact.not_a_field").write_text("x")
    env = {**registry_env("http://127.0.0.1:9"), "MODEL_SYNC_MODEL_UPLOAD_INTENT": "create_model",
           "MODEL_SYNC_METADATA_CONFIGMAP_PATH": str(deep), "MODEL_SYNC_SOURCE_TYPE": "pvc",
           "MODEL_SYNC_SOURCE_PATH": str(tmp_path), "MODEL_SYNC_DESTINATION_OCI_URI": "127.0.0.1:9/m:1",
           "MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY": "false"}  # fmt: skip
    termination = tmp_path / "termination"
    proc = subprocess.run([sys.executable, "-m", "job"], env=job_env(env, termination), cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    data = termination.read_bytes()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(data) == 4095  # the "é" that straddled byte 4096 is left out whole
    assert data.decode("utf-8").startswith(head)  # strict: no half character


def test_a_model_registry_answer_over_16_mib_is_refused(
    registry_standin: ModelRegistryStandin, registry_proxy: FaultProxy, seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    """One huge answer took 1.4-1.9 GB; now it is read as a stream and refused past 16 MiB."""
    registry_proxy.clear()
    env = {**env_for("http://127.0.0.1:9/m.bin", registry_standin, seaweedfs_s3),
           "MODEL_SYNC_REGISTRY_SERVER_ADDRESS": registry_proxy.url, "MODEL_SYNC_RETRY_ATTEMPTS": "1"}  # fmt: skip
    artifact = env["MODEL_SYNC_MODEL_ARTIFACT_ID"]
    registry_proxy.add(status(200, body=b'{"pad": "' + b"x" * (20 * 1024 * 1024) + b'"}', content_type="application/json"),
                       method="GET", path=rf"/model_artifacts/{artifact}$", times=5)  # fmt: skip
    try:
        run = run_job(env, tmp_path)
    finally:
        registry_proxy.clear()
    run.assert_one_line_failure(code=1)
    assert "answer is over 16 MiB" in run.message


class _EndlessListing(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint whose ListObjectsV2 always says there is more, with a new continuation token each time."""

    def do_GET(self) -> None:
        n = uuid.uuid4().hex
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name><Prefix>m/</Prefix>'
            f"<KeyCount>1</KeyCount><IsTruncated>true</IsTruncated><NextContinuationToken>{n}</NextContinuationToken>"
            f"<Contents><Key>m/f-{n}</Key><Size>1</Size><ETag>&quot;{n}&quot;</ETag></Contents></ListBucketResult>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_s3_listing_that_never_ends_stops_at_the_page_bound(
    registry_standin: ModelRegistryStandin, seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    """It was listed forever (312 MB and rising); now 1,000 pages at most, one line, exit 1."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EndlessListing)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        env = {**env_for("http://127.0.0.1:9/unused", registry_standin, seaweedfs_s3),
               **{k.replace("DESTINATION", "SOURCE"): v for k, v in s3_env("DESTINATION", seaweedfs_s3, "b", "m/").items()},
               "MODEL_SYNC_SOURCE_AWS_ENDPOINT": endpoint}  # fmt: skip
        run = run_job(env, tmp_path, timeout=300)
    finally:
        server.shutdown()
        thread.join(timeout=10)
    run.assert_one_line_failure(code=1)
    assert "more than 1000 pages of objects" in run.message


def test_max_files_bounds_an_archive_too(
    registry_standin: ModelRegistryStandin, http_server: HttpTestServer, seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    data = tar_gz(lambda tar: [add_file(tar, f"f{i}", b"x") for i in range(10)])
    url = http_server.url(http_server.write(f"hostile/{uuid.uuid4().hex[:6]}.tar.gz", data))
    run = run_job({**env_for(url, registry_standin, seaweedfs_s3), "MODEL_SYNC_MAX_FILES": "5"}, tmp_path)
    run.assert_one_line_failure(code=1)
    assert "more than 5 files" in run.message and "MODEL_SYNC_MAX_FILES" in run.message
