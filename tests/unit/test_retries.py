"""Retries, smallest unit first: what is retryable, how long to wait, resumed reads, files sent again, skips.

The engine on the in-memory fakes (no sleeps: the waits are tiny and the faults come from ``tests.fakes``), the
classification functions on the exceptions the libraries raise, and the stop watchdog with a fake exit.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import httpx
import pytest
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)

from job.__main__ import StopWatchdog
from job.engine.progress import ProgressReporter
from job.engine.transfer import TransferSettings, transfer
from job.errors import (
    IntegrityError,
    ModelSyncError,
    SourceAuthError,
    SourceError,
    UploadRejected,
)
from job.model import ObjectInfo, Uploaded, source_identity
from job.oci.protocol import error_for, transport_error
from job.retry import RetrySettings, carry_retryability, is_retryable, retry_after
from job.s3.errors import map_s3_error, s3_retryable
from job.sources.pvc import PvcSource
from job.sources.s3 import _check_answer
from tests.fakes import MemoryDestination, MemorySource, sha256_of

QUICK = RetrySettings(attempts=3, file_attempts=3, initial_wait=0.001, max_wait=0.002)
SETTINGS = TransferSettings(parallel_files=2, retry=QUICK)
DATA = bytes(range(256)) * 64  # 16 KiB


def client_error(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    metadata = {"HTTPStatusCode": status, "HTTPHeaders": headers or {}}
    return ClientError({"Error": {"Code": code, "Message": ""}, "ResponseMetadata": metadata}, "UploadPart")


# --- what is retryable --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("peer closed connection"), True),
        (ConnectionResetError("reset"), True),
        (TimeoutError(), True),
        (UploadRejected("x", status=503), True),
        (UploadRejected("x", status=429), True),
        (UploadRejected("x", status=408), True),
        (UploadRejected("x", status=404), False),
        (UploadRejected("x", status=403), False),
        (IntegrityError("short read"), False),
        (SourceAuthError("denied"), False),
        (ValueError("a bug"), False),
    ],
)
def test_is_retryable(exc: BaseException, expected: bool) -> None:
    assert is_retryable(exc) is expected


def test_an_integrity_error_is_never_retryable_even_if_marked() -> None:
    error = IntegrityError("digest mismatch")
    error.retryable = True
    assert not is_retryable(error)


def test_a_mapped_error_carries_what_its_cause_said() -> None:
    request = httpx.Request("GET", "http://h/x")
    response = httpx.Response(503, headers={"Retry-After": "7"}, request=request)
    cause = httpx.HTTPStatusError("503", request=request, response=response)
    error = carry_retryability(SourceError("reading x: HTTP 503"), cause)
    assert error.retryable is True and error.retry_after == 7.0
    assert is_retryable(error) and retry_after(error) == 7.0
    assert carry_retryability(SourceError("reading x"), ValueError()).retryable is False


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (client_error("SlowDown", 503), True),
        (client_error("503", 503), True),
        (client_error("429", 429), True),
        (client_error("RequestTimeout", 400), True),
        (client_error("InternalError", 500), True),
        (client_error("AccessDenied", 403), False),
        (client_error("NoSuchKey", 404), False),
        (client_error("BadDigest", 400), False),
        (EndpointConnectionError(endpoint_url="http://h"), True),
        (ReadTimeoutError(endpoint_url="http://h"), True),
        (ResponseStreamingError(error="reset"), True),
        (IncompleteReadError(actual_bytes=1, expected_bytes=2), True),
        (SSLError(endpoint_url="http://h", error="CERTIFICATE_VERIFY_FAILED"), False),
        (NoCredentialsError(), False),
    ],
)
def test_s3_retryable(exc: BaseException, expected: bool) -> None:
    assert s3_retryable(exc) is expected
    mapped = map_s3_error(exc, side="destination", doing="uploading", target="s3://b/k")
    assert is_retryable(mapped) is expected  # the mapping keeps the verdict


def test_s3_retry_after_is_read_from_botocore_headers() -> None:
    exc = client_error("SlowDown", 503, {"retry-after": "3"})
    assert retry_after(exc) == 3.0
    assert map_s3_error(exc, side="source", doing="reading", target="s3://b/k").retry_after == 3.0


def test_retry_after_as_an_http_date() -> None:
    request = httpx.Request("GET", "http://h/")
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    response = httpx.Response(429, headers={"Retry-After": when}, request=request)
    seconds = retry_after(httpx.HTTPStatusError("429", request=request, response=response))
    assert seconds is not None and 25 < seconds <= 30


def test_oci_errors_carry_status_retryability_and_retry_after() -> None:
    request = httpx.Request("PATCH", "http://h/v2/r/blobs/uploads/x")
    busy = httpx.Response(
        503, headers={"Retry-After": "2"}, json={"errors": [{"code": "UNAVAILABLE"}]}, request=request
    )
    error = error_for("destination", "uploading w.bin", busy, has_login=False)
    assert isinstance(error, UploadRejected) and is_retryable(error) and error.retry_after == 2.0
    denied = httpx.Response(403, json={"errors": [{"code": "DENIED"}]}, request=request)
    assert not is_retryable(error_for("source", "reading", denied, has_login=True))
    assert is_retryable(transport_error("destination", "uploading", httpx.ConnectError("refused")))
    tls = httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert not is_retryable(transport_error("destination", "uploading", tls))


def test_wait_for_prefers_retry_after_capped_then_backs_off() -> None:
    settings = RetrySettings(initial_wait=1.0, max_wait=4.0, retry_after_cap=10.0)
    asked = SourceError("x")
    asked.retry_after = 60.0
    assert settings.wait_for(1, asked) == 10.0
    assert all(0 <= settings.wait_for(5, ValueError()) <= 4.0 for _ in range(50))


# --- S3 answers checked against the listing -------------------------------------------------------


def test_an_s3_answer_of_another_version_or_range_is_refused() -> None:
    obj = ObjectInfo(PurePosixPath("w.bin"), 100, etag='"v1"')
    _check_answer({"ETag": '"v1"', "ContentLength": 100}, obj, None, "s3://b/w.bin")
    _check_answer({"ETag": '"v1"', "ContentRange": "bytes 40-99/100"}, obj, "bytes=40-", "s3://b/w.bin")
    with pytest.raises(SourceError, match="changed after it was listed"):
        _check_answer({"ETag": '"v2"', "ContentLength": 100}, obj, None, "s3://b/w.bin")
    with pytest.raises(SourceError, match="now 120 bytes, listed 100"):
        _check_answer({"ETag": '"v1"', "ContentRange": "bytes 40-119/120"}, obj, "bytes=40-", "s3://b/w.bin")
    with pytest.raises(SourceError, match="ignored the byte range"):
        _check_answer({"ETag": '"v1"', "ContentLength": 100}, obj, "bytes=40-", "s3://b/w.bin")


# --- the engine: resume, send again, skip -----------------------------------------------------------


async def test_a_broken_read_of_a_seekable_source_resumes_at_its_offset(caplog: pytest.LogCaptureFixture) -> None:
    source = MemorySource({"w.bin": DATA}, chunk_size=1000, fail_after={"w.bin": 5000}, fail_times={"w.bin": 2},
                          seekable=True)  # fmt: skip
    dest = MemoryDestination()
    result = await transfer(source, dest, SETTINGS)
    assert dest.stored == {"w.bin": DATA}
    assert source.opened == [("w.bin", 0), ("w.bin", 5000), ("w.bin", 5000)]
    assert dest.calls.count("put:w.bin") == 1  # the destination saw one unbroken stream
    assert result.uploaded[0].sha256 == sha256_of(DATA)  # the hash carried on over the seams
    assert "resuming there" in caplog.text


async def test_a_broken_read_of_a_source_without_ranges_sends_the_file_again(caplog: pytest.LogCaptureFixture) -> None:
    source = MemorySource({"w.bin": DATA, "c.json": b"{}"}, chunk_size=1000, fail_after={"w.bin": 5000},
                          fail_times={"w.bin": 1})  # fmt: skip
    dest = MemoryDestination()
    progress = ProgressReporter()
    result = await transfer(source, dest, SETTINGS, progress=progress)
    assert dest.stored == {"w.bin": DATA, "c.json": b"{}"}
    assert [o for o in source.opened if o[0] == "w.bin"] == [("w.bin", 0), ("w.bin", 0)]
    assert dest.calls.count("put:w.bin") == 2 and dest.abort_calls == 0
    assert result.bytes == progress.bytes_done == len(DATA) + 2  # the failed try's bytes were taken back
    assert "sending w.bin" in caplog.text and "attempt 2 of 3" in caplog.text


async def test_file_tries_are_bounded() -> None:
    source = MemorySource({"w.bin": DATA}, fail_after={"w.bin": 100})
    dest = MemoryDestination()
    with pytest.raises(SourceError, match="reading w.bin from the source: ConnectionResetError"):
        await transfer(source, dest, SETTINGS)
    assert dest.calls.count("put:w.bin") == QUICK.file_attempts
    assert dest.abort_calls == 1


async def test_resumes_are_bounded_then_the_file_is_sent_again() -> None:
    source = MemorySource({"w.bin": DATA}, chunk_size=1000, fail_after={"w.bin": 5000}, fail_times={"w.bin": 3},
                          seekable=True)  # fmt: skip
    dest = MemoryDestination()
    await transfer(source, dest, SETTINGS)
    # 1 open + 2 resumes (attempts=3) in the first try, which then fails; the second try reads it all.
    assert source.opened == [("w.bin", 0), ("w.bin", 5000), ("w.bin", 5000), ("w.bin", 0)]
    assert dest.stored == {"w.bin": DATA}


@pytest.mark.parametrize(
    "error",
    [UploadRejected("uploading w.bin: 403 DENIED", status=403), IntegrityError("writing w.bin: digest mismatch")],
    ids=["auth", "integrity"],
)
async def test_errors_that_would_repeat_are_not_retried(error: ModelSyncError) -> None:
    class Refuses(MemoryDestination):
        async def put(self, obj: ObjectInfo, data: AsyncIterator[bytes]) -> Uploaded:
            self.calls.append(f"put:{obj.path}")
            raise error

    dest = Refuses()
    with pytest.raises(type(error)):
        await transfer(MemorySource({"w.bin": DATA}), dest, SETTINGS)
    assert dest.calls.count("put:w.bin") == 1


async def test_a_retryable_destination_error_sends_the_file_again() -> None:
    class FlakyOnce(MemoryDestination):
        failed = False

        async def put(self, obj: ObjectInfo, data: AsyncIterator[bytes]) -> Uploaded:
            if not self.failed:
                self.failed = True
                self.calls.append(f"put:{obj.path}")
                async for _ in data:  # reads a little, then the upload breaks
                    break
                raise UploadRejected("uploading w.bin: 503 UNAVAILABLE", status=503)
            return await super().put(obj, data)

    dest = FlakyOnce()
    source = MemorySource({"w.bin": DATA})
    await transfer(source, dest, SETTINGS)
    assert dest.stored == {"w.bin": DATA}
    assert source.opened == [("w.bin", 0), ("w.bin", 0)] and source.open_now == 0


async def test_a_file_the_destination_already_has_is_not_read(caplog: pytest.LogCaptureFixture) -> None:
    class HasOne(MemoryDestination):
        async def lookup(self, obj: ObjectInfo) -> Uploaded | None:
            if obj.path == PurePosixPath("w.bin"):
                return Uploaded(obj=obj, size=len(DATA), skipped=True)
            return None

    caplog.set_level(logging.INFO, logger="job.engine.progress")
    source = MemorySource({"w.bin": DATA, "c.json": b"{}"}, etags={"w.bin": '"e1"'})
    dest = HasOne()
    result = await transfer(source, dest, SETTINGS)
    assert [o[0] for o in source.opened] == ["c.json"]
    assert [u.obj.path.name for u in dest.commits[0]] == ["w.bin", "c.json"]  # committed in listing order
    assert result.bytes == len(DATA) + 2
    assert "skipped w.bin" in caplog.text


async def test_a_skip_of_the_wrong_size_is_an_integrity_error() -> None:
    class Lies(MemoryDestination):
        async def lookup(self, obj: ObjectInfo) -> Uploaded | None:
            return Uploaded(obj=obj, size=1)

    with pytest.raises(IntegrityError, match="holds 1 bytes"):
        await transfer(MemorySource({"w.bin": DATA}), Lies(), SETTINGS)


async def test_cancellation_while_waiting_to_retry_cleans_up() -> None:
    slow = TransferSettings(retry=RetrySettings(file_attempts=3, initial_wait=30, max_wait=30))
    source = MemorySource({"w.bin": DATA}, fail_after={"w.bin": 100})
    dest = MemoryDestination()
    task = asyncio.create_task(transfer(source, dest, slow))
    async with asyncio.timeout(10):  # bounded: the first try fails at once, then the 30 s wait starts
        while not source.opened or source.open_now:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # now waiting before the second try
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dest.abort_calls == 1 and source.open_now == 0 and source.close_calls == 1


def test_source_identity() -> None:
    path = PurePosixPath("w.bin")
    assert source_identity(ObjectInfo(path, 1, digest="sha256:ABC", etag='"e"')) == "sha256:abc"
    assert source_identity(ObjectInfo(path, 1, etag='"e1"')) == 'etag:"e1"'
    assert source_identity(ObjectInfo(path, 1, etag='W/"weak"')) is None
    assert source_identity(ObjectInfo(path, 1)) is None
    assert source_identity(ObjectInfo(path, 1, etag="é" * 300)).startswith("etag-sha256:")  # type: ignore[union-attr]


# --- pvc: a file that changes is an error -----------------------------------------------------------


async def _read(source: PvcSource, obj: ObjectInfo, offset: int = 0) -> bytes:
    async with source.open(obj, offset=offset) as chunks:
        return b"".join([c async for c in chunks])


async def test_a_pvc_file_changed_after_listing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"a" * 100)
    source = PvcSource(tmp_path)
    (obj,) = [o async for o in source.list()]
    assert await _read(source, obj, 40) == b"a" * 60  # unchanged: resumable at an offset
    (tmp_path / "w.bin").write_bytes(b"b" * 100)  # same size, new mtime
    with pytest.raises(SourceError, match="changed after it was listed"):
        await _read(source, obj)


async def test_a_pvc_file_written_while_it_is_read_is_refused_at_its_end(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"a" * 3000)
    source = PvcSource(tmp_path, chunk_size=1000)
    (obj,) = [o async for o in source.list()]
    with pytest.raises(SourceError, match="changed after it was listed"):
        async with source.open(obj) as chunks:
            async for _ in chunks:
                with (tmp_path / "w.bin").open("r+b") as f:
                    f.write(b"b")  # rewritten in place, same size


# --- the stop watchdog -------------------------------------------------------------------------------


def test_the_stop_watchdog_writes_the_message_and_exits_143(tmp_path: Path) -> None:
    codes: list[int] = []
    watchdog = StopWatchdog(0.01, tmp_path / "termination", exit=codes.append)
    watchdog.arm()
    assert watchdog._timer is not None
    watchdog._timer.join(timeout=10)
    assert codes == [143]
    assert "cleanup did not finish within" in (tmp_path / "termination").read_text()


def test_a_disarmed_watchdog_does_nothing(tmp_path: Path) -> None:
    codes: list[int] = []
    watchdog = StopWatchdog(0.2, tmp_path / "termination", exit=codes.append)
    watchdog.arm()
    watchdog.disarm()
    assert watchdog._timer is not None
    watchdog._timer.join(timeout=10)
    assert codes == [] and not (tmp_path / "termination").exists()
