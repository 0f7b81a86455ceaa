"""Async byte-stream helpers: the engine's checked stream, local-file reads, exact-size parts.

* :class:`CheckedStream` wraps one file's source stream exactly once, inside the engine. As chunks pass
  it counts them, reports them to progress, stops a source that sends more than it listed, and at the
  end checks the size; when the source listed a sha256 it also hashes them and checks that digest. Errors the
  source iterator raises become :class:`~job.errors.SourceError`, so a broken GET never looks like a
  failed push. Chunks are passed through as the same objects: no copy, no re-buffering.
* :func:`aiter_file` reads a local file in a worker thread, chunk by chunk, without blocking the loop;
  :func:`spool` is its other direction (the rare stream that must land on disk first).
* :class:`ChunkReader` cuts a chunk stream into exact-size parts for multipart uploads, splitting a
  chunk only where a part ends.

The whole-file sha256 is computed only when there is a listed digest to check it against. Every byte is
covered by a check anyway: an OCI layer's digest is the sha256 of the tar that holds the file, and an S3
part carries a checksum the server verifies; a second sha256 of the same bytes would cost CPU for nothing
(README, Performance). Hashing stays on the event loop's thread (README, Performance, says why).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from job.errors import IntegrityError, ModelSyncError, SourceError
from job.model import ObjectInfo
from job.redaction import redact_query
from job.retry import carry_retryability

MiB = 1024 * 1024
DEFAULT_CHUNK_SIZE = MiB
"""Read size for sources that choose one (local files); network sources pass on what arrives."""


def describe(exc: BaseException) -> str:
    """One line for a library exception: ``Type: message``, with URL query strings cut out.

    Query strings are dropped because a presigned URL carries its signature there.
    """
    text = redact_query(str(exc))
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class CheckedStream:
    """The engine's wrapper around one file's source stream; an ``AsyncIterator[bytes]``.

    Contract, as a destination sees it:

    * chunks arrive unchanged (same objects, same sizes) and never empty;
    * the stream never yields more than ``obj.size`` bytes: the chunk that would go past it raises
      :class:`IntegrityError` instead;
    * ``StopAsyncIteration`` comes only after the size (and a listed ``sha256:`` digest) checked out;
      a short read raises :class:`IntegrityError` instead of ending; the bytes are hashed only when
      the source listed such a digest or ``hash_all`` asks (a signed run), ``sha256`` is ``None`` otherwise;
    * an error raised by the source iterator arrives as :class:`SourceError` ("reading <path> from the
      source: <cause>"), with the original as ``__cause__``; a ``ModelSyncError`` the source raised
      arrives as it is. After an error every further ``__anext__`` raises the same error.

    A destination that reads exactly ``obj.size`` bytes and stops never sees the end checks; the engine
    calls :meth:`finish` after ``put`` returns to run them (and to catch a destination that stopped
    reading early).
    """

    __slots__ = ("_hash", "_limit", "_listed", "_next", "_on_chunk", "error", "exhausted", "obj", "path", "size")

    def __init__(
        self,
        obj: ObjectInfo,
        chunks: AsyncIterator[bytes],
        *,
        on_chunk: Callable[[int], None] | None = None,
        hash_all: bool = False,
    ) -> None:
        self.obj = obj
        self.path = str(obj.path)
        self.size = 0
        """Bytes passed on so far."""
        self.exhausted = False
        """True once the end was reached and checked."""
        self.error: ModelSyncError | None = None
        """The error this stream raised, if any: the engine prefers it to what ``put`` made of it."""
        self._next = chunks.__anext__
        digest = (obj.digest or "").lower()
        self._listed = digest if digest.startswith("sha256:") else None
        self._hash = hashlib.sha256() if self._listed is not None or hash_all else None
        self._limit = obj.size
        self._on_chunk = on_chunk

    @property
    def sha256(self) -> str | None:
        """``sha256:<hex>`` of the bytes passed on so far, when hashing (the source listed a sha256)."""
        return None if self._hash is None else "sha256:" + self._hash.hexdigest()

    def __aiter__(self) -> CheckedStream:
        return self

    async def __anext__(self) -> bytes:
        if self.error is not None:
            raise self.error
        if self.exhausted:
            raise StopAsyncIteration
        while True:
            try:
                chunk = await self._next()
            except StopAsyncIteration:
                break
            except ModelSyncError as exc:
                self.error = exc
                raise
            except Exception as exc:
                error = SourceError(f"reading {self.path} from the source: {describe(exc)}", path=self.path)
                self.error = carry_retryability(error, exc)
                raise error from exc
            n = len(chunk)
            if not n:
                continue  # an empty chunk means nothing; some clients read b"" as end of body
            self.size += n
            if self._limit is not None and self.size > self._limit:
                raise self._fail(
                    f"reading {self.path} from the source: it sent more than the {self._limit} bytes it "
                    f"listed (at least {self.size})"
                )
            if self._hash is not None:
                self._hash.update(chunk)
            if self._on_chunk is not None:
                self._on_chunk(n)
            return chunk
        self._check_end()
        self.exhausted = True
        raise StopAsyncIteration

    def _fail(self, message: str) -> IntegrityError:
        self.error = IntegrityError(message)
        return self.error

    def _check_end(self) -> None:
        if self._limit is not None and self.size != self._limit:
            raise self._fail(
                f"reading {self.path} from the source: got {self.size} bytes, expected {self._limit} "
                "(the stream ended early)"
            )
        if self._listed is not None and self._listed != self.sha256:
            raise self._fail(
                f"reading {self.path} from the source: its sha256 is {self.sha256}, the source listed {self._listed}"
            )

    async def finish(self) -> None:
        """Make sure the stream was read to its end and checked; called by the engine after ``put``.

        If the destination stopped at exactly ``obj.size`` bytes, this pulls once more from the source
        to see the end and run the checks. Raises :class:`IntegrityError` when the destination stopped
        reading before the end, or the error the stream already raised.
        """
        if self.error is not None:
            raise self.error
        if self.exhausted:
            return
        if self._limit is None or self.size == self._limit:
            try:
                await self.__anext__()
            except StopAsyncIteration:
                return
        raise self._fail(
            f"writing {self.path}: the destination stopped reading after {self.size} bytes"
            + (f" of {self._limit}" if self._limit is not None else ", before the end of the stream")
        )


def _open_at(path: str | os.PathLike[str], offset: int) -> BinaryIO:
    # buffering=0: FileIO.read(n) is one read(2) into a fresh bytes object, with no buffer copy.
    f: BinaryIO = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by aiter_file
    try:
        if offset:
            f.seek(offset)
    except BaseException:
        f.close()
        raise
    return f


def _close_when_done(f: BinaryIO, pending: asyncio.Future[bytes]) -> None:
    def close(done: asyncio.Future[bytes]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved, so asyncio does not log it as never retrieved
        f.close()

    pending.add_done_callback(close)


async def aiter_file(
    path: str | os.PathLike[str], chunk_size: int = DEFAULT_CHUNK_SIZE, offset: int = 0
) -> AsyncGenerator[bytes, None]:
    """Yield the bytes of a local file from ``offset`` in chunks of up to ``chunk_size``.

    Every ``open``/``read`` runs in the loop's default executor, so a slow volume never blocks the
    event loop. ``OSError`` propagates as it is (the PVC source maps it). Close the generator when you
    stop early (``contextlib.aclosing``): the file is closed then, or, if a read is still running in
    its thread, as soon as that read returns.
    """
    if chunk_size <= 0 or offset < 0:
        raise ValueError(f"chunk_size must be > 0 and offset >= 0, got {chunk_size} and {offset}")
    loop = asyncio.get_running_loop()
    f = await loop.run_in_executor(None, _open_at, path, offset)
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            pending = loop.run_in_executor(None, f.read, chunk_size)
            # shield: a cancelled consumer must not leave the thread reading a file we then close.
            chunk = await asyncio.shield(pending)
            pending = None
            if not chunk:
                return
            yield chunk
    finally:
        if pending is not None and not pending.done():
            _close_when_done(f, pending)
        else:
            f.close()


async def spool(chunks: AsyncIterator[bytes], f: BinaryIO, path: Path) -> int:
    """Write ``chunks`` to ``f`` (open for writing at ``path``), each write in a worker thread, then close it.

    Returns the bytes written. On any failure, cancellation included, the file is closed and removed.
    """
    size = 0
    try:
        with f:
            async for chunk in chunks:
                await asyncio.to_thread(f.write, chunk)
                size += len(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return size


class ChunkReader:
    """Cut a chunk stream into exact byte counts (multipart parts, fixed-size headers).

    Only the chunk that straddles a boundary is split (two slices); every other chunk passes through
    as it is. Consume each part fully before asking for the next one.
    """

    __slots__ = ("_eof", "_pending", "_stream", "consumed")

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self._pending = b""
        self._eof = False
        self.consumed = 0
        """Bytes handed out so far."""

    async def _chunk(self) -> bytes:
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        while not self._eof:
            try:
                chunk = await anext(self._stream)
            except StopAsyncIteration:
                self._eof = True
                break
            if chunk:
                return chunk
        return b""

    async def at_eof(self) -> bool:
        """True when the stream has no more bytes (reads ahead one chunk and keeps it)."""
        if not self._pending:
            self._pending = await self._chunk()
        return not self._pending

    async def iter_part(self, n: int) -> AsyncIterator[bytes]:
        """Yield the next ``n`` bytes as chunks; fewer only if the stream ends first."""
        remaining = n
        while remaining > 0:
            chunk = await self._chunk()
            if not chunk:
                return
            if len(chunk) > remaining:
                chunk, self._pending = chunk[:remaining], chunk[remaining:]
            remaining -= len(chunk)
            self.consumed += len(chunk)
            yield chunk

    async def read(self, n: int) -> bytes:
        """The next ``n`` bytes as one ``bytes`` (one join copy; none for a single chunk); fewer at the end."""
        return b"".join([chunk async for chunk in self.iter_part(n)])

    async def read_exactly(self, n: int) -> bytes:
        """The next ``n`` bytes; :class:`asyncio.IncompleteReadError` if the stream ends first."""
        data = await self.read(n)
        if len(data) != n:
            raise asyncio.IncompleteReadError(data, n)
        return data
