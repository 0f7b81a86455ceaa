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
- A ``one_pass`` source (below) is listed and opened in step: the engine opens each file right after it
  is listed; a file opened later (a retry) is still served, by reading the source again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from job.model import ObjectInfo


class Source(Protocol):
    """Where the model comes from."""

    seekable: bool
    """Capability: ``open(obj, offset=n)`` reads from byte ``n`` cheaply (a ranged GET, a seek), so the engine
    resumes a read that broke mid-file there rather than sending the file again (``job.engine.resume``). Every
    source states it (True only when an offset read works), and a wrapper passes its inner source's on."""

    @property
    def one_pass(self) -> bool:
        """Capability: ``list()`` reads the files' bytes as it lists them (a tar.gz has no random access), and a
        file opened as soon as it is listed, before the listing is asked for the next, is served from that same
        read. The engine then puts each file as it is listed, and the source is read once instead of twice. It
        may turn True during ``list()`` (an archive learns how it is read from its first answer): the engine
        reads it once the first file is listed. A wrapper passes its inner source's on."""
        ...

    def list(self) -> AsyncIterator[ObjectInfo]:
        """Yield every file of the model once."""
        ...

    def open(self, obj: ObjectInfo, *, offset: int = 0) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Open one listed file for reading from ``offset``."""
        ...

    async def close(self) -> None:
        """Release connections; called once by the engine."""
        ...
