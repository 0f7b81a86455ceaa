"""The source half of the streaming contract.

A source first *lists* what it holds, so the engine knows every file and size before any byte
moves, then *opens* each object as an async iterator of byte chunks.

Contract:
- ``list()`` yields each file once, with a validated relative path (no ``..``, no leading ``/``).
- ``open(obj, offset=n)`` yields the object's bytes from ``n`` to its end, in chunks of whatever size
  arrives (no re-buffering). A source that cannot seek raises ``SourceError`` for ``offset > 0``.
- The engine, not the source, counts bytes and checks them against ``obj.size``: a stream that ends
  early is an ``IntegrityError`` raised by the engine.
- ``close()`` releases clients and sessions; the engine calls it once, after the transfer.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from job.errors import SourceError


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One file of the model, as a source lists it."""

    path: PurePosixPath
    """Relative path inside the model tree; validated by :func:`safe_relative_path`."""
    size: int | None
    """Byte size; ``None`` only where the source cannot know it (http without Content-Length)."""
    digest: str | None = None
    """``sha256:<hex>`` when the source already knows it (OCI layers, some S3 objects)."""
    etag: str | None = None
    """The source's version marker (S3 ETag, http ETag): a change between list and open is an error."""


def source_identity(obj: ObjectInfo) -> str | None:
    """A short ASCII string naming this exact version of the file at its source, or None when none is known.

    The listed ``sha256:`` digest when there is one, else ``etag:<ETag>`` (a strong ETag only: a weak one
    promises equivalent, not equal, bytes). A destination stores it with what it wrote, so that a rerun
    recognises a file an earlier try already sent (same path, size and identity) and does not send it
    again; rsync's quick check (size and mtime) is the same idea, and the pvc source's ETag is its stat.
    """
    if obj.digest:
        return obj.digest.lower()
    etag = obj.etag
    if not etag or etag.startswith("W/"):
        return None
    if len(etag) > 200 or not (etag.isascii() and etag.isprintable()):
        return "etag-sha256:" + hashlib.sha256(etag.encode("utf-8", "surrogateescape")).hexdigest()
    return "etag:" + etag


class Source(Protocol):
    """Where the model comes from."""

    seekable: bool
    """Capability: ``open(obj, offset=n)`` reads from byte ``n`` cheaply (a ranged GET, a seek), so the engine
    resumes a read that broke mid-file there rather than sending the file again (``job.engine.resume``). Every
    source states it (True only when an offset read works), and a wrapper passes its inner source's on."""

    def list(self) -> AsyncIterator[ObjectInfo]:
        """Yield every file of the model once."""
        ...

    def open(self, obj: ObjectInfo, *, offset: int = 0) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Open one listed file for reading from ``offset``."""
        ...

    async def close(self) -> None:
        """Release connections; called once by the engine."""
        ...


def safe_relative_path(raw: str, *, what: str = "path") -> PurePosixPath:
    """Return ``raw`` as a relative POSIX path, or raise SourceError if it could escape the model root.

    Rejects absolute paths, ``..`` components, empty names and NUL bytes; strips a leading ``./``.
    """
    if "\x00" in raw or "\\" in raw:
        raise SourceError(f"refusing {what} {raw!r}: it contains a NUL byte or a backslash")
    path = PurePosixPath(raw)
    if path.is_absolute():
        raise SourceError(f"refusing {what} {raw!r}: absolute paths are not allowed")
    parts = [p for p in path.parts if p != "."]
    if not parts:
        raise SourceError(f"refusing {what} {raw!r}: it names no file")
    if ".." in parts:
        raise SourceError(f"refusing {what} {raw!r}: '..' would escape the model root")
    return PurePosixPath(*parts)
