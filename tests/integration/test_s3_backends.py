"""S3Source and S3Destination against real servers: SeaweedFS (checks keys and checksums) and moto.

Models round-trip through the real engine (``job.engine.transfer.transfer``); the other tests drive the
backends directly. Part size is 5 MiB (S3's minimum) so multipart paths run on files of 10-17 MiB.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import zlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import PurePosixPath
from typing import Any

import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from pydantic import SecretStr

from job.config import S3Location
from job.destinations import s3 as s3_destination
from job.destinations.s3 import S3Destination
from job.engine.transfer import TransferSettings, transfer
from job.errors import DestinationAuthError, SourceAuthError, SourceError, SourceNotFound, UploadRejected
from job.model import ObjectInfo
from job.s3.parts import MiB
from job.sources.s3 import S3Source
from tests.fakes import FailingStream
from tests.servers.s3 import S3Server, fresh_bucket

pytestmark = pytest.mark.integration

PART = 5 * MiB


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


MODEL: dict[str, bytes] = {
    "config.json": b'{"model_type": "top"}',
    "sub/config.json": b'{"model_type": "nested"}',
    "sub/deeper/tokenizer.json": b'{"vocab": {}}' * 100,
    "empty.txt": b"",
    "weights/a.safetensors": payload(12 * MiB + 123, 1),  # 3 parts, the last one short
    "weights/b.safetensors": payload(10 * MiB, 2),  # exactly 2 parts: no empty third part
    "weights/c.bin": payload(PART - 1, 3),  # just under one part: one PutObject
}


def s3_location(server: S3Server, bucket: str, key: str, *, secret: str | None = None) -> S3Location:
    return S3Location(
        bucket=bucket,
        key=key,
        region=None,
        endpoint=server.endpoint_url,
        access_key_id=SecretStr(server.access_key),
        secret_access_key=SecretStr(secret or server.secret_key),
    )


def upload_model(server: S3Server, bucket: str, prefix: str, files: dict[str, bytes] = MODEL) -> None:
    client = server.client()
    for path, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}{path}", Body=data)
    client.put_object(Bucket=bucket, Key=f"{prefix}weights/", Body=b"")  # a folder marker: not a file


def read_tree(server: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    client = server.client()
    tree: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            tree[item["Key"][len(prefix) :]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return tree


def open_uploads(server: S3Server, bucket: str) -> list[Any]:
    return list(server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


async def read_all(source: S3Source, obj: ObjectInfo, offset: int = 0) -> bytes:
    async with source.open(obj, offset=offset) as chunks:
        return b"".join([chunk async for chunk in chunks])


async def listing(source: S3Source) -> dict[str, ObjectInfo]:
    async with aclosing(source.list()) as objects:  # type: ignore[type-var]
        return {str(obj.path): obj async for obj in objects}


@pytest.fixture
def weed(seaweedfs_s3: S3Server) -> S3Server:
    return seaweedfs_s3


# --- whole models through the engine --------------------------------------------------------------


@pytest.mark.parametrize("target", ["seaweedfs", "moto"])
async def test_model_round_trips_through_the_engine(weed: S3Server, moto_s3: S3Server, target: str) -> None:
    dst_server = weed if target == "seaweedfs" else moto_s3
    src_bucket, dst_bucket = fresh_bucket(weed, "src"), fresh_bucket(dst_server, "dst")
    upload_model(weed, src_bucket, "models/m/")
    upload_model(weed, src_bucket, "models/mx/", {"config.json": b"lookalike"})
    source = S3Source(s3_location(weed, src_bucket, "models/m"))
    destination = S3Destination(s3_location(dst_server, dst_bucket, "copies/m/"), parallel_parts=2, part_size=PART)

    result = await transfer(source, destination, TransferSettings(parallel_files=2))

    assert result.committed.uri == f"s3://{dst_bucket}/copies/m/"
    assert result.committed.digest is None
    assert read_tree(dst_server, dst_bucket, "copies/m/") == MODEL
    by_path = {str(u.obj.path): u for u in result.uploaded}
    for path, data in MODEL.items():
        assert by_path[path].size == len(data)
        assert by_path[path].sha256 is None  # no sha256 listed: the parts' checksums cover the bytes
        assert by_path[path].detail.key == f"copies/m/{path}"  # type: ignore[attr-defined]
    assert by_path["weights/a.safetensors"].detail.etag.strip('"').endswith("-3")  # type: ignore[attr-defined]  # multipart, 3 parts
    assert by_path["weights/b.safetensors"].detail.etag.strip('"').endswith("-2")  # type: ignore[attr-defined]
    assert "-" not in by_path["weights/c.bin"].detail.etag  # type: ignore[attr-defined]  # one PutObject
    assert open_uploads(dst_server, dst_bucket) == []


async def test_parts_of_all_files_together_stay_within_the_part_memory(weed: S3Server) -> None:
    # Four multipart files and small ones in flight at once, 2 parts each allowed, but room for only three
    # 5 MiB parts in all: the bodies in flight never exceed it, small files take only their size, and the
    # budget is whole again at the end.
    src_bucket, dst_bucket = fresh_bucket(weed, "src"), fresh_bucket(weed, "dst")
    files = {f"w{i}.bin": payload(3 * PART + i, 20 + i) for i in range(4)}
    files.update({f"s{i}.txt": b"x" * (i + 1) for i in range(8)})
    upload_model(weed, src_bucket, "m/", files)
    source = S3Source(s3_location(weed, src_bucket, "m/"))
    destination = S3Destination(
        s3_location(weed, dst_bucket, "out/"), parallel_parts=2, part_size=PART, part_memory=3 * PART
    )
    client = await destination._conn.client()
    in_flight, peak = 0, 0

    def counting(call: Any) -> Any:
        async def counted(**kwargs: Any) -> Any:
            nonlocal in_flight, peak
            size = len(kwargs["Body"])
            in_flight += size
            peak = max(peak, in_flight)
            try:
                return await call(**kwargs)
            finally:
                in_flight -= size

        return counted

    client.upload_part = counting(client.upload_part)
    client.put_object = counting(client.put_object)
    await transfer(source, destination, TransferSettings(parallel_files=6))
    assert read_tree(weed, dst_bucket, "out/") == files
    assert 2 * PART < peak <= 3 * PART  # the budget was used, and not exceeded
    assert destination._budget.held == 0


async def test_single_object_key_is_a_one_file_model(weed: S3Server) -> None:
    bucket = fresh_bucket(weed)
    upload_model(weed, bucket, "models/m/")
    source = S3Source(s3_location(weed, bucket, "models/m/weights/a.safetensors"))
    destination = S3Destination(s3_location(weed, bucket, "single"), part_size=PART)
    result = await transfer(source, destination, TransferSettings())
    assert [str(u.obj.path) for u in result.uploaded] == ["a.safetensors"]
    assert read_tree(weed, bucket, "single/") == {"a.safetensors": MODEL["weights/a.safetensors"]}


@pytest.mark.parametrize("key", ["look/m", "look/m/"])
async def test_prefix_does_not_match_a_lookalike(weed: S3Server, key: str) -> None:
    bucket = fresh_bucket(weed)
    upload_model(weed, bucket, "look/m/", {"a.json": b"a", "sub/b.json": b"b"})
    upload_model(weed, bucket, "look/mx/", {"c.json": b"c"})
    weed.client().put_object(Bucket=bucket, Key="look/m.json", Body=b"sibling file")
    source = S3Source(s3_location(weed, bucket, key))
    try:
        objects = await listing(source)
    finally:
        await source.close()
    assert sorted(objects) == ["a.json", "sub/b.json"]
    assert objects["sub/b.json"].size == 1 and objects["sub/b.json"].etag


@pytest.mark.parametrize("key", ["nothing/here/", "nothing/here"])
async def test_empty_prefix_is_not_found(weed: S3Server, key: str) -> None:
    bucket = fresh_bucket(weed)
    source = S3Source(s3_location(weed, bucket, key))
    with pytest.raises(SourceNotFound) as caught:
        await listing(source)
    await source.close()
    assert str(caught.value) == f"no objects under s3://{bucket}/nothing/here/"


async def test_missing_bucket_is_not_found(weed: S3Server) -> None:
    source = S3Source(s3_location(weed, "no-such-bucket-here", "models/m/"))
    with pytest.raises(SourceNotFound, match="no-such-bucket-here.*the bucket does not exist"):
        await listing(source)
    await source.close()


async def test_missing_destination_bucket_is_rejected(weed: S3Server) -> None:
    destination = S3Destination(s3_location(weed, "no-such-bucket-here", "out"))
    with pytest.raises(UploadRejected) as caught:
        await destination.put(ObjectInfo(PurePosixPath("a.json"), 1), FailingStream(b"a"))
    await destination.close()
    assert (caught.value.status, caught.value.code) == (404, "NoSuchBucket")
    assert str(caught.value).startswith("uploading s3://no-such-bucket-here/out/a.json: the bucket does not exist")


async def test_unsafe_key_is_refused(moto_s3: S3Server) -> None:
    # SeaweedFS refuses such keys on upload (InvalidRequest); moto stores them as they are, like AWS.
    bucket = fresh_bucket(moto_s3)
    client = moto_s3.client()
    client.put_object(Bucket=bucket, Key="m/ok.json", Body=b"1")
    client.put_object(Bucket=bucket, Key="m/x/../../escape.json", Body=b"2")
    source = S3Source(s3_location(moto_s3, bucket, "m/"))
    with pytest.raises(SourceError, match=r"'\.\.' would escape"):
        await listing(source)
    await source.close()


# --- errors -----------------------------------------------------------------------------------------


async def test_wrong_credentials_are_auth_errors_without_secrets(weed: S3Server) -> None:
    bucket = fresh_bucket(weed)
    upload_model(weed, bucket, "m/", {"a.json": b"a"})
    wrong = "wrong-secret-value-123"
    for key in ("m/", "m/a.json"):  # listing, and the HEAD of a single object
        source = S3Source(s3_location(weed, bucket, key, secret=wrong))
        with pytest.raises(SourceAuthError) as caught:
            await listing(source)
        await source.close()
        assert wrong not in str(caught.value) and weed.secret_key not in str(caught.value)
        assert f"s3://{bucket}/m" in str(caught.value)

    destination = S3Destination(s3_location(weed, bucket, "out", secret=wrong))
    with pytest.raises(DestinationAuthError) as denied:
        await destination.put(ObjectInfo(PurePosixPath("a.json"), 1), FailingStream(b"a"))
    await destination.close()
    assert wrong not in str(denied.value)
    assert str(denied.value).startswith(f"uploading s3://{bucket}/out/a.json: access denied")


async def test_each_side_signs_with_its_own_keys(weed: S3Server) -> None:
    # Both sides' clients come from one boto session: the source's good keys must not reach the
    # destination, whose wrong secret is refused while the source reads fine.
    bucket = fresh_bucket(weed)
    upload_model(weed, bucket, "m/", {"a.json": b"a"})
    source = S3Source(s3_location(weed, bucket, "m/"))
    destination = S3Destination(s3_location(weed, bucket, "out", secret="wrong-secret-value-456"))
    with pytest.raises(DestinationAuthError):
        await transfer(source, destination, TransferSettings())  # the source listed, then the put was denied
    assert read_tree(weed, bucket, "out/") == {}
    # And the other way round, in the same process: good destination keys, a wrong source secret.
    source = S3Source(s3_location(weed, bucket, "m/", secret="wrong-secret-value-789"))
    with pytest.raises(SourceAuthError):
        await transfer(source, S3Destination(s3_location(weed, bucket, "out")), TransferSettings())


async def test_object_changed_after_listing_is_an_error(weed: S3Server) -> None:
    bucket = fresh_bucket(weed)
    upload_model(weed, bucket, "m/", {"w.bin": payload(11 * MiB, 4)})
    source = S3Source(s3_location(weed, bucket, "m/"))
    obj = (await listing(source))["w.bin"]
    weed.client().put_object(Bucket=bucket, Key="m/w.bin", Body=payload(11 * MiB, 5))
    with pytest.raises(SourceError, match="changed after it was listed"):
        await read_all(source, obj)
    await source.close()


async def test_failing_stream_aborts_the_multipart_upload(weed: S3Server) -> None:
    bucket = fresh_bucket(weed)
    destination = S3Destination(s3_location(weed, bucket, "out"), parallel_parts=2, part_size=PART)
    broken = ConnectionResetError("source went away")
    stream = FailingStream(payload(16 * MiB, 6), chunk_size=MiB, fail_after=12 * MiB, error=broken)
    with pytest.raises(ConnectionResetError) as caught:
        await destination.put(ObjectInfo(PurePosixPath("big.bin"), 16 * MiB), stream)
    assert caught.value is broken  # the stream's own error, unchanged
    assert open_uploads(weed, bucket) == []
    assert read_tree(weed, bucket, "out/") == {}
    await destination.abort()  # nothing left to do, and it must not raise
    await destination.close()


async def test_abort_cleans_uploads_put_could_not_abort(weed: S3Server) -> None:
    bucket = fresh_bucket(weed)
    destination = S3Destination(s3_location(weed, bucket, "out"), part_size=PART)
    client = await destination._conn.client()
    real_abort = client.abort_multipart_upload

    async def flaky_abort(**kwargs: Any) -> Any:
        # Fails once, then works. Not a retryable error (a reset would be retried within the put itself).
        client.abort_multipart_upload = real_abort
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not now"}}, "AbortMultipartUpload")

    client.abort_multipart_upload = flaky_abort
    stream = FailingStream(payload(12 * MiB, 7), chunk_size=MiB, fail_after=11 * MiB)
    with pytest.raises(ConnectionResetError):
        await destination.put(ObjectInfo(PurePosixPath("big.bin"), 12 * MiB), stream)
    assert len(open_uploads(weed, bucket)) == 1
    await destination.abort()
    assert open_uploads(weed, bucket) == []
    await destination.close()


async def test_cancelled_put_aborts_its_upload(weed: S3Server) -> None:
    bucket = fresh_bucket(weed)
    destination = S3Destination(s3_location(weed, bucket, "out"), part_size=PART)
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield payload(6 * MiB, 8)  # more than one part: the upload exists
        started.set()
        await asyncio.Event().wait()  # never set: stalls until cancelled
        yield b""

    task = asyncio.create_task(destination.put(ObjectInfo(PurePosixPath("big.bin"), 20 * MiB), stalls()))
    async with asyncio.timeout(30):
        await started.wait()
    assert len(open_uploads(weed, bucket)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await destination.abort()
    assert open_uploads(weed, bucket) == []
    await destination.close()


class WrongSha256:
    def update(self, data: bytes | memoryview) -> None:
        pass

    def digest(self) -> bytes:
        return hashlib.sha256(b"not the body").digest()


class WrongCrc32(WrongSha256):
    def digest(self) -> bytes:
        return zlib.crc32(b"not the body").to_bytes(4, "big")


@pytest.fixture
def wrong_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every part and object goes up with a checksum of other bytes."""
    monkeypatch.setitem(s3_destination._CHECKSUMS, "SHA256", (WrongSha256, "ChecksumSHA256"))
    monkeypatch.setitem(s3_destination._CHECKSUMS, "CRC32", (WrongCrc32, "ChecksumCRC32"))


@pytest.mark.usefixtures("wrong_checksums")
@pytest.mark.parametrize("size", [MiB, 11 * MiB])
async def test_server_rejects_a_wrong_checksum(weed: S3Server, size: int) -> None:
    """SeaweedFS verifies x-amz-checksum-sha256 on PutObject and -crc32 on UploadPart (moto does not)."""
    bucket = fresh_bucket(weed)
    destination = S3Destination(s3_location(weed, bucket, "out"), part_size=PART)
    with pytest.raises(UploadRejected) as caught:
        await destination.put(ObjectInfo(PurePosixPath("x.bin"), size), FailingStream(payload(size, 9), chunk_size=MiB))
    await destination.close()
    assert (caught.value.status, caught.value.code) == (400, "BadDigest")
    assert open_uploads(weed, bucket) == []
    assert read_tree(weed, bucket, "out/") == {}


@pytest.mark.usefixtures("wrong_checksums")
async def test_a_refused_part_stops_the_reading(weed: S3Server) -> None:
    bucket = fresh_bucket(weed)
    destination = S3Destination(s3_location(weed, bucket, "out"), parallel_parts=1, part_size=PART)
    stream = FailingStream(payload(40 * MiB, 14), chunk_size=MiB)
    with pytest.raises(UploadRejected, match="uploading part 1 of"):
        await destination.put(ObjectInfo(PurePosixPath("x.bin"), 40 * MiB), stream)
    await destination.close()
    assert stream.position == PART + MiB  # part 1 and the chunk read ahead to see it was not the last
    assert open_uploads(weed, bucket) == []
    assert destination._budget.held == 0  # a failed file gives its room back: the next try is not starved


# --- reading and writing details --------------------------------------------------------------------


async def test_reads_from_any_offset_give_the_same_bytes(weed: S3Server) -> None:
    bucket = fresh_bucket(weed)
    data = payload(17 * MiB + 5, 10)
    upload_model(weed, bucket, "m/", {"w.bin": data})
    plain = S3Source(s3_location(weed, bucket, "m/"))
    obj = (await listing(plain))["w.bin"]
    for offset in (0, 1, PART, 7 * MiB + 3, len(data) - 1, len(data)):
        assert await read_all(plain, obj, offset) == data[offset:]
    await plain.close()


async def test_stopping_early_closes_the_streams(weed: S3Server) -> None:
    bucket = fresh_bucket(weed)
    upload_model(weed, bucket, "m/", {"w.bin": payload(12 * MiB, 11)})
    source = S3Source(s3_location(weed, bucket, "m/"))
    obj = (await listing(source))["w.bin"]
    async with source.open(obj) as chunks:
        first = await anext(chunks)
    assert first
    await source.close()


async def test_unknown_size_and_bounded_parts(weed: S3Server) -> None:
    bucket = fresh_bucket(weed)
    destination = S3Destination(s3_location(weed, bucket, ""), parallel_parts=2, part_size=PART)
    client = await destination._conn.client()
    real_upload_part = client.upload_part
    in_flight, peak = 0, 0

    async def counting_upload_part(**kwargs: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await real_upload_part(**kwargs)
        finally:
            in_flight -= 1

    client.upload_part = counting_upload_part
    files = {"big.bin": payload(23 * MiB + 1, 12), "small.bin": b"tiny", "zero.bin": b""}
    for name, data in files.items():
        uploaded = await destination.put(ObjectInfo(PurePosixPath(name), None), FailingStream(data, chunk_size=MiB))
        assert uploaded.size == len(data) and uploaded.sha256 is None
    assert 1 <= peak <= 2
    assert await destination.commit([]) == await destination.commit([])  # nothing to do, safe to repeat
    await destination.close()
    assert read_tree(weed, bucket, "") == files
    source = S3Source(s3_location(weed, bucket, "big.bin"))  # what we wrote in parts reads back, If-Match on
    obj = (await listing(source))["big.bin"]  # a multipart ETag included
    assert obj.etag and obj.etag.strip('"').endswith("-5")
    assert await read_all(source, obj) == files["big.bin"]
    await source.close()


async def test_default_checksums_crc32_parts_sha256_single_files(weed: S3Server) -> None:
    # Multipart parts carry CRC32 (the server verifies it), a file listed to fit in one part SHA256,
    # which the object keeps; a small file of unknown size is sent as it would be in parts: CRC32.
    bucket = fresh_bucket(weed)
    destination = S3Destination(s3_location(weed, bucket, "crc"), part_size=PART)
    data = payload(11 * MiB, 13)
    await destination.put(ObjectInfo(PurePosixPath("w.bin"), len(data)), FailingStream(data, chunk_size=MiB))
    await destination.put(ObjectInfo(PurePosixPath("s.bin"), 3), FailingStream(b"abc"))
    await destination.put(ObjectInfo(PurePosixPath("u.bin"), None), FailingStream(b"abc"))
    await destination.close()
    client = weed.client()
    head = client.head_object(Bucket=bucket, Key="crc/s.bin", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"abc").digest()).decode()
    assert head["Metadata"]["model-sync-sha256"] == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    head = client.head_object(Bucket=bucket, Key="crc/u.bin", ChecksumMode="ENABLED")
    assert base64.b64decode(head["ChecksumCRC32"]) == (0x352441C2).to_bytes(4, "big")  # crc32(b"abc")
    assert read_tree(weed, bucket, "crc/") == {"s.bin": b"abc", "u.bin": b"abc", "w.bin": data}
