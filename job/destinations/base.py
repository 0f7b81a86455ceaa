"""The destination half of the streaming contract.

Call order, made by the engine:
0. ``lookup(obj)`` once per file before it is read: the ``Uploaded`` an earlier try of the job
   already wrote for ``obj`` (same path, size and source identity, see ``job.model.source_identity``),
   or None. A file found is neither read nor put; its ``Uploaded.size`` must be ``obj.size``.
1. ``put(obj, data)`` once per file, several at a time (at most ``parallel_files``: the engine's workers).
   ``data`` is the source stream already wrapped by the engine (hashed, counted, errors tagged);
   the destination consumes it to the end or raises. The stream never yields more than ``obj.size``
   bytes and raises ``IntegrityError`` instead of ending on a short read or a listed digest that does
   not match; errors it raises must propagate out of ``put`` (the engine prefers the stream's own error
   to whatever a client library wrapped it in). A destination that reads exactly ``obj.size`` bytes and
   stops is fine: the engine finishes the stream after ``put`` returns and runs the end checks then.
   The returned ``Uploaded.size`` must equal the bytes consumed; the engine checks it. A ``put`` that
   raises a retryable error (``job.retry``) may be called again for the same file with a new stream
   from its start: it must not leave the failed upload in the way (abort the multipart upload, cancel
   the upload session) unless it was cancelled, in which case ``abort()`` cleans up.
2. ``commit(uploaded)`` once, after every ``put`` succeeded, with the results in listing order:
   push a manifest, or nothing for S3. Returns what the registry records. Must be safe to repeat
   (a rerun of the same Job calls it again).
3. ``abort()`` at most once, instead of ``commit`` (or after a ``commit`` that raised), when anything
   failed or the job was cancelled, after every ``put`` has returned or unwound:
   abort multipart uploads, drop upload sessions. It must not raise for what it cannot clean.
4. ``close()`` once at the end, whatever happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from job.model import Committed, ObjectInfo, Uploaded


class Destination(Protocol):
    """Where the model goes."""

    async def lookup(self, obj: ObjectInfo) -> Uploaded | None:
        """What an earlier try already wrote for ``obj`` (step 0 above), or None: send it. A destination
        that cannot tell returns None."""
        ...

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
