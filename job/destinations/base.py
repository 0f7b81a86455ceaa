"""The destination half of the streaming contract.

Call order, made by the engine:
00. ``plan(objects)`` once, with the whole listing: how the files are grouped. A group of one file is
   written by ``lookup``/``put`` below; a group of several (an OCI layer that holds several files) by
   ``lookup_group``/``put_group``, which are the same steps for the group as one unit. A destination
   that writes file by file inherits :class:`OneFilePerPut`.
   A ``one_pass`` source (a tar.gz read once) is planned as it is listed instead: ``groups_ahead()`` says how
   many files may be planned one at a time, each with ``plan([obj], taken=n)`` (``n`` groups already
   planned so) as soon as it is listed, and those listed beyond that number are planned together once the
   listing ends, ``plan(rest, taken=n)``. ``plan`` must keep what it checks across the calls of one run.
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

``put_group(objs, files)`` gets the files of its group as ``(obj, stream)`` pairs from ``files``, in
``objs``' order; it reads each stream to its end before taking the next pair (the engine opens a file's
source only when its pair is taken, so one source is open per group), and returns one ``Uploaded`` per
file. A retryable failure retries the whole group, from its first file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from job.model import Committed, ObjectInfo, Uploaded

FileFeed = AsyncIterator[tuple[ObjectInfo, AsyncIterator[bytes]]]
"""The files of a group, each with its stream, in the group's order (see ``put_group``)."""


class Destination(Protocol):
    """Where the model goes."""

    async def plan(self, objects: Sequence[ObjectInfo], *, taken: int = 0) -> Sequence[Sequence[ObjectInfo]]:
        """The listing's files in groups, each file in exactly one; groups in the order to start them.

        ``taken``: groups already planned for this model (files planned one at a time while a one-pass source
        listed them): the plan has that many fewer to give."""
        ...

    async def groups_ahead(self) -> int | None:
        """How many files may be planned one per group before the listing is known whole; None: any number."""
        ...

    async def lookup_group(self, objs: Sequence[ObjectInfo]) -> list[Uploaded] | None:
        """What an earlier try already wrote for the whole group, one per file, or None: send it."""
        ...

    async def put_group(self, objs: Sequence[ObjectInfo], files: FileFeed) -> list[Uploaded]:
        """Write the files of one group from their streams, taken from ``files`` in order."""
        ...

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


class OneFilePerPut:
    """For a destination that writes each file on its own (S3): every group holds one file."""

    async def plan(self, objects: Sequence[ObjectInfo], *, taken: int = 0) -> Sequence[Sequence[ObjectInfo]]:
        return [[obj] for obj in objects]

    async def groups_ahead(self) -> int | None:
        return None

    async def lookup_group(self, objs: Sequence[ObjectInfo]) -> list[Uploaded] | None:
        raise TypeError(f"{type(self).__name__} writes one file per put; it has no groups")

    async def put_group(self, objs: Sequence[ObjectInfo], files: FileFeed) -> list[Uploaded]:
        raise TypeError(f"{type(self).__name__} writes one file per put; it has no groups")
