"""Tar streams read header by header, never their file data: one scanner for archives and image layers.

:func:`scan_tar` yields each entry with its name (after pax and GNU long names), kind, data size and data offset,
and skips the data by offset arithmetic (``size`` rounded up to a 512-byte block). pax extended headers (``x``),
global ones (``g``, defaults for every later entry) and GNU long names and links (``L``, ``K``) apply to the entry
that follows; ``tarfile.TarInfo.frombuf`` parses each header (checksum, base-256 sizes, the ustar prefix). What an
entry is, is said in words (``file``, ``dir``, ``symlink``, ``hardlink``, ``character device``, ``GNU sparse file``
...): what may be unpacked is :class:`job.formats.tree.ModelTree`'s to decide.

Its input is a :class:`TarInput`: :class:`RangedInput` reads an uncompressed tar by random access through a small
window (8 KiB, doubling while headers are dense, back to 8 KiB after a skip), so listing a tar holding one 10 GiB
file reads kilobytes; :class:`StreamInput` reads a stream once (through :func:`job.formats.gzip.inflate` for gzip),
and skipping there means reading and dropping.
"""

from __future__ import annotations

import tarfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from job.errors import SourceError
from job.streams import ChunkReader

__all__ = ["MAX_META", "RangedInput", "StreamInput", "TarEntry", "TarInput", "scan_tar"]

BLOCK = tarfile.BLOCKSIZE
MIN_WINDOW = 8 * 1024
MAX_WINDOW = 1024 * 1024
MAX_META = 1024 * 1024
"""Largest pax header or GNU long name read into memory (real ones are a few hundred bytes)."""
_META_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
    tarfile.GNUTYPE_SPARSE: "GNU sparse file",
}


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One tar entry: its name, kind, data size (0 for what has no data) and data offset in the tar stream."""

    name: str
    kind: str
    size: int
    offset: int
    link: str = ""


class TarInput(Protocol):
    """A tar stream read front to back."""

    @property
    def position(self) -> int:
        """Bytes read or skipped so far."""
        ...

    async def read(self, n: int) -> bytes:
        """The next ``n`` bytes; fewer only at the end."""
        ...

    async def skip(self, n: int) -> None:
        """Move ``n`` bytes forward without keeping them; a stream that ends first is a ``SourceError``."""
        ...


class RangedInput:
    """A tar of ``size`` bytes read by random access through ``fetch(start, length)`` (a ranged GET)."""

    def __init__(self, fetch: Callable[[int, int], Awaitable[bytes]], size: int, what: str) -> None:
        self._fetch = fetch
        self._size = size
        self._what = what
        self.position = 0
        self._buf = b""
        self._buf_start = 0
        self._window = MIN_WINDOW
        self.requests = 0

    async def read(self, n: int) -> bytes:
        end = min(self.position + n, self._size)
        if end <= self.position:
            return b""
        buf_end = self._buf_start + len(self._buf)
        if not (self._buf_start <= self.position and end <= buf_end):
            # Dense headers (the next read starts right where the window ended): widen the window.
            self._window = min(self._window * 2, MAX_WINDOW) if self.position == buf_end else MIN_WINDOW
            length = min(max(end - self.position, self._window), self._size - self.position)
            self._buf, self._buf_start = await self._fetch(self.position, length), self.position
            self.requests += 1
        data = self._buf[self.position - self._buf_start : end - self._buf_start]
        self.position += len(data)
        return data

    async def skip(self, n: int) -> None:
        if self.position + n > self._size:
            raise _truncated(self._what, self._size)
        self.position += n


class StreamInput:
    """A tar stream read once from an async byte iterator."""

    def __init__(self, chunks: AsyncIterator[bytes], what: str) -> None:
        self._reader = ChunkReader(chunks)
        self._what = what

    @property
    def position(self) -> int:
        return self._reader.consumed

    async def read(self, n: int) -> bytes:
        return await self._reader.read(n)

    async def skip(self, n: int) -> None:
        end = self.position + n
        async for _ in self._reader.iter_part(n):
            pass
        if self.position < end:
            raise _truncated(self._what, self.position)


def _truncated(what: str, at: int) -> SourceError:
    return SourceError(f"{what}: the tar ends early (at byte {at} of its tar stream)")


def _pax(data: bytes, what: str) -> dict[str, str]:
    """Parse pax extended header records (``"<len> key=value\\n"``)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos : pos + 1] != b"\0":
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise SourceError(f"{what}: a pax extended header is malformed (at byte {pos})") from None
        record = data[space + 1 : pos + length]
        if space < 0 or length <= space - pos or pos + length > len(data) or not record.endswith(b"\n"):
            raise SourceError(f"{what}: a pax extended header is malformed (at byte {pos})")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


async def scan_tar(source: TarInput, what: str) -> AsyncGenerator[TarEntry, None]:
    """Yield the entries of the tar in ``source`` without reading their data (see the module docstring)."""
    global_pax: dict[str, str] = {}
    pending: dict[str, str] = {}
    while True:
        at = source.position
        block = await source.read(BLOCK)
        if len(block) < BLOCK or block == bytes(BLOCK):
            if block.strip(b"\0") or (pending and len(block) < BLOCK):
                raise SourceError(f"{what}: the tar ends inside a header at byte {at}")
            return  # the end-of-archive marker, or a tar that simply stops at a block boundary (as tarfile allows)
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise SourceError(f"{what}: no valid tar header at byte {at} ({exc})") from None
        if info.type in _META_TYPES:
            if info.size > MAX_META:
                raise SourceError(f"{what}: a {info.size}-byte extended header at byte {at}")
            data = await source.read(_blocks(info.size))
            if len(data) < _blocks(info.size):
                raise _truncated(what, source.position)
            data = data[: info.size]
            if info.type == tarfile.GNUTYPE_LONGNAME:
                pending["path"] = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                pending["linkpath"] = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif info.type == tarfile.XGLTYPE:
                global_pax.update(_pax(data, what))
            else:
                pending.update(_pax(data, what))
            continue
        records = {**global_pax, **pending}
        pending = {}
        name = records.get("path") or info.name
        kind = _KINDS.get(info.type, f"entry of unknown type {info.type!r}")
        if any(key.startswith("GNU.sparse") for key in records):
            kind = "GNU sparse file"
        elif kind == "file" and name.endswith("/"):
            kind = "dir"
        size = int(records["size"]) if records.get("size", "").isdigit() else info.size
        has_data = info.type in tarfile.REGULAR_TYPES or info.type not in tarfile.SUPPORTED_TYPES
        offset = source.position
        yield TarEntry(name, kind, size if kind == "file" else 0, offset, records.get("linkpath") or info.linkname)
        if has_data:
            await source.skip(_blocks(size))
