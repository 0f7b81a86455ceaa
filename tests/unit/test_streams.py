"""CheckedStream (hash, count, checks, error tagging), aiter_file and ChunkReader."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path, PurePosixPath

import pytest

from job.errors import IntegrityError, SourceError, SourceNotFound
from job.model import ObjectInfo
from job.streams import CheckedStream, ChunkReader, aiter_file, describe, spool
from tests.fakes import FailingStream, sha256_of

DATA = b"0123456789abcdefghij"  # 20 bytes


def info(path: str = "model.bin", size: int | None = len(DATA), digest: str | None = None) -> ObjectInfo:
    return ObjectInfo(path=PurePosixPath(path), size=size, digest=digest)


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


async def from_list(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


# --- CheckedStream ---------------------------------------------------------------------------------


async def test_passes_the_same_chunk_objects_and_hashes_and_counts() -> None:
    source = FailingStream(DATA, chunk_size=7)
    seen: list[int] = []
    stream = CheckedStream(info(digest=sha256_of(DATA)), source, on_chunk=seen.append)
    got = await collect(stream)
    assert all(a is b for a, b in zip(got, source.sent, strict=True))
    assert b"".join(got) == DATA
    assert seen == [7, 7, 6]
    assert stream.size == 20
    assert stream.sha256 == sha256_of(DATA)
    assert stream.exhausted
    await stream.finish()  # nothing left to do


async def test_empty_chunks_are_dropped() -> None:
    stream = CheckedStream(info(size=4), from_list([b"", b"ab", b"", b"cd"]))
    assert await collect(stream) == [b"ab", b"cd"]


async def test_zero_byte_file() -> None:
    stream = CheckedStream(info(size=0, digest=sha256_of(b"")), FailingStream(b""))
    assert await collect(stream) == []
    assert stream.sha256 == sha256_of(b"")


@pytest.mark.parametrize("digest", [None, "etag:abc", "md5:0123"])
async def test_no_listed_sha256_means_no_hashing(digest: str | None) -> None:
    # Nothing to check it against, and both destinations cover the bytes with their own digests.
    stream = CheckedStream(info(digest=digest), FailingStream(DATA, chunk_size=7))
    assert b"".join(await collect(stream)) == DATA
    assert stream.sha256 is None
    assert stream.exhausted


async def test_short_read_is_an_integrity_error_naming_file_and_sizes() -> None:
    stream = CheckedStream(info("dir/w.bin", size=25), FailingStream(DATA))
    with pytest.raises(IntegrityError) as caught:
        await collect(stream)
    message = str(caught.value)
    assert "dir/w.bin" in message and "20" in message and "25" in message
    with pytest.raises(IntegrityError):  # the error sticks
        await anext(stream)


async def test_long_read_fails_before_the_extra_bytes_are_passed_on() -> None:
    stream = CheckedStream(info(size=10), FailingStream(DATA, chunk_size=4))
    got: list[bytes] = []
    with pytest.raises(IntegrityError) as caught:
        async for chunk in stream:
            got.append(chunk)
    assert b"".join(got) == DATA[:8]  # the chunk that crossed 10 bytes was never yielded
    assert "model.bin" in str(caught.value) and "10" in str(caught.value)


async def test_listed_digest_is_checked() -> None:
    good = CheckedStream(info(digest=sha256_of(DATA).upper().replace("SHA256", "sha256")), FailingStream(DATA))
    await collect(good)
    bad = CheckedStream(info(digest=sha256_of(b"other")), FailingStream(DATA))
    with pytest.raises(IntegrityError, match="sha256"):
        await collect(bad)


async def test_digest_of_another_algorithm_is_not_checked() -> None:
    stream = CheckedStream(info(digest="md5:0000"), FailingStream(DATA))
    assert b"".join(await collect(stream)) == DATA


async def test_unknown_size_is_not_checked() -> None:
    stream = CheckedStream(info(size=None), FailingStream(DATA))
    assert b"".join(await collect(stream)) == DATA


async def test_library_error_from_the_source_becomes_source_error() -> None:
    cause = ConnectionResetError("reset by peer")
    stream = CheckedStream(info("a/b.bin"), FailingStream(DATA, fail_after=5, error=cause))
    with pytest.raises(SourceError) as caught:
        await collect(stream)
    assert str(caught.value) == "reading a/b.bin from the source: ConnectionResetError: reset by peer"
    assert caught.value.path == "a/b.bin"
    assert caught.value.__cause__ is cause
    assert stream.error is caught.value


async def test_model_sync_errors_from_the_source_pass_unchanged() -> None:
    error = SourceNotFound("reading x: gone")
    stream = CheckedStream(info(), FailingStream(DATA, fail_after=0, error=error))
    with pytest.raises(SourceNotFound) as caught:
        await collect(stream)
    assert caught.value is error


async def test_cancellation_is_not_tagged() -> None:
    stream = CheckedStream(info(), FailingStream(DATA, fail_after=4, error=asyncio.CancelledError()))
    with pytest.raises(asyncio.CancelledError):
        await collect(stream)
    assert stream.error is None


def test_describe_drops_query_strings() -> None:
    exc = RuntimeError("GET https://s3.example/b/k?X-Amz-Signature=secret&X-Amz-Credential=me failed")
    text = describe(exc)
    assert "secret" not in text and "https://s3.example/b/k?<redacted>" in text
    assert describe(TimeoutError()) == "TimeoutError"


async def test_finish_catches_a_destination_that_stopped_early() -> None:
    stream = CheckedStream(info(size=20), FailingStream(DATA, chunk_size=4))
    await anext(stream)
    with pytest.raises(IntegrityError, match="stopped reading after 4 bytes of 20"):
        await stream.finish()


async def test_finish_runs_the_end_checks_when_exactly_size_bytes_were_read() -> None:
    ok = CheckedStream(info(size=20), FailingStream(DATA, chunk_size=10))
    await anext(ok)
    await anext(ok)
    await ok.finish()
    assert ok.exhausted
    bad = CheckedStream(info(size=20, digest=sha256_of(b"x")), FailingStream(DATA, chunk_size=10))
    await anext(bad)
    await anext(bad)
    with pytest.raises(IntegrityError, match="sha256"):
        await bad.finish()


async def test_finish_with_unknown_size_and_more_data() -> None:
    stream = CheckedStream(info(size=None), FailingStream(DATA, chunk_size=4))
    await anext(stream)
    with pytest.raises(IntegrityError, match="before the end of the stream"):
        await stream.finish()


# --- aiter_file --------------------------------------------------------------------------------------


async def test_aiter_file_reads_from_offset_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    assert await collect(aiter_file(path, chunk_size=8)) == [DATA[:8], DATA[8:16], DATA[16:]]
    assert b"".join(await collect(aiter_file(path, chunk_size=8, offset=15))) == DATA[15:]
    assert await collect(aiter_file(path, offset=100)) == []


async def test_aiter_file_closes_early_and_rejects_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    async with aclosing(aiter_file(path, chunk_size=4)) as chunks:
        assert await anext(chunks) == DATA[:4]
    with pytest.raises(ValueError):
        await anext(aiter_file(path, chunk_size=0))
    with pytest.raises(FileNotFoundError):
        await anext(aiter_file(tmp_path / "missing"))


async def test_aiter_file_survives_cancellation_mid_read(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(DATA * 1000)

    async def consume() -> None:
        async with aclosing(aiter_file(path, chunk_size=1)) as chunks:
            async for _ in chunks:
                pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_spool_writes_the_stream_and_removes_the_file_when_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "spooled"
    assert await spool(from_list([b"ab", b"", b"cde"]), path.open("wb"), path) == 5
    assert path.read_bytes() == b"abcde"
    broken = tmp_path / "broken"
    with pytest.raises(SourceError):
        await spool(
            FailingStream(DATA, chunk_size=4, fail_after=8, error=SourceError("gone")), broken.open("wb"), broken
        )
    assert not broken.exists()


# --- ChunkReader -------------------------------------------------------------------------------------


async def test_chunk_reader_cuts_exact_parts_and_splits_only_at_boundaries() -> None:
    chunks = [b"abcd", b"efgh", b"ij"]
    reader = ChunkReader(from_list(chunks))
    first = [c async for c in reader.iter_part(4)]
    assert first[0] is chunks[0]  # a chunk that fits passes through as it is
    assert await reader.read(6) == b"efghij"
    assert await reader.at_eof()
    assert await reader.read(4) == b""
    assert reader.consumed == 10


async def test_chunk_reader_read_exactly() -> None:
    reader = ChunkReader(from_list([b"abc", b"", b"defg"]))
    assert await reader.read_exactly(2) == b"ab"
    assert not await reader.at_eof()
    assert await reader.read_exactly(3) == b"cde"
    with pytest.raises(asyncio.IncompleteReadError) as caught:
        await reader.read_exactly(5)
    assert caught.value.partial == b"fg"
