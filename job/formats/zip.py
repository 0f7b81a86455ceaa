"""Zip archives read by random access: the end records (ZIP64 too), the central directory, and each member's
bytes, stored or inflated (raw deflate), with its CRC-32 checked.

What may be unpacked (names, kinds, links) is :class:`job.formats.tree.ModelTree`'s to decide; a symlink's target
is its content, read by :func:`read_zip_entries`.
"""

from __future__ import annotations

import asyncio
import stat
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import job.deflate as deflate
from job.errors import IntegrityError, SourceError
from job.formats.gzip import PIECE as OUT_LIMIT
from job.formats.tar import MAX_META
from job.streams import ChunkReader

__all__ = ["RandomAccess", "ZipEntry", "list_zip", "open_zip_member", "read_zip_entries"]


class RandomAccess(Protocol):
    """An archive read by ranges: ranged GETs, or a spooled file."""

    size: int

    async def read(self, start: int, n: int) -> bytes:
        """Bytes ``[start, start + n)`` (fewer at the end)."""
        ...

    def stream(self, start: int, end: int, what: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Bytes ``[start, end)`` as a stream."""
        ...

    async def close(self) -> None:
        """Release what it holds."""
        ...


@dataclass(frozen=True, slots=True)
class ZipEntry:
    """One member as the central directory describes it (``offset``: its local header)."""

    name: str
    kind: str
    size: int
    offset: int
    link: str = ""
    method: int = 0
    """0 stored, 8 deflated."""
    compressed: int = 0
    crc: int = 0


def _refuse(e: ZipEntry, where: str, why: str) -> SourceError:
    return SourceError(f"unpacking {where}: refusing entry {e.name!r}: {why}", uri=where, path=e.name)


_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_UNIX = 3


def _corrupt(where: str, why: str) -> SourceError:
    return SourceError(f"unpacking {where}: not a readable zip archive ({why})", uri=where)


async def _end_records(ra: RandomAccess, where: str) -> tuple[int, int, int]:
    """``(central directory start, its end, bytes prepended to the archive)`` from the end records."""
    tail_start = max(0, ra.size - (_EOCD.size + 0xFFFF + _ZIP64_LOCATOR.size))
    tail = await ra.read(tail_start, ra.size - tail_start)
    i = len(tail)
    while True:  # the last signature whose comment fits: a comment may itself contain the signature
        i = tail.rfind(b"PK\x05\x06", 0, i)
        if i < 0:
            raise _corrupt(where, "no end of central directory record")
        if i + _EOCD.size <= len(tail) and i + _EOCD.size + _EOCD.unpack_from(tail, i)[7] <= len(tail):
            break
    _, disk, cd_disk, _, _, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, i)
    cd_end = tail_start + i
    locator = i - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        z64_at = _ZIP64_LOCATOR.unpack_from(tail, locator)[2]
        for at in (cd_end - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size, z64_at):  # where zipfile looks, then where it says
            record = await ra.read(at, _ZIP64_EOCD.size)
            if len(record) == _ZIP64_EOCD.size and record[:4] == b"PK\x06\x06":
                *_, disk, cd_disk, _, _, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)
                cd_end = at
                break
        else:
            raise _corrupt(where, "its ZIP64 end of central directory record is missing")
    if disk or cd_disk:
        raise SourceError(f"unpacking {where}: multi-disk (split) zip archives are not supported", uri=where)
    prepended = cd_end - cd_size - cd_offset  # a self-extractor stub before the archive, as zipfile allows
    if prepended < 0:
        raise _corrupt(where, "its central directory does not fit before its end record")
    return cd_offset + prepended, cd_end, prepended


def _zip64_sizes(extra: bytes, values: list[int], where: str, name: str) -> list[int]:
    """Replace the 0xFFFFFFFF fields of (size, compressed size, header offset) from the ZIP64 extra field."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 0x0001:
            body, used = extra[pos + 4 : pos + 4 + length], 0
            for index, value in enumerate(values):
                if value == 0xFFFFFFFF:
                    if used + 8 > len(body):
                        raise _corrupt(where, f"the ZIP64 field of {name!r} is too short")
                    values[index] = struct.unpack_from("<Q", body, used)[0]
                    used += 8
            return values
        pos += 4 + length
    if 0xFFFFFFFF in values:
        raise _corrupt(where, f"{name!r} needs a ZIP64 field and has none")
    return values


async def list_zip(ra: RandomAccess, where: str) -> list[ZipEntry]:
    """Every entry of the central directory, in its order (read as a stream: no size limit on the directory)."""
    start, end, prepended = await _end_records(ra, where)
    entries: list[ZipEntry] = []
    async with ra.stream(start, end, f"reading the zip directory of {where}") as chunks:
        reader = ChunkReader(chunks)
        try:
            while reader.consumed < end - start:
                fields = _CENTRAL.unpack(await reader.read_exactly(_CENTRAL.size))
                if fields[0] != b"PK\x01\x02":
                    raise _corrupt(where, f"no central directory entry at byte {start + reader.consumed}")
                flags = fields[5]
                raw = await reader.read_exactly(fields[12])
                extra = await reader.read_exactly(fields[13])
                await reader.read_exactly(fields[14])  # the entry's comment
                name = raw.decode("utf-8" if flags & 0x800 else "cp437", "surrogateescape")
                sizes = _zip64_sizes(extra, [fields[11], fields[10], fields[18]], where, name)
                entries.append(_zip_entry(name, fields, sizes, prepended, where))
        except asyncio.IncompleteReadError:
            raise _corrupt(where, "its central directory ends early") from None
    return entries


_ZIP_KINDS = {
    0: "file",  # zipfile writes a file's permission bits without S_IFREG: no type bits is a plain file
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def _zip_entry(name: str, fields: tuple[Any, ...], sizes: list[int], prepended: int, where: str) -> ZipEntry:
    """An entry from its central directory record (``fields``) and its ZIP64-resolved sizes."""
    system, flags, method, crc, attributes = fields[2], fields[5], fields[6], fields[9], fields[17]
    kind = (
        "dir"
        if name.endswith("/")
        else _ZIP_KINDS.get(stat.S_IFMT(attributes >> 16) if system == _UNIX else 0, "special file")
    )
    size, compressed, offset = sizes
    keep = kind in ("file", "symlink")  # a symlink's size is its target's length, read by the listing
    e = ZipEntry(name, kind, size if keep else 0, offset + prepended, method=method, compressed=compressed, crc=crc)
    if keep and flags & 0x1:
        raise _refuse(e, where, "it is encrypted")
    if keep and method not in (0, 8):
        raise _refuse(e, where, f"compression method {method} is not supported (only stored and deflated)")
    return e


class _Crc:
    """CRC-32 and byte count of a member's bytes, and how many leading bytes to drop (``offset``)."""

    def __init__(self, skip: int) -> None:
        self.crc = 0
        self.total = 0
        self.skip = skip

    def take(self, data: bytes) -> bytes:
        self.crc = deflate.crc32(data, self.crc)
        self.total += len(data)
        if self.skip:
            cut = min(self.skip, len(data))
            data, self.skip = data[cut:], self.skip - cut
        return data


async def _unzip(raw: AsyncIterator[bytes], e: ZipEntry, offset: int, where: str) -> AsyncGenerator[bytes, None]:
    crc = _Crc(offset if e.method else 0)  # a stored member was ranged from `offset` already
    if e.method == 0:
        async for chunk in raw:
            yield crc.take(chunk)
    else:
        d = deflate.decompressobj(-deflate.MAX_WBITS)
        try:
            async for data in raw:
                while data and not d.eof:
                    out = d.decompress(data, OUT_LIMIT)
                    data = d.unconsumed_tail
                    if out := crc.take(out):
                        yield out
            if out := crc.take(d.flush()):
                yield out
        except deflate.error as exc:
            raise SourceError(
                f"unpacking {e.name} from {where}: its deflate data is corrupt ({exc})", uri=where
            ) from None
        if not d.eof:
            raise SourceError(f"unpacking {e.name} from {where}: its deflate data ends early", uri=where)
    if offset == 0 and crc.total == e.size and crc.crc != e.crc:  # a short read is the engine's to report
        raise IntegrityError(f"unpacking {e.name} from {where}: CRC-32 {crc.crc:08x}, the zip lists {e.crc:08x}")


async def read_zip_entries(ra: RandomAccess, where: str) -> AsyncGenerator[ZipEntry, None]:
    """The central directory's entries, a symlink's target read from its content."""
    for e in await list_zip(ra, where):
        if e.kind == "symlink":
            if e.size > MAX_META:
                raise _refuse(e, where, f"a {e.size}-byte symlink target")
            async with open_zip_member(ra, e, 0, where) as chunks:
                target = b"".join([chunk async for chunk in chunks])
            e = replace(e, link=target.decode("utf-8", "surrogateescape"), size=0)
        yield e


@asynccontextmanager
async def open_zip_member(
    ra: RandomAccess, e: ZipEntry, offset: int, where: str
) -> AsyncIterator[AsyncIterator[bytes]]:
    """One member's bytes from ``offset``: a stored member is ranged from there, a deflated one inflated from its
    start and cut."""
    header = await ra.read(e.offset, _LOCAL.size)
    if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
        raise _corrupt(where, f"no local header for {e.name!r} at byte {e.offset}")
    name_len, extra_len = _LOCAL.unpack(header)[-2:]
    data = e.offset + _LOCAL.size + name_len + extra_len
    what = f"reading {e.name} from {where}"
    start = data + (0 if e.method else offset)
    async with ra.stream(start, data + e.compressed, what) as raw, aclosing(_unzip(raw, e, offset, where)) as chunks:
        yield chunks
