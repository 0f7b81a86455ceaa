"""One front-to-back pass over a stream without random access, shared by every file that lives in it.

A tar.gz at a URL, or a gzip layer of an image holding a whole model (what ``docker build`` with
``COPY models/ /models/`` pushes), has no random access: reaching a file means decompressing everything
before it. Opening each file with a new stream reads the stream once per file, which for n files costs
about n/2 times the stream. :class:`SharedPass` serves the files from *one* pass instead:

* each ``open(start, size)`` takes a ticket (synchronously, so tickets follow the engine's open order);
* the ticket with the nearest target at or ahead of the pass reads next, once the pass is free (an
  elevator): it skips forward to its start and reads its bytes straight from the stream, then frees the
  pass, so nothing is buffered beyond one chunk and the pass advances only as fast as its reader;
* a target behind the pass (a link's alias, a retried file) restarts the stream from its start, with a
  warning, and only once nothing queued is ahead, so members then aliases cost one restart, not one each.

A reader that stops between chunks leaves the pass in step; one that fails inside a read breaks it, and
the next reader starts over. Used by ``job.sources.archive`` (tar.gz at a URL) and ``job.sources.oci``
(gzip layers).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from job.errors import SourceError
from job.streams import ChunkReader

log = logging.getLogger(__name__)

__all__ = ["PassInput", "SharedPass"]


class SharedPass:
    """Serve byte ranges of a stream from one shared front-to-back pass (see the module docstring).

    ``open_stream()`` opens the stream from its start each time the pass (re)starts; ``where`` and ``what``
    name it in messages ("<where>: reading <what> again ..."); ``truncated(position)`` is the error for a
    stream that ends before a range does. With ``end`` (where the last range ends) the stream is closed as
    soon as the pass has reached it and nothing is queued, so a finished pass holds no connection; with
    ``read_to_the_end`` too, the stream is first read to its very end within the last range's read, so that a
    stream checking itself at its end (a blob against its digest) fails that read rather than nobody.
    """

    def __init__(
        self,
        open_stream: Callable[[], AbstractAsyncContextManager[AsyncIterator[bytes]]],
        where: str,
        what: str = "the stream",
        *,
        truncated: Callable[[int], SourceError] | None = None,
        end: int | None = None,
        read_to_the_end: bool = False,
    ) -> None:
        self._open_stream = open_stream
        self._where = where
        self._what = what
        self._end = end
        self._read_to_the_end = read_to_the_end
        self._truncated = truncated or self._default_truncated
        self._tickets = itertools.count()
        self._queue: dict[int, int] = {}  # ticket -> target offset
        self._owner: int | None = None
        self._changed = asyncio.Event()
        self._stack: AsyncExitStack | None = None
        self._reader: ChunkReader | None = None
        self._pos = 0
        self._broken = False
        self.passes = 0
        """How many times the stream was opened (1 when every range was met in order)."""

    def set_end(self, end: int, *, read_to_the_end: bool = False) -> None:
        """``end`` and ``read_to_the_end`` (see the class docstring), once known: after a pass that also listed."""
        self._end, self._read_to_the_end = end, read_to_the_end

    def _default_truncated(self, position: int) -> SourceError:
        return SourceError(f"{self._where}: {self._what} ends early (at byte {position})", uri=self._where)

    @asynccontextmanager
    async def open(
        self, start: int, size: int, name: str, *, exact: bool = True
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The ``size`` bytes at ``start`` of the stream, as chunks; ``name`` is for the restart warning.

        The ticket is taken when the context is entered, before any await: the engine's open order is kept, and
        a pass that is also listing (``read``) serves a file opened as soon as it was listed before it reads on.
        ``exact=False``: a stream that ends within the range is not an error (the range is cut there)."""
        ticket = next(self._tickets)
        self._queue[ticket] = start  # queued before any await: the engine's open order is kept
        chunks = self._range(ticket, start, size, name, exact)
        try:
            yield chunks
        finally:
            await chunks.aclose()
            self._release(ticket)
            if self._end is not None and self._pos >= self._end and not self._queue and self._reader is not None:
                await self.close()  # done: a later range behind the pass would restart it anyway

    async def read(self, start: int, n: int, name: str) -> bytes:
        """The ``n`` bytes at ``start`` as one ``bytes``, fewer only where the stream ends, taking a ticket like
        :meth:`open` (a tar header read between the members it lists). A stream that ends before ``start`` is
        ``truncated``: what lay between was skipped as some member's data, and that member was cut short."""
        async with self.open(start, n, name, exact=False) as chunks:
            return b"".join([chunk async for chunk in chunks])

    async def read_to_end(self, start: int, name: str) -> None:
        """Read and drop the stream from ``start`` to its very end, so that a stream checking itself there (gzip's
        CRC and length) does so now; a ticket like :meth:`open`."""
        async with self.open(start, 1 << 62, name, exact=False) as chunks:
            async for _ in chunks:
                pass

    def _release(self, ticket: int) -> None:
        self._queue.pop(ticket, None)
        if self._owner == ticket:
            self._owner = None
        self._changed.set()
        self._changed = asyncio.Event()

    def _next_ticket(self) -> int:
        return min(self._queue, key=lambda t: (self._queue[t] < self._pos, self._queue[t], t))

    async def _range(self, ticket: int, start: int, size: int, name: str, exact: bool) -> AsyncGenerator[bytes, None]:
        while self._owner is not None or self._next_ticket() != ticket:
            changed = self._changed
            await changed.wait()
        self._owner = ticket
        try:
            if self._reader is None or self._broken or self._pos > start:
                await self._restart(name)
            assert self._reader is not None
            async for chunk in self._reader.iter_part(start - self._pos):
                self._pos += len(chunk)
            if self._pos < start:
                raise self._truncated(self._pos)
            remaining = size
            async for chunk in self._reader.iter_part(remaining):
                self._pos += len(chunk)
                remaining -= len(chunk)
                yield chunk
            if remaining and exact:
                raise self._truncated(self._pos)
            if self._read_to_the_end and self._end is not None and self._pos >= self._end:
                # The last range is served: read the rest too, so that a stream that checks itself at its end
                # (a blob against its digest) does so before the last reader's stream ends.
                async for chunk in self._reader.iter_part(1 << 62):
                    self._pos += len(chunk)
        except GeneratorExit:
            raise  # the reader stopped at a yield: the pass is still in step
        except BaseException:
            self._broken = True  # stopped inside a read: start over for the next range
            raise
        finally:
            self._release(ticket)

    async def _restart(self, name: str) -> None:
        await self.close()
        self.passes += 1
        if self.passes > 1:
            log.warning("%s: reading %s again from its start to reach %s", self._where, self._what, name)
        self._stack = AsyncExitStack()
        self._reader = ChunkReader(await self._stack.enter_async_context(self._open_stream()))
        self._pos = 0
        self._broken = False

    async def close(self) -> None:
        """Close the stream of the current pass, if one is open."""
        stack, self._stack, self._reader = self._stack, None, None
        if stack is not None:
            await stack.aclose()


class PassInput:
    """Small reads at a moving position of a shared pass (a tar's headers between the members it lists).

    Nothing is read ahead: the bytes between two reads are the reader's of whatever range was opened there, or
    skipped by the next read (the pass moves forward to it) when nobody opened them. ``job.formats.tar.TarInput``.
    """

    def __init__(self, shared: SharedPass, what: str) -> None:
        self._pass = shared
        self._what = what
        self.position = 0

    async def read(self, n: int) -> bytes:
        data = await self._pass.read(self.position, n, self._what)
        self.position += len(data)
        return data

    async def skip(self, n: int) -> None:
        self.position += n  # a stream that ends within the skipped bytes fails the next read (truncated)
