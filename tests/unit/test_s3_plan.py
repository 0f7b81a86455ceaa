"""Pure logic of the S3 backends: part sizes, key mapping, part cutting, error mapping. No server."""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import pytest
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from pydantic import SecretStr

from job.backends import make_destination, make_source
from job.config import JobConfig, S3Location
from job.destinations.s3 import _CHECKSUMS, S3Destination, destination_key
from job.errors import (
    DestinationAuthError,
    DestinationError,
    SourceAuthError,
    SourceError,
    SourceNotFound,
    UploadRejected,
)
from job.s3.client import S3Connection, client_config, endpoint_url, s3_uri
from job.s3.errors import map_s3_error, redact
from job.s3.parts import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    MiB,
    Part,
    PartBody,
    choose_part_size,
    grow_part_size,
    read_part,
)
from job.settings.names import Intent
from job.settings.registry import RegistryConfig
from job.sources.s3 import S3Source, _as_prefix
from job.streams import ChunkReader

GiB = 1024 * MiB
TiB = 1024 * GiB


# --- part sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "configured", "expected"),
    [
        (0, None, 8 * MiB),
        (1, None, 8 * MiB),
        (5 * MiB, None, 8 * MiB),
        (8 * MiB * MAX_PARTS, None, 8 * MiB),  # exactly 10,000 parts of 8 MiB still fit
        (8 * MiB * MAX_PARTS + 1, None, 9 * MiB),
        (100 * GiB, None, 11 * MiB),  # 100 GiB / 10,000 = 10.24 MiB, rounded up to whole MiB
        (5 * TiB, None, 525 * MiB),  # S3's largest object
        (None, None, 8 * MiB),  # unknown: the default, grown while uploading
        (100 * GiB, 64 * MiB, 64 * MiB),  # a configured size that fits is kept
        (100 * GiB, 5 * MiB, 11 * MiB),  # ...and grown when it would need > 10,000 parts
        (1, 1 * MiB, MIN_PART_SIZE),  # never below S3's minimum
        (50 * TiB, None, MAX_PART_SIZE),  # never above S3's maximum (S3 would refuse such an object)
    ],
)
def test_part_size_choice(size: int | None, configured: int | None, expected: int) -> None:
    assert choose_part_size(size, configured) == expected


@pytest.mark.parametrize("size", [1, 5 * MiB, 100 * GiB, 1 * TiB, 5 * TiB])
def test_part_size_fits_s3_limits(size: int) -> None:
    part = choose_part_size(size)
    assert MIN_PART_SIZE <= part <= MAX_PART_SIZE
    assert -(-size // part) <= MAX_PARTS
    assert part % MiB == 0


def test_unknown_size_parts_grow_every_thousand_parts() -> None:
    part, total = 8 * MiB, 0
    for done in range(MAX_PARTS):
        part = grow_part_size(part, done)
        total += part
    assert grow_part_size(8 * MiB, 999) == 8 * MiB
    assert grow_part_size(8 * MiB, 1000) == 16 * MiB
    assert grow_part_size(MAX_PART_SIZE, 2000) == MAX_PART_SIZE
    assert total > 5 * TiB  # 10,000 growing parts hold S3's largest object


# --- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "path", "key"),
    [
        ("models/m", "config.json", "models/m/config.json"),
        ("models/m/", "sub/config.json", "models/m/sub/config.json"),
        ("", "config.json", "config.json"),  # bucket root
        ("/", "a/b.bin", "a/b.bin"),
        ("models/m//", PurePosixPath("x.bin"), "models/m/x.bin"),
    ],
)
def test_destination_key(prefix: str, path: str | PurePosixPath, key: str) -> None:
    assert destination_key(prefix, path) == key


@pytest.mark.parametrize(
    ("key", "prefix"), [("models/m", "models/m/"), ("models/m/", "models/m/"), ("", ""), ("/", ""), ("m//", "m/")]
)
def test_source_prefix_always_ends_with_slash(key: str, prefix: str) -> None:
    assert _as_prefix(key) == prefix


def location(key: str = "models/m/", endpoint: str | None = "http://127.0.0.1:9000") -> S3Location:
    return S3Location(
        bucket="bkt",
        key=key,
        region=None,
        endpoint=endpoint,
        access_key_id=SecretStr("AKIDEXAMPLE"),
        secret_access_key=SecretStr("s3cr3t-value"),
    )


def job_config(source: object, destination: object, *, part_size: int | None = None) -> JobConfig:
    return JobConfig(
        source=source,  # type: ignore[arg-type]
        destination=destination,  # type: ignore[arg-type]
        registry=RegistryConfig(
            base_url="http://127.0.0.1:1", token=None, token_file=None, verify=False, author=None, log_level="INFO"
        ),
        intent=Intent.UPDATE_ARTIFACT,
        model_id=None,
        model_version_id=None,
        model_artifact_id=None,
        metadata_path=None,
        job_id=None,
        storage_path=Path("/tmp"),
        parallel_files=3,
        max_files=100_000,
        parallel_parts=5,
        part_size=part_size,
        part_memory=40 * MiB,
        termination_message_path=Path("/dev/null"),
    )


async def test_the_factories_read_each_side_and_the_engine_limits() -> None:
    config = job_config(location("models/m"), location("out/"), part_size=16 * MiB)
    source = make_source(config)
    destination = make_destination(config)
    assert isinstance(source, S3Source) and isinstance(destination, S3Destination)
    assert source.key == "models/m"
    assert (destination.prefix, destination.parallel_parts, destination.part_size) == ("out", 5, 16 * MiB)
    assert destination.part_memory == 40 * MiB
    assert (destination.checksum, destination.checksum_single) == ("CRC32", "SHA256")
    assert source._conn.max_pool_connections == destination._conn.max_pool_connections == 15  # files x parts
    await source.close()
    await destination.close()


def test_destination_uri_and_keys() -> None:
    dest = S3Destination(location("models/m/"))
    assert dest.uri == "s3://bkt/models/m/"
    assert dest.key_for(PurePosixPath("sub/config.json")) == "models/m/sub/config.json"
    assert S3Destination(location("")).uri == "s3://bkt/"
    assert S3Destination(location("models/m")).uri == "s3://bkt/models/m/"  # a tree, never a bare prefix
    assert s3_uri("b", "") == "s3://b"


def test_client_config() -> None:
    config = client_config(location(), max_pool_connections=64)
    assert config.max_pool_connections == 64
    assert config.s3["addressing_style"] == "path"
    assert config.s3["payload_signing_enabled"] is False
    assert config.request_checksum_calculation == "when_required"
    assert config.connect_timeout > 0 and config.read_timeout > 0
    aws = client_config(location(endpoint=None), max_pool_connections=1)
    assert "addressing_style" not in aws.s3
    assert aws.max_pool_connections >= 10


@pytest.mark.parametrize(
    ("raw", "url"),
    [(None, None), ("", None), ("http://h:1/", "http://h:1"), ("minio:9000", "https://minio:9000")],
)
def test_endpoint_url(raw: str | None, url: str | None) -> None:
    assert endpoint_url(raw) == url


# --- parts --------------------------------------------------------------------------------------


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("algorithm", ["SHA256", "CRC32"])
@pytest.mark.parametrize(("length", "chunk", "part"), [(0, 3, 4), (10, 3, 4), (12, 4, 4), (7, 10, 3)])
async def test_part_reader_cuts_exact_parts(algorithm: str, length: int, chunk: int, part: int) -> None:
    data = bytes(range(256)) * 4
    data = data[:length]
    new_hash, _ = _CHECKSUMS[algorithm]
    reader = ChunkReader(chunks_of(data, chunk))
    parts: list[bytes] = []
    while True:
        got = await read_part(reader, part, new_hash)
        body = b"".join(got.chunks)
        assert got.size == len(body)
        expected = hashlib.sha256(body).digest() if algorithm == "SHA256" else zlib.crc32(body).to_bytes(4, "big")
        assert base64.b64decode(got.checksum) == expected
        parts.append(body)
        if await reader.at_eof():
            break
    assert b"".join(parts) == data
    assert all(len(p) == part for p in parts[:-1])
    assert reader.consumed == length


async def test_part_reader_passes_stream_errors_through() -> None:
    class Boom(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield b"abc"
        raise Boom("source broke")

    with pytest.raises(Boom):
        await read_part(ChunkReader(failing()), 10, hashlib.sha256)


# --- errors -------------------------------------------------------------------------------------


def client_error(code: str, status: int, message: str = "", op: str = "GetObject") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "REQ123"},
        },
        op,
    )


@pytest.mark.parametrize(
    ("exc", "side", "cls"),
    [
        (client_error("NoSuchBucket", 404, "The specified bucket does not exist"), "source", SourceNotFound),
        (client_error("NoSuchKey", 404), "source", SourceNotFound),
        (client_error("404", 404, "Not Found", "HeadObject"), "source", SourceNotFound),
        (client_error("403", 403, "Forbidden", "HeadObject"), "source", SourceAuthError),
        (client_error("InvalidAccessKeyId", 403, "no such key id"), "source", SourceAuthError),
        (client_error("SignatureDoesNotMatch", 403, "bad sig"), "source", SourceAuthError),
        (client_error("ExpiredToken", 400, "expired"), "source", SourceAuthError),
        (client_error("PreconditionFailed", 412, "pre-conditions"), "source", SourceError),
        (client_error("InternalError", 500, "oops"), "source", SourceError),
        (client_error("AccessDenied", 403, "denied", "PutObject"), "destination", DestinationAuthError),
        (client_error("SignatureDoesNotMatch", 403, "bad sig", "PutObject"), "destination", DestinationAuthError),
        (client_error("NoSuchBucket", 404, "no bucket", "PutObject"), "destination", UploadRejected),
        (client_error("BadDigest", 400, "mismatch", "UploadPart"), "destination", UploadRejected),
        (client_error("SlowDown", 503, "slow", "UploadPart"), "destination", UploadRejected),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b"), "source", SourceError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b"), "destination", DestinationError),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1/b"), "destination", DestinationError),
        (NoCredentialsError(), "source", SourceAuthError),
        (NoCredentialsError(), "destination", DestinationAuthError),
        (TimeoutError(), "source", SourceError),
        (ConnectionResetError("reset"), "destination", DestinationError),
    ],
)
def test_error_mapping(exc: Exception, side: str, cls: type[Exception]) -> None:
    error = map_s3_error(exc, side=side, doing="reading", target="s3://bkt/models/m/a.bin", path="a.bin")  # type: ignore[arg-type]
    assert type(error) is cls
    text = str(error)
    assert text.startswith("reading s3://bkt/models/m/a.bin: ")
    assert "\n" not in text
    assert error.path == "a.bin"  # type: ignore[attr-defined]
    if isinstance(exc, ClientError):
        assert "REQ123" in text


def test_error_details() -> None:
    rejected = map_s3_error(
        client_error("SlowDown", 503, "Please reduce your request rate.", "UploadPart"),
        side="destination",
        doing="uploading part 3 of",
        target="s3://bkt/m/a.bin",
    )
    assert isinstance(rejected, UploadRejected)
    assert (rejected.status, rejected.code, rejected.detail) == (503, "SlowDown", "Please reduce your request rate.")
    assert str(rejected) == (
        "uploading part 3 of s3://bkt/m/a.bin: SlowDown (HTTP 503): Please reduce your request rate. "
        "[request id REQ123]"
    )
    changed = map_s3_error(client_error("PreconditionFailed", 412), side="source", doing="reading", target="s3://b/k")
    assert "changed after it was listed" in str(changed)
    head = map_s3_error(client_error("403", 403, "Forbidden"), side="source", doing="looking up", target="s3://b/k")
    assert "HTTP 403: Forbidden" in str(head)


def test_error_messages_never_carry_secrets_or_query_strings() -> None:
    conn = S3Connection(location(), side="source")
    exc = client_error("InvalidAccessKeyId", 403, "key AKIDEXAMPLE with secret s3cr3t-value is unknown")
    text = str(conn.error(exc, "listing", "s3://bkt/models/m/"))
    assert "AKIDEXAMPLE" not in text and "s3cr3t-value" not in text
    presigned = EndpointConnectionError(endpoint_url="https://h/b/k?X-Amz-Signature=abc&X-Amz-Credential=AKID")
    text = str(conn.error(presigned, "reading", "s3://b/k"))
    assert "X-Amz-Signature" not in text and "abc" not in text
    assert redact("see http://h/p?sig=1 now", ["zz"]) == "see http://h/p?<redacted> now"
    assert redact("listing s3://b/p", ["s"]) == "listing s3://b/p"  # too short to be a real key


async def test_a_client_that_cannot_be_built_is_a_mapped_error() -> None:
    conn = S3Connection(location(endpoint="http://bad host:9/"), side="destination")
    with pytest.raises(DestinationError, match=r"^creating an S3 client for s3://bkt: ValueError"):
        await conn.client()
    await conn.close()


def test_model_sync_errors_pass_through() -> None:
    original = SourceNotFound("no objects under s3://b/p/")
    assert map_s3_error(original, side="source", doing="x", target="y") is original


async def test_part_body_sends_the_chunks_as_they_are() -> None:
    chunks = [b"abc", b"defgh", b"ij"]
    body = PartBody(Part(chunks, 10, "x"))
    assert len(body) == 10
    sent = [piece async for piece in body]
    assert all(a is b for a, b in zip(sent, chunks, strict=True))  # no copy, no join
    assert body.tell() == 10
    body.seek(0)  # botocore rewinds before a retry
    assert body.read(4) == b"abcd" and body.tell() == 4
    assert b"".join([bytes(p) async for p in body]) == b"efghij"
    body.seek(-3, 2)
    assert body.read() == b"hij" and body.read() == b""


async def test_a_listing_that_never_ends_is_cut_at_the_page_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint that always hands out a new continuation token: the listing stops with one line, not memory."""
    from job.sources import s3 as s3_source

    monkeypatch.setattr(s3_source, "MAX_PAGES", 5)
    source = S3Source(location("models/m/"))
    pages = iter(range(10_000))

    async def endless(operation: str, doing: str, target: str, **kwargs: object) -> dict[str, object]:
        if operation == "head_object":
            raise client_error("404", 404, op="HeadObject")
        n = next(pages)
        return {"Contents": [{"Key": f"models/m/f{n}", "Size": 1}], "IsTruncated": True,
                "NextContinuationToken": f"t{n}"}  # fmt: skip

    monkeypatch.setattr(source._conn, "call", endless)
    with pytest.raises(SourceError, match=r"listing s3://bkt/models/m/: more than 5 pages of objects"):
        _ = [o async for o in source.list()]
    await source.close()
