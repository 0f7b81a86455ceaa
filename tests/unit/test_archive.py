"""Archive parsing, safety and the shared tar pass (respx serves the bytes, with or without ranges)."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import random
import struct
import tarfile
import zipfile
import zlib
from contextlib import AsyncExitStack
from pathlib import Path, PurePosixPath

import httpx
import pytest
import respx

from job.errors import IntegrityError, SourceError
from job.formats.gzip import PIECE as OUT_LIMIT
from job.http.client import HttpClient
from job.http.settings import HttpSettings
from job.model import ObjectInfo
from job.sources.archive import ArchiveSource, archive_kind, archive_kind_from_content_type
from tests.servers.http import range_responder, tar_bytes, tar_entry, tar_with, zip_bytes

FAST = HttpSettings(initial_wait=0.001, max_wait=0.01)
rng = random.Random(7)
FILES = {
    "config.json": b'{"a": 1}',
    "weights/w.bin": rng.randbytes(300_000),
    "weights/empty.bin": b"",
    "deep/er/still/vocab.txt": b"tok\n" * 1000,
}


def source(url: str, kind: str, tmp_path: Path) -> ArchiveSource:
    return ArchiveSource(HttpClient(settings=FAST), url, kind, storage_path=tmp_path)  # type: ignore[arg-type]


async def unpack(src: ArchiveSource) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        for obj in [o async for o in src.list()]:
            async with src.open(obj) as chunks:
                data = b"".join([c async for c in chunks])
            assert obj.size == len(data), obj
            out[str(obj.path)] = data
    finally:
        await src.close()
    return out


async def serve(
    payload: bytes, kind: str, tmp_path: Path, *, ranges: bool = True
) -> tuple[dict[str, bytes], respx.Route]:
    url = f"https://files.example/m.{kind}"
    route = respx.get(url).mock(side_effect=range_responder(payload, ranges=ranges))
    src = source(url, kind, tmp_path)
    return await unpack(src), route


# --- kinds and the tree ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [("m.tar", "tar"), ("M.TAR.GZ", "tar.gz"), ("m.tgz", "tar.gz"), ("a/m.zip", "zip"), ("m.gz", None), ("tar", None)],
)
def test_archive_kind_by_name(name: str, kind: str | None) -> None:
    assert archive_kind(name) == kind


def test_archive_kind_by_content_type() -> None:
    assert archive_kind_from_content_type("application/gzip") == "tar.gz"
    assert archive_kind_from_content_type("Application/X-Tar; charset=binary") == "tar"
    assert archive_kind_from_content_type("application/x-zip-compressed") == "zip"
    assert archive_kind_from_content_type("application/octet-stream") is None
    assert archive_kind_from_content_type(None) is None


# --- tar ------------------------------------------------------------------------------------------------------


@respx.mock
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
async def test_ranged_tar_reads_each_member_with_one_range(fmt: int, tmp_path: Path) -> None:
    got, route = await serve(tar_bytes(FILES, fmt=fmt), "tar", tmp_path)
    assert got == FILES
    ranges = [c.request.headers.get("Range") for c in route.calls]
    assert all(ranges) and ranges[0] == "bytes=0-0"
    assert len(route.calls) <= 1 + 2 * len(FILES)  # the probe, a window per big member's header, a GET per member


@respx.mock
async def test_long_names_and_links_from_pax_and_gnu_headers(tmp_path: Path) -> None:
    long_dir = "/".join(["a-rather-long-folder-name"] * 8)
    files = {f"{long_dir}/weights.bin": b"w" * 1000}
    for gz, fmt in ((False, tarfile.PAX_FORMAT), (True, tarfile.GNU_FORMAT)):
        link = tar_entry("short", tarfile.SYMTYPE, link=f"{long_dir}/weights.bin")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=fmt) as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            tar.addfile(link)
        got, _ = await serve(buf.getvalue(), "tar.gz" if gz else "tar", tmp_path)
        assert got == {**files, "short": b"w" * 1000}


@respx.mock
async def test_streamed_tar_without_ranges_and_without_end_blocks(tmp_path: Path) -> None:
    payload = tar_bytes(FILES, fmt=tarfile.USTAR_FORMAT)
    payload = payload.rstrip(b"\x00")
    payload += bytes(-len(payload) % 512)  # whole blocks, but no end-of-archive marker
    got, route = await serve(payload, "tar", tmp_path, ranges=False)
    assert got == FILES
    assert route.call_count == 2  # the probe's whole-file answer is the listing pass, then one copy pass


@respx.mock
async def test_a_truncated_tar_is_an_error(tmp_path: Path) -> None:
    payload = tar_bytes(FILES)
    with pytest.raises(SourceError, match="ends early"):
        await serve(payload[: len(payload) // 2], "tar", tmp_path, ranges=False)


@respx.mock
async def test_not_a_tar_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no valid tar header at byte 0"):
        await serve(b"hello world" * 100, "tar", tmp_path)
    with pytest.raises(SourceError, match="no valid tar header at byte 0"):  # not gzip: read as a plain tar
        await serve(b"hello world" * 100, "tar.gz", tmp_path)
    with pytest.raises(SourceError, match="not valid gzip data"):
        await serve(b"\x1f\x8b" + b"hello world" * 100, "tar.gz", tmp_path)
    with pytest.raises(SourceError, match="gzip stream ends early"):
        await serve(gzip.compress(tar_bytes(FILES))[:20_000], "tar.gz", tmp_path)


@respx.mock
async def test_malicious_tar_is_refused_before_any_file_moves(tmp_path: Path) -> None:
    payload = tar_with([tar_entry("../../evil.sh", size=3)], {"ok.txt": b"ok"})
    with pytest.raises(SourceError, match=r"refusing entry '\.\./\.\./evil\.sh'"):
        await serve(payload, "tar", tmp_path)


@respx.mock
async def test_multi_member_gzip_and_zero_padding(tmp_path: Path) -> None:
    plain = tar_bytes(FILES)
    payload = gzip.compress(plain[:5000]) + gzip.compress(plain[5000:]) + bytes(1024)
    got, _ = await serve(payload, "tar.gz", tmp_path)
    assert got == FILES


@respx.mock
async def test_gzip_is_recognised_by_its_magic_not_its_name(tmp_path: Path) -> None:
    # An S3 object uploaded with ContentEncoding=gzip: httpx already removed the gzip layer of this ".tar.gz".
    url = "https://files.example/encoded.tar.gz"
    encoded = gzip.compress(tar_bytes(FILES))
    respx.get(url).mock(
        side_effect=lambda _: httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=encoded)
    )
    assert await unpack(source(url, "tar.gz", tmp_path)) == FILES
    got, route = await serve(tar_bytes(FILES, gz=True), "tar", tmp_path)  # a ".tar" that is gzipped
    assert got == FILES and route.call_count == 4  # the probe, a window read (the magic), then two passes


@respx.mock
async def test_decompressed_chunks_are_bounded(tmp_path: Path) -> None:
    bomb = {"zeros.bin": bytes(5 * OUT_LIMIT)}
    url = "https://files.example/bomb.tar.gz"
    respx.get(url).mock(side_effect=range_responder(tar_bytes(bomb, gz=True)))
    src = source(url, "tar.gz", tmp_path)
    [obj] = [o async for o in src.list()]
    async with src.open(obj) as chunks:
        sizes = [len(c) async for c in chunks]
    await src.close()
    assert sum(sizes) == 5 * OUT_LIMIT and max(sizes) <= OUT_LIMIT


# --- the shared pass ------------------------------------------------------------------------------------------

TGZ = "https://files.example/m.tar.gz"


@respx.mock
async def test_streamed_members_are_served_in_archive_order_whatever_order_they_are_read(tmp_path: Path) -> None:
    route = respx.get(TGZ).mock(side_effect=range_responder(tar_bytes(FILES, gz=True)))
    src = source(TGZ, "tar.gz", tmp_path)
    objects = [o async for o in src.list()]
    async with AsyncExitStack() as stack:
        streams = [await stack.enter_async_context(src.open(o)) for o in objects]  # opened in listing order

        async def read(index: int) -> tuple[int, bytes]:
            return index, b"".join([c async for c in streams[index]])

        results = await asyncio.gather(*(read(i) for i in reversed(range(len(streams)))))
    assert {str(objects[i].path): data for i, data in results} == FILES
    assert route.call_count == 2  # listing pass + one shared copy pass
    await src.close()


@respx.mock
async def test_a_member_behind_the_pass_restarts_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    route = respx.get(TGZ).mock(side_effect=range_responder(tar_bytes(FILES, gz=True)))
    src = source(TGZ, "tar.gz", tmp_path)
    objects = {str(o.path): o async for o in src.list()}
    for name in ("weights/w.bin", "config.json"):
        async with src.open(objects[name]) as chunks:
            assert b"".join([c async for c in chunks]) == FILES[name]
    await src.close()
    assert route.call_count == 3
    assert "reading the archive again from its start to reach config.json" in caplog.text


@respx.mock
async def test_a_reader_that_stops_early_leaves_the_pass_in_step(tmp_path: Path) -> None:
    route = respx.get(TGZ).mock(side_effect=range_responder(tar_bytes(FILES, gz=True)))
    src = source(TGZ, "tar.gz", tmp_path)
    objects = [o async for o in src.list()]
    async with src.open(objects[1]) as chunks:  # weights/w.bin: read one chunk only
        assert FILES["weights/w.bin"].startswith(await anext(chunks))
    async with src.open(objects[3]) as chunks:
        assert b"".join([c async for c in chunks]) == FILES["deep/er/still/vocab.txt"]
    async with src.open(objects[1], offset=1000) as chunks:  # behind: restarts, then starts at the offset
        assert b"".join([c async for c in chunks]) == FILES["weights/w.bin"][1000:]
    await src.close()
    assert route.call_count == 3


# --- zip ------------------------------------------------------------------------------------------------------


@respx.mock
@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
async def test_ranged_zip(compression: int, tmp_path: Path) -> None:
    got, route = await serve(zip_bytes(FILES, compression=compression), "zip", tmp_path)
    assert got == FILES
    assert all("Range" in c.request.headers for c in route.calls)
    assert not list(tmp_path.iterdir())


@respx.mock
async def test_zip_without_ranges_is_spooled_then_deleted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = tmp_path / "spool"
    with caplog.at_level(logging.WARNING):
        got, route = await serve(zip_bytes(FILES), "zip", spool, ranges=False)
    assert got == FILES and route.call_count == 1
    assert [r.message for r in caplog.records if "does not serve byte ranges" in r.message]
    assert spool.is_dir() and not list(spool.iterdir())


@respx.mock
@pytest.mark.parametrize("offset", [0, 1, 70_000])
async def test_zip_members_open_at_an_offset(offset: int, tmp_path: Path) -> None:
    for compression in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
        url = f"https://files.example/o{compression}.zip"
        respx.get(url).mock(side_effect=range_responder(zip_bytes(FILES, compression=compression)))
        src = source(url, "zip", tmp_path)
        objects = {str(o.path): o async for o in src.list()}
        async with src.open(objects["weights/w.bin"], offset=offset) as chunks:
            assert b"".join([c async for c in chunks]) == FILES["weights/w.bin"][offset:]
        await src.close()


def zip64(name: str, data: bytes) -> bytes:
    """One stored member whose sizes and offset all live in ZIP64 fields, as in an archive over 4 GiB."""
    crc, raw = zlib.crc32(data), name.encode()
    local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
    local = struct.pack(
        "<4s2B4HL2L2H", b"PK\x03\x04", 45, 0, 0, 0, 0, 33, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(raw), len(local_extra)
    )
    central_extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), 0)
    central = struct.pack(
        "<4s4B4HL2L5H2L", b"PK\x01\x02", 45, 3, 45, 0, 0, 0, 0, 33, crc, 0xFFFFFFFF, 0xFFFFFFFF,
        len(raw), len(central_extra), 0, 0, 0, 0o100644 << 16, 0xFFFFFFFF,
    )  # fmt: skip
    cd_offset = len(local) + len(raw) + len(local_extra) + len(data)
    cd = central + raw + central_extra
    z64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, len(cd), cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, cd_offset + len(cd), 1)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return local + raw + local_extra + data + cd + z64 + locator + eocd


@respx.mock
async def test_zip64_records_and_fields(tmp_path: Path) -> None:
    payload = zip64("big/model.bin", FILES["weights/w.bin"])
    with zipfile.ZipFile(io.BytesIO(payload)) as oracle:  # the stdlib reads it the same way
        assert oracle.read("big/model.bin") == FILES["weights/w.bin"]
    got, _ = await serve(payload, "zip", tmp_path)
    assert got == {"big/model.bin": FILES["weights/w.bin"]}


class Unseekable(io.RawIOBase):
    def __init__(self) -> None:
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.buf += b
        return len(b)


@respx.mock
async def test_zip_with_data_descriptors_and_a_prepended_stub(tmp_path: Path) -> None:
    out = Unseekable()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:  # unseekable: sizes after the data
        for name, data in FILES.items():
            zf.writestr(name, data)
    got, _ = await serve(b'#!/bin/sh\nexec unzip "$0"\n' + bytes(out.buf), "zip", tmp_path)
    assert got == FILES


@respx.mock
async def test_zip_crc_mismatch_is_an_integrity_error(tmp_path: Path) -> None:
    payload = bytearray(zip_bytes({"a.bin": b"A" * 1000}, compression=zipfile.ZIP_STORED))
    payload[payload.index(b"A" * 1000) + 500] = ord("B")
    with pytest.raises(IntegrityError, match="a.bin.*CRC-32"):
        await serve(bytes(payload), "zip", tmp_path)


@respx.mock
async def test_zip_methods_and_encryption_we_cannot_read_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"'a\.bin'.*compression method 12 is not supported"):
        await serve(zip_bytes({"a.bin": b"x" * 100}, compression=zipfile.ZIP_BZIP2), "zip", tmp_path)
    payload = bytearray(zip_bytes({"a.bin": b"x" * 100}))
    at = payload.index(b"PK\x01\x02") + 8
    payload[at] |= 1  # the encrypted flag
    with pytest.raises(SourceError, match=r"'a\.bin'.*encrypted"):
        await serve(bytes(payload), "zip", tmp_path)


@respx.mock
async def test_zip_symlinks(tmp_path: Path) -> None:
    got, _ = await serve(zip_bytes(FILES, links={"latest.bin": "weights/w.bin"}), "zip", tmp_path)
    assert got == {**FILES, "latest.bin": FILES["weights/w.bin"]}
    with pytest.raises(SourceError, match=r"refusing entry 'up'.*outside"):
        await serve(zip_bytes(FILES, links={"up": "../secret"}), "zip", tmp_path)


@respx.mock
async def test_not_a_zip_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no end of central directory record"):
        await serve(b"not a zip" * 100, "zip", tmp_path)


async def test_open_of_an_unlisted_path_is_an_error(tmp_path: Path) -> None:
    src = source("https://files.example/m.zip", "zip", tmp_path)
    with pytest.raises(SourceError, match="not listed"):
        src.open(ObjectInfo(path=PurePosixPath("x"), size=1))
    await src.close()
