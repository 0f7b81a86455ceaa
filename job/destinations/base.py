"""The destination half of the streaming contract.

Call order, made by the engine:
1. ``put(obj, data)`` once per file, several at a time (bounded by the engine's files semaphore).
   ``data`` is the source stream already wrapped by the engine (hashed, counted, errors tagged);
   the destination consumes it to the end or raises.
2. ``commit(uploaded)`` once, after every ``put`` succeeded, with the results in listing order:
   push a manifest, or nothing for S3. Returns what the registry records. Must be safe to repeat
   (a rerun of the same Job calls it again).
3. ``abort()`` at most once, instead of ``commit``, when anything failed or the job was cancelled:
   abort multipart uploads, drop upload sessions. It must not raise for what it cannot clean.
4. ``close()`` once at the end, whatever happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from job.sources.base import ObjectInfo


@dataclass(frozen=True, slots=True)
class Uploaded:
    """What one ``put`` wrote."""

    obj: ObjectInfo
    size: int
    sha256: str
    """``sha256:<hex>`` of the file's bytes, computed while they streamed."""
    extra: dict[str, str] = field(default_factory=dict)
    """Destination-specific facts (the layer digest of an OCI layer, an S3 version id, ...)."""


@dataclass(frozen=True, slots=True)
class Committed:
    """What the destination holds after ``commit``: recorded in the registry and the termination message."""

    uri: str
    digest: str | None = None
    """The manifest digest of an OCI image; ``None`` for S3."""


class Destination(Protocol):
    """Where the model goes."""

    async def put(self, obj: ObjectInfo, data: AsyncIterator[bytes]) -> Uploaded:
        """Write one file from its stream."""
        ...

    async def commit(self, uploaded: Sequence[Uploaded]) -> Committed:
        """Make the written files one model at the destination; safe to repeat."""
        ...

    async def abort(self) -> None:
        """Clean up after a failure; never raises."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
