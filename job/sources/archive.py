"""Archives at a URL (``.tar``, ``.tar.gz``/``.tgz``, ``.zip``), unpacked into the model tree as they stream.

The source contract is list-then-open, and the engine opens files in listing order, ``parallel_files`` at a time.
Each kind gets the cheapest design that keeps to it, with no temp disk where the server allows it:

* **tar, server serves ranges** (a 206 to ``Range: bytes=0-0``): ``list()`` walks the headers with ranged reads
  (one 64 KiB window per header, member data skipped, not downloaded) and keeps each member's data offset;
  ``open()`` is one ranged GET of exactly that member. Parallel, no disk, the archive is read once.
* **tar.gz, or a tar on a server without ranges**: gzip has no random access. The archive is read *once*, through
  gunzip, by one pass shared by the listing and the members (:class:`~job.formats.shared_pass.SharedPass`):
  ``list()`` reads each header through it and yields each file as soon as its header is read (the source is
  ``one_pass``); the engine opens the file before it asks for the next, and the pass serves that member's bytes
  straight from the decompressor before it reads on, advancing only as fast as the member's reader, so nothing is
  buffered beyond one chunk. A file nobody opened is skipped. gzip is recognised by its magic bytes, whatever
  the name says (a ``.tar`` may be gzipped; a ``.tar.gz`` sent with ``Content-Encoding: gzip`` arrives already
  decompressed). An open behind the pass (a link's alias, listed at the end; a retried file) restarts it from
  the start, with a warning: one more download. A later entry of a name already listed is listed again (it
  replaces the first, as extracting does); one that turns a listed file into a directory is refused.
* **zip**: the end of central directory record (ZIP64 too) and the central directory are read with ranged GETs;
  each member is one ranged GET of its local header and data, stored members passed through, deflated ones
  inflated on the fly (``zlib``, raw deflate), and their CRC-32 checked. A server without ranges: the zip is
  spooled once to ``storage_path`` (one warning line) and read from there.

The formats are read by ``job.formats`` (:mod:`~job.formats.tar`, :mod:`~job.formats.gzip`,
:mod:`~job.formats.zip`), and what may be unpacked is decided by the same rules as for an image's layers
(:class:`job.formats.tree.ModelTree`): unsafe names, devices and fifos, and links leaving the archive are refused
with the entry's name; a link lists its target's bytes (or a directory's files) under its own name; a later entry
of the same name replaces an earlier one, as extracting does. Sizes come from the tar headers (pax ``size`` for
huge files) and the zip central directory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

from job.errors import SourceError
from job.formats.gzip import GZIP_MAGIC, inflate
from job.formats.shared_pass import PassInput, SharedPass
from job.formats.tar import RangedInput, TarEntry, scan_tar
from job.formats.tree import MAX_FILES, ModelTree, StreamedFiles
from job.formats.zip import RandomAccess, ZipEntry, open_zip_member, read_zip_entries
from job.http.client import HttpClient
from job.http.download import Download
from job.http.urls import display_url
from job.model import ObjectInfo
from job.streams import aiter_file, spool

log = logging.getLogger(__name__)

ArchiveKind = Literal["tar", "tar.gz", "zip"]
WINDOW = 64 * 1024
"""Bytes one ranged read for headers fetches: neighbouring small members cost no further request."""

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


Entry = TarEntry | ZipEntry


def _truncated(where: str, at: int) -> SourceError:
    return SourceError(f"unpacking {where}: the tar ends early (at byte {at} of its tar stream)", uri=where)


# --- random access: ranged GETs, or a spooled file ----------------------------------------------------------


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

    def __init__(self, ra: RandomAccess, where: str) -> None:
        self._ra = ra
        self._where = where

    def entries(self) -> AsyncGenerator[Entry, None]:
        return scan_tar(
            RangedInput(self._ra.read, self._ra.size, f"unpacking {self._where}"), f"unpacking {self._where}"
        )

    def open(self, e: Entry, offset: int) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._ra.stream(e.offset + offset, e.offset + e.size, f"reading {e.name} from {self._where}")

    async def close(self) -> None:
        await self._ra.close()


class _StreamedTar:
    """A tar or tar.gz read front to back, in one pass for the listing and the members opened as they are listed.

    The pass is a :class:`~job.formats.shared_pass.SharedPass` over the (decompressed) archive; the listing reads
    each header through it, and a member opened before the next header is asked for is read from it in between.
    A member opened later (a link's alias, a retried file, a reader that lists everything first) is behind the
    pass and restarts it (a warning: that is one more download).
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
        what = f"unpacking {self._where}"
        async with download.body() as chunks, aclosing(inflate(chunks, what, plain_passes=True)) as plain:
            self._etag = self._etag or download.etag  # the second pass must read the very archive the first listed
            yield plain

    async def entries(self) -> AsyncGenerator[Entry, None]:
        what = f"unpacking {self._where}"
        tar = PassInput(self._pass, "the next tar header")
        async for e in scan_tar(tar, what):
            yield e
        await self._pass.read_to_end(tar.position, "the end of the archive")  # gzip checks its CRC there

    def open(self, e: Entry, offset: int) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._pass.open(e.offset + offset, e.size - offset, e.name)

    async def close(self) -> None:
        await self._pass.close()
        if self._first is not None:
            await self._first.aclose()


class _Zip:
    """A zip read by random access (ranged GETs, or a spooled file)."""

    def __init__(self, ra: RandomAccess, where: str) -> None:
        self._ra = ra
        self._where = where

    def entries(self) -> AsyncGenerator[Entry, None]:
        return read_zip_entries(self._ra, self._where)

    def open(self, e: Entry, offset: int) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        assert isinstance(e, ZipEntry)
        return open_zip_member(self._ra, e, offset, self._where)

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
    one_pass = False
    """True once ``list()`` found the archive must be read as a stream (tar.gz, or a tar without ranges)."""

    def __init__(
        self,
        client: HttpClient,
        url: str,
        kind: ArchiveKind,
        *,
        storage_path: Path,
        first: Download | None = None,
        max_files: int = MAX_FILES,
    ) -> None:
        self.kind = kind
        self.max_files = max_files
        self.mode = ""
        """How it is read: ``ranged``, ``streamed`` or ``spooled`` (set by ``list()``)."""
        self._client = client
        self._url = url
        self._where = display_url(url)
        self._storage_path = storage_path
        self._first = first
        self._reader: _Reader | None = None
        self._members: dict[PurePosixPath, Entry] = {}

    async def _random_access(self) -> RandomAccess | None:
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
        if ra is not None and not (await ra.read(0, 2)).startswith(GZIP_MAGIC):  # a ".tar" can be gzipped
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
        """Yield the archive's files (links resolved), refusing unsafe entries as soon as they are read.

        Files come in archive order, then the files links name (ordered by their target's offset), so a streaming
        pass meets them in order, the links' on a second round.
        """
        self._reader = reader = await self._open_reader()
        self.one_pass = isinstance(reader, _StreamedTar)
        tree: ModelTree[Entry] = ModelTree(what=f"unpacking {self._where}", max_files=self.max_files)
        streamed = StreamedFiles(tree)  # one pass: each file as soon as its header is read
        async with aclosing(reader.entries()) as entries:
            async for e in entries:
                if not self.one_pass:
                    tree.add(e, e)
                elif (path := streamed.add(e, e)) is not None:
                    self._members[path] = e
                    yield ObjectInfo(path=path, size=e.size)
        files = sorted(streamed.rest(), key=lambda f: (f.alias, f.payload.offset))
        count = len(streamed.listed.keys() | {f.path for f in files})
        log.info("%s: %d files in the %s archive (read %s)", self._where, count, self.kind, self.mode)
        for f in files:
            self._members[f.path] = f.payload
            yield ObjectInfo(path=f.path, size=f.payload.size)

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
