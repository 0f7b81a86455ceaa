"""Shared types below every backend and the engine: what a source lists, what a destination wrote and holds.

Nothing here imports from the rest of ``job`` except the error types: sources, destinations, protocols and the
engine all build on these.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath

from job.errors import SourceError

__all__ = ["Committed", "ObjectInfo", "Uploaded", "safe_relative_path", "sha256_digest", "source_identity"]


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


@dataclass(frozen=True, slots=True)
class Uploaded:
    """What one ``put`` wrote."""

    obj: ObjectInfo
    size: int
    sha256: str | None = None
    """``sha256:<hex>`` of the file's bytes when something computed it, else None.

    The engine hashes a file only when its source listed a sha256 (to check it); a destination that
    hashes what it wrote reports that, and the engine compares the two when both exist and fills in its
    own when the destination left None. Neither destination needs the whole-file hash (an OCI layer
    has its own digest, S3 parts their own checksums), so a file from a source that lists no sha256 is
    not hashed twice, nor once for nothing. For a file ``lookup`` found (not read this run) it is what
    the destination recorded, or None.
    """
    detail: object = None
    """The destination's own typed record of what it wrote, which it reads back in ``commit`` (an OCI
    destination's :class:`~job.oci.modelcar.LayerDescriptor`, an S3 destination's ``S3Object``); the engine
    never reads it."""
    skipped: bool = False
    """``lookup`` found it from an earlier try: nothing was sent this run."""


@dataclass(frozen=True, slots=True)
class Committed:
    """What the destination holds after ``commit``: recorded in the registry and the termination message."""

    uri: str
    digest: str | None = None
    """The manifest digest of an OCI image; ``None`` for S3."""
    storage_path: str | None = None
    """The artifact's ``storagePath`` where a serving layer needs it beside a storage key (the key prefix of
    an S3 destination, as ModelMesh's ``storage: {key, path}`` takes it); ``None`` where the uri says all."""
    signature: str | None = None
    """``sha256:`` of the ``model.sig`` a signed run wrote; ``None`` when the run did not sign."""


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``: an OCI digest, and the form every whole-file sha256 takes here."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def safe_relative_path(raw: str, *, what: str = "path") -> PurePosixPath:
    """Return ``raw`` as a relative POSIX path, or raise SourceError if it could escape the model root.

    Rejects absolute paths, ``..`` components, empty names, backslashes and control characters (a name with a
    line break would forge log lines, and lands at the destination as it is); strips a leading ``./``. The
    message shows the name escaped (``repr``), so it stays one line.
    """
    if "\\" in raw or any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise SourceError(f"refusing {what} {raw!r}: it contains a control character or a backslash")
    path = PurePosixPath(raw)
    if path.is_absolute():
        raise SourceError(f"refusing {what} {raw!r}: absolute paths are not allowed")
    parts = [p for p in path.parts if p != "."]
    if not parts:
        raise SourceError(f"refusing {what} {raw!r}: it names no file")
    if ".." in parts:
        raise SourceError(f"refusing {what} {raw!r}: '..' would escape the model root")
    return PurePosixPath(*parts)
