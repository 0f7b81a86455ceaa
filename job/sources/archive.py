"""Archives at a URL (``.tar``, ``.tar.gz``/``.tgz``, ``.zip``), unpacked into the model tree as they stream.

The source contract is list-then-open, and the engine opens files in listing order, ``parallel_files`` at a time.
Each kind gets the cheapest design that keeps to it, with no temp disk where the server allows it:

* **tar, server serves ranges** (a 206 to ``Range: bytes=0-0``): ``list()`` walks the headers with ranged reads
  (one 64 KiB window per header, member data skipped, not downloaded) and keeps each member's data offset;
  ``open()`` is one ranged GET of exactly that member. Parallel, no disk, the archive is read once.
* **tar.gz, or a tar on a server without ranges**: gzip has no random access. ``list()`` streams the archive once
  through gunzip, reading headers and discarding data. ``open()`` is served by *one second pass shared by all
  members*: an open waits until the pass reaches its member, then reads that member's bytes straight from the
  decompressor; the pass advances only as fast as the member's reader, so nothing is buffered beyond one chunk.
  gzip is recognised by its magic bytes, whatever the name says (a ``.tar`` may be gzipped; a ``.tar.gz`` sent
  with ``Content-Encoding: gzip`` arrives already decompressed).
  The engine opens members in listing order, which is archive order, so the pass never goes back; an open behind
  it (a link's alias, a retried file) restarts it from the start, with a warning. Cost: the archive is
  downloaded twice (list, then copy), with bounded memory and no disk.
* **zip**: the end of central directory record (ZIP64 too) and the central directory are read with ranged GETs;
  each member is one ranged GET of its local header and data, stored members passed through, deflated ones
  inflated on the fly (``zlib``, raw deflate), and their CRC-32 checked. A server without ranges: the zip is
  spooled once to ``storage_path`` (one warning line) and read from there.

Safety, for every kind: an entry with an absolute path, ``..``, a NUL or a backslash is refused with a
SourceError naming it (:func:`~job.model.safe_relative_path`); directories are skipped (they carry no
file); device files and fifos are refused; a symlink or hard link becomes a copy of its target's bytes when the
target is a file (or a directory: its files) inside the archive, and is refused otherwise. A later entry of the
same name replaces an earlier one, as extracting does. Sizes come from the tar headers (pax ``size`` for huge
files) and the zip central directory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import stat
import struct
import tarfile
import tempfile
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from job.errors import IntegrityError, SourceError
from job.formats.shared_pass import SharedPass
from job.http.client import Download, HttpClient, display_url
from job.model import ObjectInfo, safe_relative_path
from job.streams import ChunkReader, aiter_file, spool

log = logging.getLogger(__name__)

ArchiveKind = Literal["tar", "tar.gz", "zip"]
WINDOW = 64 * 1024
"""Bytes one ranged read for headers fetches: neighbouring small members cost no further request."""
OUT_LIMIT = 1024 * 1024
"""Most bytes one decompress call may return: a gzip or deflate bomb cannot blow up memory."""
MAX_META = 1024 * 1024
"""Largest pax header, GNU long name or zip symlink target read into memory."""

_SUFFIXES: tuple[tuple[str, ArchiveKind], ...] = (
    (".tar.gz", "tar.gz"),
    (".tgz", "tar.gz"),
    (".tar", "tar"),
    (".zip", "zip"),
)
_CONTENT_TYPES: dict[str, ArchiveKind] = {
    "application/x-tar": "tar",
    "application/x-gtar": "tar",
    "application/gzip": "tar.gz",
    "application/x-gzip": "tar.gz",
    "application/x-compressed-tar": "tar.gz",
    "application/zip": "zip",
    "application/x-zip-compressed": "zip",
    "application/zip-compressed": "zip",
}


def archive_kind(name: str) -> ArchiveKind | None:
    """The archive kind a path or file name ends with (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``), if any."""
    lower = name.lower()
    return next((kind for suffix, kind in _SUFFIXES if lower.endswith(suffix)), None)


def archive_kind_from_content_type(value: str | None) -> ArchiveKind | None:
    """The archive kind a ``Content-Type`` names (the types KServe's storage initializer unpacks), if any."""
    return _CONTENT_TYPES.get((value or "").split(";", 1)[0].strip().lower())


@dataclass(frozen=True, slots=True)
class Entry:
    """One archive member as its header or central directory describes it."""

    name: str
    kind: str
    """``file``, ``dir``, ``symlink``, ``hardlink``, or what else it is (``character device``, ...)."""
    size: int
    offset: int
    """tar: its first data byte in the (decompressed) stream; zip: its local header."""
    link: str = ""
    method: int = 0
    """zip: 0 stored, 8 deflated."""
    compressed: int = 0
    crc: int = 0


def _refuse(e: Entry, where: str, why: str) -> SourceError:
    return SourceError(f"unpacking {where}: refusing archive entry {e.name!r}: {why}", uri=where, path=e.name)


def _link_target(path: PurePosixPath, e: Entry, where: str) -> PurePosixPath:
    """Where a link points, relative to the root (symlinks from their folder, hard links from the root)."""
    if not e.link or e.link.startswith("/") or "\x00" in e.link:
        raise _refuse(e, where, f"it links to {e.link!r}, outside the archive")
    target = posixpath.normpath(posixpath.join(str(path.parent) if e.kind == "symlink" else ".", e.link))
    if target in (".", "..") or target.startswith("../"):
        raise _refuse(e, where, f"it links to {e.link!r}, outside the archive's files")
    return PurePosixPath(target)


def check_entry(e: Entry, where: str) -> PurePosixPath | None:
    """The entry's path in the model, None for a directory; SourceError for what must not be unpacked."""
    if e.kind == "dir" and e.name.strip("/") in ("", "."):
        return None  # the archive's root ("./"), as `tar -C dir -cf x.tar .` writes
    try:
        path = safe_relative_path(e.name, what="archive entry")
    except SourceError as exc:
        raise SourceError(f"unpacking {where}: {exc}", uri=where, path=e.name) from None
    if e.kind == "dir":
        return None
    if e.kind not in ("file", "symlink", "hardlink"):
        raise _refuse(e, where, f"it is a {e.kind}; only files, directories and links are unpacked")
    if e.kind != "file":
        _link_target(path, e, where)
    return path


def build_tree(checked: Sequence[tuple[PurePosixPath, Entry]], where: str) -> list[tuple[ObjectInfo, Entry]]:
    """The model's files, each with the entry whose bytes it has: files in archive order, then links.

    Links are resolved through other links (at most 40 hops, like Linux) to a file, or to a directory whose files
    are listed under the link's name; a link to anything else is refused. Links come last, ordered by their
    target's offset, so a streaming pass meets them in order on a second round.
    """
    files: dict[PurePosixPath, Entry] = {}
    links: dict[PurePosixPath, Entry] = {}
    for path, e in checked:
        files.pop(path, None)  # a later entry replaces an earlier one, as extracting does
        links.pop(path, None)
        (files if e.kind == "file" else links)[path] = e
    tree = [(ObjectInfo(path=path, size=e.size), e) for path, e in files.items()]
    aliases: list[tuple[ObjectInfo, Entry]] = []
    for path, e in links.items():
        target = _link_target(path, e, where)
        for _ in range(40):
            hop = links.get(target)
            if hop is None:
                break
            target = _link_target(target, hop, where)
        else:
            raise _refuse(e, where, "its links go round in a loop")
        if target in files:
            aliases.append((ObjectInfo(path=path, size=files[target].size), files[target]))
            continue
        below = [
            (ObjectInfo(path=path / p.relative_to(target), size=f.size), f)
            for p, f in files.items()
            if target in p.parents
        ]
        if not below:
            raise _refuse(e, where, f"it links to {target}, which is not a file or directory in the archive")
        aliases.extend(below)
    aliases.sort(key=lambda item: item[1].offset)
    return tree + aliases


# --- tar ---------------------------------------------------------------------------------------------------


class _TarInput(Protocol):
    position: int

    async def read(self, n: int) -> bytes: ...

    async def skip_to(self, position: int) -> None: ...


_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_GZIP_MAGIC = b"\x1f\x8b"
_META_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_TAR_KINDS = {
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


def _padded(n: int) -> int:
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _truncated(where: str, at: int) -> SourceError:
    return SourceError(f"unpacking {where}: the archive ends early (at byte {at} of its tar stream)", uri=where)


def _pax(data: bytes, where: str) -> dict[str, str]:
    """Parse pax extended header records (``"<len> key=value\\n"``)."""
    records: dict[str, str] = {}
    pos = 0
    try:
        while pos < len(data) and data[pos]:
            space = data.index(b" ", pos)
            length = int(data[pos:space])
            record = data[space + 1 : pos + length]
            if length <= space - pos or not record.endswith(b"\n"):
                raise ValueError(record)
            key, _, value = record[:-1].partition(b"=")
            records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
            pos += length
    except ValueError:
        raise SourceError(f"unpacking {where}: a pax extended header is malformed", uri=where) from None
    return records


async def iter_tar(src: _TarInput, where: str) -> AsyncGenerator[Entry, None]:
    """Yield a tar's entries, reading headers only: after each yield the input skips to the next header.

    Handles ustar, GNU long names and links (``L``/``K``) and pax headers (``path``, ``linkpath``, ``size``);
    ``tarfile.TarInfo.frombuf`` parses each 512-byte header (checksum, base-256 sizes, ustar prefix).
    """
    pending: dict[str, str] = {}
    while True:
        at = src.position
        block = await src.read(tarfile.BLOCKSIZE)
        if not block and not pending:
            return  # no end-of-archive blocks: tolerated, as tarfile does
        if len(block) < tarfile.BLOCKSIZE:
            raise _truncated(where, at)
        if block == _ZERO_BLOCK:
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise SourceError(f"unpacking {where}: no valid tar header at byte {at} ({exc})", uri=where) from None
        if info.type in _META_TYPES:
            if info.size > MAX_META:
                raise SourceError(f"unpacking {where}: a {info.size}-byte extended header at byte {at}", uri=where)
            data = await src.read(_padded(info.size))
            if len(data) < _padded(info.size):
                raise _truncated(where, src.position)
            text = data[: info.size].rstrip(b"\x00").decode("utf-8", "surrogateescape")
            if info.type == tarfile.GNUTYPE_LONGNAME:
                pending["path"] = text
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                pending["linkpath"] = text
            elif info.type != tarfile.XGLTYPE:  # global pax headers set defaults nothing here needs
                pending.update(_pax(data[: info.size], where))
            continue
        name, link = pending.get("path", info.name), pending.get("linkpath", info.linkname)
        size = int(pending["size"]) if pending.get("size", "").isdigit() else info.size
        kind = _TAR_KINDS.get(info.type, f"entry of unknown type {info.type!r}")
        if any(key.startswith("GNU.sparse") for key in pending):
            kind = "GNU sparse file"
        elif kind == "file" and name.endswith("/"):
            kind = "dir"
        pending = {}
        has_data = info.type in tarfile.REGULAR_TYPES or info.type not in tarfile.SUPPORTED_TYPES
        offset = src.position
        yield Entry(name=name, kind=kind, size=size if kind == "file" else 0, offset=offset, link=link)
        await src.skip_to(offset + (_padded(size) if has_data else 0))


class _StreamInput:
    """Tar input over a forward-only stream: skipping reads and drops the bytes."""

    def __init__(self, reader: ChunkReader, where: str) -> None:
        self.position = 0
        self._reader = reader
        self._where = where

    async def read(self, n: int) -> bytes:
        data = await self._reader.read(n)
        self.position += len(data)
        return data

    async def skip_to(self, position: int) -> None:
        async for chunk in self._reader.iter_part(position - self.position):
            self.position += len(chunk)
        if self.position < position:
            raise _truncated(self._where, self.position)


class _RangedInput:
    """Tar input over random access: skipping costs nothing."""

    def __init__(self, ra: _RandomAccess, where: str) -> None:
        self.position = 0
        self._ra = ra
        self._where = where

    async def read(self, n: int) -> bytes:
        data = await self._ra.read(self.position, n)
        self.position += len(data)
        return data

    async def skip_to(self, position: int) -> None:
        if position > self._ra.size:
            raise _truncated(self._where, self._ra.size)
        self.position = position


async def gunzip(chunks: AsyncIterator[bytes], where: str) -> AsyncGenerator[bytes, None]:
    """Decompress a gzip stream (several concatenated members too, as pigz and bgzip write) as it arrives.

    A stream that does not start with the gzip magic passes through unchanged: a ``.tar`` that is plain, or a
    ``.tar.gz`` whose gzip layer httpx already removed because the server sent ``Content-Encoding: gzip`` (S3
    objects uploaded with ``ContentEncoding=gzip``, nginx ``gzip_static``), whatever ``Accept-Encoding`` asked.
    """
    d = zlib.decompressobj(zlib.MAX_WBITS | 16)
    plain: bool | None = None
    try:
        async for data in chunks:
            if plain is None:
                plain = not data.startswith(_GZIP_MAGIC)
            if plain:
                yield data
                continue
            while data:
                if d.eof:
                    if not data.strip(b"\x00"):
                        break  # zero padding after the last member
                    d = zlib.decompressobj(zlib.MAX_WBITS | 16)
                out = d.decompress(data, OUT_LIMIT)
                data = d.unused_data if d.eof else d.unconsumed_tail
                if out:
                    yield out
        if tail := d.flush():
            yield tail
    except zlib.error as exc:
        raise SourceError(f"unpacking {where}: it is not valid gzip data ({exc})", uri=where) from None
    if plain is False and not d.eof:
        raise SourceError(f"unpacking {where}: the gzip stream ends early", uri=where)


# --- random access: ranged GETs, or a spooled file ----------------------------------------------------------


class _RandomAccess(Protocol):
    size: int

    async def read(self, start: int, n: int) -> bytes: ...

    def stream(self, start: int, end: int, what: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...

    async def close(self) -> None: ...


class _HttpRanges:
    """Random access to the archive by ranged GETs (``If-Match`` on its ETag: a replaced archive is an error).

    ``read`` keeps the last window it fetched, so neighbouring headers cost no further request.
    """

    def __init__(self, client: HttpClient, url: str, size: int, etag: str | None) -> None:
        self.size = size
        self._client = client
        self._url = url
        self._etag = etag
        self._window = (0, b"")

    def stream(self, start: int, end: int, what: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._client.download(self._url, what=what, start=start, end=end, etag=self._etag).body()

    async def read(self, start: int, n: int) -> bytes:
        end = min(start + n, self.size)
        if start >= end:
            return b""
        w_start, window = self._window
        if not (w_start <= start and end <= w_start + len(window)):
            w_end = min(self.size, max(end, start + WINDOW))
            async with self.stream(start, w_end, f"reading {display_url(self._url)}") as chunks:
                window = b"".join([chunk async for chunk in chunks])
            w_start = start
            self._window = (w_start, window)
        return window[start - w_start : end - w_start]

    async def close(self) -> None:
        """Nothing to release: each read closes its own response."""


class _LocalFile:
    """Random access to a spooled archive; the file is deleted by :meth:`close`."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    def _pread(self, start: int, n: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(n)

    async def read(self, start: int, n: int) -> bytes:
        return await asyncio.to_thread(self._pread, start, n)

    @asynccontextmanager
    async def stream(self, start: int, end: int, what: str) -> AsyncIterator[AsyncIterator[bytes]]:
        async def cut(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
            pos = start
            async for chunk in chunks:
                if pos >= end:
                    return
                piece = chunk[: end - pos] if pos + len(chunk) > end else chunk
                pos += len(piece)
                yield piece

        async with aclosing(aiter_file(self.path, offset=start)) as chunks, aclosing(cut(chunks)) as part:
            yield part

    async def close(self) -> None:
        self.path.unlink(missing_ok=True)


async def _spool(first: Download, directory: Path, where: str) -> _LocalFile:
    log.warning(
        "%s: the server does not serve byte ranges, so the zip (%s bytes) is downloaded to %s before it is unpacked",
        where, first.size if first.size is not None else "an unknown number of", directory,
    )  # fmt: skip
    async with first.body() as chunks:  # opened first: a body that fails to open leaves no file behind
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="model-sync-", suffix=".zip", dir=directory)
        except OSError as exc:
            raise SourceError(
                f"unpacking {where}: cannot spool the zip to {directory}: {exc.strerror}", uri=where
            ) from exc
        path = Path(name)
        size = await spool(chunks, os.fdopen(fd, "wb"), path)
    return _LocalFile(path, size)


class _RangedTar:
    """A tar on a server with ranges: headers by ranged reads, each member one ranged GET."""

    def __init__(self, ra: _RandomAccess, where: str) -> None:
        self._ra = ra
        self._where = where

    def entries(self) -> AsyncGenerator[Entry, None]:
        return iter_tar(_RangedInput(self._ra, self._where), self._where)

    def open(self, e: Entry, offset: int) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._ra.stream(e.offset + offset, e.offset + e.size, f"reading {e.name} from {self._where}")

    async def close(self) -> None:
        await self._ra.close()


class _StreamedTar:
    """A tar or tar.gz read front to back: listed in one pass, members served by one shared second pass.

    The second pass is a :class:`~job.formats.shared_pass.SharedPass` over the (decompressed) archive: members are met
    in listing order, which is archive order, and a member behind the pass restarts it (a warning: that is one
    more download).
    """

    def __init__(self, client: HttpClient, url: str, where: str, *, first: Download | None) -> None:
        self._client = client
        self._url = url
        self._where = where
        self._first = first
        self._etag = first.etag if first is not None else None
        self._pass = SharedPass(self._stream, where, "the archive", truncated=lambda at: _truncated(where, at))

    @asynccontextmanager
    async def _stream(self) -> AsyncIterator[AsyncIterator[bytes]]:
        download, self._first = self._first, None
        if download is None:
            download = self._client.download(self._url, what=f"reading {self._where}", etag=self._etag)
        async with download.body() as chunks, aclosing(gunzip(chunks, self._where)) as plain:
            self._etag = self._etag or download.etag  # the second pass must read the very archive the first listed
            yield plain

    async def entries(self) -> AsyncGenerator[Entry, None]:
        async with self._stream() as stream:
            async for e in iter_tar(_StreamInput(ChunkReader(stream), self._where), self._where):
                yield e

    def open(self, e: Entry, offset: int) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._pass.open(e.offset + offset, e.size - offset, e.name)

    async def close(self) -> None:
        await self._pass.close()
        if self._first is not None:
            await self._first.aclose()


# --- zip ---------------------------------------------------------------------------------------------------

_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_UNIX = 3


def _corrupt(where: str, why: str) -> SourceError:
    return SourceError(f"unpacking {where}: not a readable zip archive ({why})", uri=where)


async def _end_records(ra: _RandomAccess, where: str) -> tuple[int, int, int]:
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


async def list_zip(ra: _RandomAccess, where: str) -> list[Entry]:
    """Every entry of the central directory, in its order (read as a stream: no size limit on the directory)."""
    start, end, prepended = await _end_records(ra, where)
    entries: list[Entry] = []
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


def _zip_entry(name: str, fields: tuple[Any, ...], sizes: list[int], prepended: int, where: str) -> Entry:
    """An entry from its central directory record (``fields``) and its ZIP64-resolved sizes."""
    system, flags, method, crc, attributes = fields[2], fields[5], fields[6], fields[9], fields[17]
    kind = (
        "dir"
        if name.endswith("/")
        else _ZIP_KINDS.get(stat.S_IFMT(attributes >> 16) if system == _UNIX else 0, "special file")
    )
    size, compressed, offset = sizes
    keep = kind in ("file", "symlink")  # a symlink's size is its target's length, read by the listing
    e = Entry(name, kind, size if keep else 0, offset + prepended, method=method, compressed=compressed, crc=crc)
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
        self.crc = zlib.crc32(data, self.crc)
        self.total += len(data)
        if self.skip:
            cut = min(self.skip, len(data))
            data, self.skip = data[cut:], self.skip - cut
        return data


async def _unzip(raw: AsyncIterator[bytes], e: Entry, offset: int, where: str) -> AsyncGenerator[bytes, None]:
    crc = _Crc(offset if e.method else 0)  # a stored member was ranged from `offset` already
    if e.method == 0:
        async for chunk in raw:
            yield crc.take(chunk)
    else:
        d = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            async for data in raw:
                while data and not d.eof:
                    out = d.decompress(data, OUT_LIMIT)
                    data = d.unconsumed_tail
                    if out := crc.take(out):
                        yield out
            if out := crc.take(d.flush()):
                yield out
        except zlib.error as exc:
            raise SourceError(
                f"unpacking {e.name} from {where}: its deflate data is corrupt ({exc})", uri=where
            ) from None
        if not d.eof:
            raise SourceError(f"unpacking {e.name} from {where}: its deflate data ends early", uri=where)
    if offset == 0 and crc.total == e.size and crc.crc != e.crc:  # a short read is the engine's to report
        raise IntegrityError(f"unpacking {e.name} from {where}: CRC-32 {crc.crc:08x}, the zip lists {e.crc:08x}")


class _Zip:
    """A zip read by random access (ranged GETs, or a spooled file)."""

    def __init__(self, ra: _RandomAccess, where: str) -> None:
        self._ra = ra
        self._where = where

    async def entries(self) -> AsyncGenerator[Entry, None]:
        for e in await list_zip(self._ra, self._where):
            if e.kind == "symlink":  # a zip symlink's target is its content
                if e.size > MAX_META:
                    raise _refuse(e, self._where, f"a {e.size}-byte symlink target")
                async with self.open(e, 0) as chunks:
                    target = b"".join([chunk async for chunk in chunks])
                e = replace(e, link=target.decode("utf-8", "surrogateescape"), size=0)
            yield e

    @asynccontextmanager
    async def open(self, e: Entry, offset: int) -> AsyncIterator[AsyncIterator[bytes]]:
        header = await self._ra.read(e.offset, _LOCAL.size)
        if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
            raise _corrupt(self._where, f"no local header for {e.name!r} at byte {e.offset}")
        name_len, extra_len = _LOCAL.unpack(header)[-2:]
        data = e.offset + _LOCAL.size + name_len + extra_len
        what = f"reading {e.name} from {self._where}"
        start = data + (0 if e.method else offset)  # a stored member seeks; a deflated one inflates from its start
        async with (
            self._ra.stream(start, data + e.compressed, what) as raw,
            aclosing(_unzip(raw, e, offset, self._where)) as chunks,
        ):
            yield chunks

    async def close(self) -> None:
        await self._ra.close()


# --- the source --------------------------------------------------------------------------------------------


class _Reader(Protocol):
    def entries(self) -> AsyncGenerator[Entry, None]: ...

    def open(self, e: Entry, offset: int) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...

    async def close(self) -> None: ...


class ArchiveSource:
    """A :class:`~job.sources.base.Source` over the archive at ``url`` (see the module doc for the designs).

    ``first``: a started GET of the archive (when ``Content-Type`` revealed it), used instead of a new request.
    """

    seekable = False
    """A member is read from a shared pass or inflated from its start: an offset is not cheap."""

    def __init__(
        self, client: HttpClient, url: str, kind: ArchiveKind, *, storage_path: Path, first: Download | None = None
    ) -> None:
        self.kind = kind
        self.mode = ""
        """How it is read: ``ranged``, ``streamed`` or ``spooled`` (set by ``list()``)."""
        self._client = client
        self._url = url
        self._where = display_url(url)
        self._storage_path = storage_path
        self._first = first
        self._reader: _Reader | None = None
        self._members: dict[PurePosixPath, Entry] = {}

    async def _random_access(self) -> _RandomAccess | None:
        """Ranged access if the server serves ranges; else None, with ``self._first`` a whole-file GET."""
        first, self._first = self._first, None
        if first is None:
            # One byte asked for: a 206 proves ranges work and tells the size; a 200 is the whole archive.
            response = await self._client.get(self._url, what=f"reading {self._where}", headers={"Range": "bytes=0-0"})
            first = await Download(self._client, self._url, what=f"reading {self._where}", response=response).start()
        assert first.response is not None
        if first.resumable and first.size is not None:
            await first.aclose()
            return _HttpRanges(self._client, self._url, first.size, first.etag)
        if first.response.status_code == 206:  # ranges, but no total size: read it whole instead
            await first.aclose()
            first = await self._client.download(self._url, what=f"reading {self._where}").start()
        self._first = first
        return None

    async def _open_reader(self) -> _Reader:
        ra = None if self.kind == "tar.gz" else await self._random_access()
        if ra is not None and self.kind == "zip":
            self.mode = "ranged"
            return _Zip(ra, self._where)
        if ra is not None and not (await ra.read(0, 2)).startswith(_GZIP_MAGIC):  # a ".tar" can be gzipped
            self.mode = "ranged"
            return _RangedTar(ra, self._where)
        first, self._first = self._first, None
        if self.kind == "zip":
            assert first is not None
            self.mode = "spooled"
            return _Zip(await _spool(first, self._storage_path, self._where), self._where)
        self.mode = "streamed"
        return _StreamedTar(self._client, self._url, self._where, first=first)

    async def list(self) -> AsyncIterator[ObjectInfo]:
        """Yield the archive's files (links resolved), refusing unsafe entries as soon as they are read."""
        self._reader = reader = await self._open_reader()
        checked: list[tuple[PurePosixPath, Entry]] = []
        async with aclosing(reader.entries()) as entries:
            async for e in entries:
                path = check_entry(e, self._where)
                if path is not None:
                    checked.append((path, e))
        tree = build_tree(checked, self._where)
        log.info("%s: %d files in the %s archive (read %s)", self._where, len(tree), self.kind, self.mode)
        for obj, e in tree:
            self._members[obj.path] = e
            yield obj

    def open(self, obj: ObjectInfo, *, offset: int = 0) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream one listed file from ``offset``."""
        e = self._members.get(obj.path)
        if self._reader is None or e is None:
            raise SourceError(f"opening {obj.path}: not listed in {self._where}", uri=self._where, path=str(obj.path))
        return self._reader.open(e, offset)

    async def close(self) -> None:
        """Close the pass or delete the spooled file."""
        if self._reader is not None:
            await self._reader.close()
        if self._first is not None:
            await self._first.aclose()
