"""Reading one file from the source, resumed where it broke: the engine's middle retry unit.

The engine retries in steps, smallest first (``job.retry``): each client retries its own *requests*; an S3
*part* is one request with its bytes in memory; this module retries a *file's read*; the engine sends a
*file* again from its start when that is not enough (``job.engine.transfer``).

:class:`SourceReader` is the chunk iterator the engine wraps in its :class:`~job.streams.CheckedStream`. It
opens the file through :func:`open_source` (library errors from opening or closing tagged as
``SourceError``, with their retryability carried over) and passes the chunks on. When the read breaks with a
retryable error (a reset connection, a body cut short, a read timeout: ``job.retry.is_retryable``) and the
source is ``seekable`` (a ranged GET or a seek reads from byte n: S3, OCI, pvc), it closes that read and
opens the file again at the offset reached, at most ``attempts - 1`` times per file, waiting as the retry
policy says (``Retry-After`` first). The destination sees one unbroken stream; the engine's hash and byte
count carry on over the seam, so the file's sha256 and size are still checked end to end.

The listed version is kept across the seam: the S3 source reopens with ``If-Match`` on the listed ETag and
checks the answer's ETag and length, the pvc source compares the file's stat with the listing, and OCI
blobs are addressed by digest. A file that changed meanwhile is a (not retryable) ``SourceError``, never
a model of two versions.

Sources that resume on their own (http with ``Range``, in ``job.sources.uri``) are not ``seekable`` here:
their reads break only when they could not resume, and the engine then sends the file again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from job.errors import ModelSyncError, SourceError
from job.model import ObjectInfo
from job.retry import RetrySettings, carry_retryability, is_retryable
from job.sources.base import Source
from job.streams import describe

__all__ = ["SourceReader", "open_source"]

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_source(source: Source, obj: ObjectInfo, *, offset: int = 0) -> AsyncIterator[AsyncIterator[bytes]]:
    """Open one listed file at the source, tagging library errors from opening or closing it."""
    path = str(obj.path)
    body_done = False
    try:
        async with AsyncExitStack() as stack:
            try:
                chunks = await stack.enter_async_context(source.open(obj, offset=offset))
            except ModelSyncError:
                raise
            except Exception as exc:
                error = SourceError(f"opening {path} at the source: {describe(exc)}", path=path)
                raise carry_retryability(error, exc) from exc
            yield chunks
            body_done = True
    except Exception as exc:
        if body_done and not isinstance(exc, ModelSyncError):  # raised while closing the source stream
            error = SourceError(f"closing {path} at the source: {describe(exc)}", path=path)
            raise carry_retryability(error, exc) from exc
        raise


class SourceReader:
    """One file's chunks from ``source``, reopened at the offset reached when a read breaks (module doc).

    An ``AsyncIterator[bytes]``; :meth:`start` opens the file (so an opening error surfaces before the
    destination starts an upload), the first ``__anext__`` does if it was not called. Call
    :meth:`aclose` when done, read to the end or not. Errors the source raises propagate unchanged once
    no resume is left; ``resumes`` counts the reopenings.
    """

    def __init__(self, source: Source, obj: ObjectInfo, retry: RetrySettings) -> None:
        self.source = source
        self.obj = obj
        self.retry = retry
        self.offset = 0
        """Bytes passed on so far: where a reopened read starts."""
        self.resumes = 0
        self._seekable = source.seekable
        self._stack: AsyncExitStack | None = None
        self._chunks: AsyncIterator[bytes] | None = None

    async def start(self) -> None:
        """Open the file at ``offset`` (a no-op when it is open)."""
        if self._chunks is None:
            stack = AsyncExitStack()
            self._chunks = await stack.enter_async_context(open_source(self.source, self.obj, offset=self.offset))
            self._stack = stack

    def __aiter__(self) -> SourceReader:
        return self

    async def __anext__(self) -> bytes:
        while True:
            try:
                await self.start()
                assert self._chunks is not None
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                raise
            except Exception as exc:
                if not self._may_resume(exc):
                    raise
                await self.aclose_quietly()
                self.resumes += 1
                wait = self.retry.wait_for(self.resumes, exc)
                log.warning(
                    "reading %s from the source broke at byte %d (%s); resuming there in %.1fs (%d of %d)",
                    self.obj.path, self.offset, _cause(exc), wait, self.resumes, self.retry.attempts - 1,
                )  # fmt: skip
                await asyncio.sleep(wait)
                continue
            self.offset += len(chunk)
            return chunk

    def _may_resume(self, exc: Exception) -> bool:
        return self._seekable and self.resumes < self.retry.attempts - 1 and is_retryable(exc)

    async def aclose_quietly(self) -> None:
        """Close the current read after a failure; an error from closing it is logged, not raised."""
        stack, self._stack, self._chunks = self._stack, None, None
        if stack is not None:
            try:
                await stack.aclose()
            except Exception as exc:  # the read already failed: closing what is left of it may fail too
                log.debug("closing the broken read of %s: %s", self.obj.path, describe(exc))

    async def aclose(self) -> None:
        """Close the current read, if any; errors from closing it propagate (as ``SourceError``)."""
        stack, self._stack, self._chunks = self._stack, None, None
        if stack is not None:
            await stack.aclose()


def _cause(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ModelSyncError) else describe(exc)
