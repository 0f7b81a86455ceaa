"""Reading image layers without unpacking them: tar headers, gzip streams, and the tree under ``models/``.

* :func:`scan_tar` walks a tar stream header by header and never reads file contents: each member's
  data is skipped by offset arithmetic (``512 + size`` rounded up to a block). PAX extended headers
  (``x``, ``g``) and GNU long names (``L``, ``K``) are applied to the member that follows.
* Its input is a :class:`TarInput`. :class:`RangedInput` reads an uncompressed layer with ranged GETs
  through a small window (8 KiB, doubling while headers are dense, back to 8 KiB after a skip), so
  listing a layer holding one 10 GiB file downloads kilobytes. :class:`StreamInput` reads a stream once
  (a gzip layer through :func:`inflate`); skipping there means decompressing and dropping.
* :class:`ModelTree` applies the members of each layer in order, as the OCI image spec's changesets say:
  whiteouts (``.wh.<name>``, and ``.wh..wh..opq`` for a whole directory) first, against lower layers
  only, then the layer's entries, later layers winning. Only paths under the root (``models``) are kept.
  Entries with an absolute path or a ``..`` component are refused wherever they are (no real layer
  has them), and links are resolved at the end: a symlink or hardlink to a file (or a symlink to a
  directory) inside the root lists the target's bytes under the link's name; one leaving the root, or
  dangling, is refused with the entry's name.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from job.errors import SourceError
from job.model import safe_relative_path
from job.streams import ChunkReader

__all__ = ["FileLocation", "ModelTree", "RangedInput", "StreamInput", "TarMember", "inflate", "scan_tar"]

BLOCK = 512
MIN_WINDOW = 8 * 1024
MAX_WINDOW = 1024 * 1024
MAX_META = 1024 * 1024
"""Largest PAX header or GNU long name we read (real ones are a few hundred bytes)."""
MAX_HOPS = 40
"""Symlinks followed to resolve one path, as Linux's ELOOP limit."""
_INFLATE_PIECE = 1024 * 1024
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_NO_DATA = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)


def _blocks(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


@dataclass(frozen=True, slots=True)
class TarMember:
    """One tar entry: its name (after PAX/GNU long names), type, data size and data offset in the tar."""

    name: str
    type: bytes
    size: int
    offset: int
    linkname: str = ""


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
        """Move ``n`` bytes forward without keeping them."""
        ...


class RangedInput:
    """An uncompressed blob of ``size`` bytes read through ``fetch(start, length)`` (a ranged GET)."""

    def __init__(self, fetch: Callable[[int, int], Awaitable[bytes]], size: int) -> None:
        self._fetch = fetch
        self._size = size
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
        self.position += n


class StreamInput:
    """A tar stream read once from an async byte iterator."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._reader = ChunkReader(chunks)

    @property
    def position(self) -> int:
        return self._reader.consumed

    async def read(self, n: int) -> bytes:
        return await self._reader.read(n)

    async def skip(self, n: int) -> None:
        async for _ in self._reader.iter_part(n):
            pass

    def iter_part(self, n: int) -> AsyncIterator[bytes]:
        """The next ``n`` bytes as chunks (a member's data)."""
        return self._reader.iter_part(n)


async def inflate(chunks: AsyncIterator[bytes], what: str) -> AsyncGenerator[bytes, None]:
    """Decompress a gzip stream (several members allowed) in pieces of at most 1 MiB."""
    decoder = zlib.decompressobj(wbits=31)
    fed = False
    try:
        async for chunk in chunks:
            data = chunk
            while data:
                fed = True
                out = decoder.decompress(data, _INFLATE_PIECE)
                if out:
                    yield out
                if decoder.eof:
                    data = decoder.unused_data
                    decoder, fed = zlib.decompressobj(wbits=31), False
                    if not data.strip(b"\0"):
                        break  # zero padding after the last member
                    continue
                data = decoder.unconsumed_tail
                while not data and len(out) == _INFLATE_PIECE:  # output still buffered in zlib
                    out = decoder.decompress(b"", _INFLATE_PIECE)
                    if out:
                        yield out
    except zlib.error as exc:
        raise SourceError(f"{what}: the gzip stream is corrupt: {exc}") from exc
    if fed and not decoder.eof:
        raise SourceError(f"{what}: the gzip stream ends early")


def _pax(data: bytes, what: str) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos : pos + 1] != b"\0":
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise SourceError(f"{what}: bad PAX header record at byte {pos}") from None
        if space < 0 or length <= 0 or pos + length > len(data):
            raise SourceError(f"{what}: bad PAX header record at byte {pos}")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


async def scan_tar(source: TarInput, what: str) -> AsyncIterator[TarMember]:
    """Yield the members of the tar in ``source`` without reading their data."""
    global_pax: dict[str, str] = {}
    pax: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    while True:
        block = await source.read(BLOCK)
        if len(block) < BLOCK or block == bytes(BLOCK):
            if block.strip(b"\0"):
                raise SourceError(f"{what}: the tar ends inside a header at byte {source.position - len(block)}")
            return  # end-of-archive marker (or a tar that simply stops at a block boundary)
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise SourceError(f"{what}: bad tar header at byte {source.position - BLOCK}: {exc}") from None
        if info.type in (
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
        ):
            if info.size > MAX_META:
                raise SourceError(f"{what}: a tar extended header of {info.size} bytes is too large")
            data = (await source.read(_blocks(info.size)))[: info.size]
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                long_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif info.type == tarfile.XGLTYPE:
                global_pax.update(_pax(data, what))
            else:
                pax.update(_pax(data, what))
            continue
        records = {**global_pax, **pax}
        size = int(records["size"]) if "size" in records else info.size
        member = TarMember(
            name=records.get("path") or long_name or info.name,
            type=info.type,
            size=size,
            offset=source.position,
            linkname=records.get("linkpath") or long_link or info.linkname,
        )
        pax, long_name, long_link = {}, None, None
        yield member
        if member.type not in _NO_DATA:
            await source.skip(_blocks(size))


@dataclass(frozen=True, slots=True)
class FileLocation:
    """Where a file's bytes are: layer ``layer`` (its index), ``offset`` in the uncompressed tar, ``size``."""

    layer: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class _Node:
    kind: str  # "file", "dir", "symlink"
    entry: str  # the archive name, for messages
    location: FileLocation | None = None
    target: str = ""


class ModelTree:
    """The files under ``root`` after applying layers in order (see the module docstring)."""

    def __init__(self, root: str = "models", *, what: str = "image") -> None:
        self.root = root
        self.what = what
        self._nodes: dict[str, _Node] = {}

    def _inside(self, path: str) -> bool:
        return not self.root or path == self.root or path.startswith(self.root + "/")

    def _refuse(self, entry: str, why: str) -> SourceError:
        return SourceError(f"reading {self.what}: refusing tar entry {entry!r}: {why}", path=entry)

    def _normalize(self, name: str) -> str:
        if name.startswith("/"):
            raise self._refuse(name, "absolute paths are not allowed")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._refuse(name, "'..' would escape the image root")
        return "/".join(parts)

    def _remove(self, path: str, *, keep_self: bool = False) -> None:
        prefix = path + "/" if path else ""
        for key in [k for k in self._nodes if k.startswith(prefix) or (k == path and not keep_self)]:
            del self._nodes[key]

    def _put(self, path: str, node: _Node) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):  # a parent that was a file or a link becomes a directory
            parent = "/".join(parts[:i])
            existing = self._nodes.get(parent)
            if existing is not None and existing.kind != "dir":
                self._remove(parent)
        existing = self._nodes.get(path)
        if node.kind == "dir" and existing is not None and existing.kind == "dir":
            return  # directories merge
        self._remove(path)
        self._nodes[path] = node

    def apply(self, layer: int, members: Sequence[TarMember]) -> None:
        """Apply one layer's members on top of the layers applied before."""
        named = [(self._normalize(m.name), m) for m in members]
        for path, _ in named:  # whiteouts hide lower layers only, so they go first
            parent, _, base = path.rpartition("/")
            if base == ".wh..wh..opq":
                self._remove(parent, keep_self=True)
            elif base.startswith(".wh."):
                self._remove(f"{parent}/{base[4:]}" if parent else base[4:])
        for path, member in named:
            if not path or path.rpartition("/")[2].startswith(".wh.") or not self._inside(path):
                continue
            if member.type == tarfile.DIRTYPE:
                self._put(path, _Node("dir", member.name))
            elif member.type in _FILE_TYPES:
                self._put(path, _Node("file", member.name, FileLocation(layer, member.offset, member.size)))
            elif member.type == tarfile.SYMTYPE:
                self._put(path, _Node("symlink", member.name, target=member.linkname))
            elif member.type == tarfile.LNKTYPE:
                target = self._normalize(member.linkname)
                node = self._nodes.get(target)
                if not self._inside(target) or node is None or node.kind != "file":
                    raise self._refuse(
                        member.name, f"hard link to {member.linkname!r}, which is not a file under /{self.root}"
                    )
                self._put(path, node)
            elif member.type == tarfile.GNUTYPE_SPARSE:
                raise self._refuse(member.name, "sparse files are not supported")
            # devices and fifos are not model files: ignored

    def _join(self, base: str, target: str, entry: str) -> str:
        parts = [] if target.startswith("/") else [p for p in base.split("/") if p]
        for part in target.split("/"):
            if part == "..":
                if not parts:
                    raise self._refuse(entry, f"symlink to {target!r} leaves the image root")
                parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        return "/".join(parts)

    def _resolve(self, path: str, hops: int = 0) -> str:
        """``path`` with every symlink in it followed; refuses links that leave the root or loop."""
        current = ""
        for part in path.split("/"):
            candidate = f"{current}/{part}" if current else part
            node = self._nodes.get(candidate)
            if node is not None and node.kind == "symlink":
                if hops >= MAX_HOPS:
                    raise self._refuse(node.entry, "too many levels of symbolic links")
                target = self._join(current, node.target, node.entry)
                if not self._inside(target):
                    raise self._refuse(node.entry, f"symlink to {node.target!r} points outside /{self.root}")
                candidate = self._resolve(target, hops + 1)
            current = candidate
        return current

    def _relative(self, path: str) -> PurePosixPath:
        rel = path[len(self.root) + 1 :] if self.root else path
        return safe_relative_path(rel, what=f"file in {self.what}")

    def files(self) -> dict[PurePosixPath, FileLocation]:
        """Every file under the root, by path relative to it, links resolved; sorted by path."""
        root = self._nodes.get(self.root) if self.root else None
        if root is not None and root.kind != "dir":
            raise self._refuse(root.entry, f"/{self.root} must be a directory")
        found: dict[PurePosixPath, FileLocation] = {}
        for path, node in sorted(self._nodes.items()):
            if node.kind == "file" and node.location is not None:
                found[self._relative(path)] = node.location
            elif node.kind == "symlink":
                final = self._resolve(path)
                target = self._nodes.get(final)
                below = [(sub, child) for sub, child in self._nodes.items() if sub.startswith(final + "/")]
                if target is not None and target.location is not None:
                    found[self._relative(path)] = target.location
                elif (target is not None and target.kind == "dir") or below:  # a directory (maybe implicit)
                    for sub, child in below:  # its files, under the link's name
                        if child.location is not None:
                            found[self._relative(path + sub[len(final) :])] = child.location
                else:
                    raise self._refuse(node.entry, f"dangling symlink to {node.target!r}")
        return dict(sorted(found.items()))
