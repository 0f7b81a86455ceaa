"""One long read as several ranged reads at once, handed on in order: for links that cap each connection.

A registry's blobs, the Hub's files and many http(s) downloads are served through a CDN, a proxy or object
storage that gives each connection a fraction of what the network carries (tens of MB/s where the link holds
hundreds). One ``GET`` of a 10 GB file then takes as long as that one connection does; reading the layers of
an image one after the other (``job.sources.oci``, gzip layers) makes it worse. containerd 2.1 fetches a
layer's ranges in parallel for the same reason ("multipart layer fetch"), as ``hf_transfer`` does for the Hub.
Used by the OCI client's blob reads (``job.oci.client``) and by http downloads that can resume
(``job.http.download``: ranges of the same version, pinned by its validators).

:func:`read_in_order` keeps the plain read, the *head*, and adds reads *ahead* of it where they help:

* The head is one ranged read from where the caller is to the end, streamed as it arrives: exactly what a
  single ``GET`` would be, and all there is on a fast link.
* Reads ahead start once the head has shown, over two segments' worth of bytes, that it is slow (or another
  stream of the same source has: the next layer or file then reads ahead from its start): under
  :data:`SLOW` bytes a second *while* the stream waited on it for more than half of that time. A consumer
  slower than the link (a CPU-bound pipeline) finds the bytes there when it asks, so it never waits; a link
  faster than :data:`SLOW` (a registry in the cluster, 127.0.0.1) is helped by more CPU, not more
  connections. Neither pays a request or a byte of memory for reading ahead.
* Then reads of :data:`SEGMENT` bytes each run after the head's position, ``parallel`` reads in all with the
  head, each holding its bytes in memory until the stream reaches them. When the head reaches the first of
  them its connection is closed and the stream goes on with the segments, in order, each handed on as its
  bytes arrive; every segment handed on makes room for the next one. Where no segment was read ahead (no
  room), a new head reads on from there.
* Memory: bytes read ahead by every stream of a source together take room from its :class:`ReadAhead`
  budget first (a segment's full size, before its read starts); a stream that finds no room reads on with
  its head alone, so a full budget costs speed, never more memory.

An error of a segment read ahead is raised when the stream reaches that segment (the bytes before it are
handed on first), so the caller's resume at the offset reached (``job.engine.resume``) works as for one read.
Closing the stream cancels the reads ahead and gives their room back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from time import monotonic

from job.errors import IntegrityError

__all__ = ["SEGMENT", "ReadAhead", "read_in_order"]

SEGMENT = 8 * 1024 * 1024
"""Bytes of one read ahead: 128 requests per GiB read ahead (the AWS CLI's default part is 8 MiB too)."""

SLOW = 64 * 1000 * 1000
"""Bytes a second below which one connection is slow: what CDNs and object stores give one stream is often
less; a registry in the cluster gives several times more."""

PIECE = 1024 * 1024
"""Most bytes handed on at once from a segment read ahead."""

OpenRange = Callable[[int, int], AbstractAsyncContextManager[AsyncIterator[bytes]]]
"""Opens bytes ``[start, end)`` of the object; its chunks in order."""


class ReadAhead:
    """How far streams read ahead: ``parallel`` reads of a stream at once (1: never ahead), and the bytes
    held ahead by all streams together, at most ``budget``."""

    def __init__(self, parallel: int, budget: int, *, segment: int = SEGMENT) -> None:
        if parallel < 1 or budget < 0 or segment < 1:
            raise ValueError(
                f"read ahead needs parallel >= 1, budget >= 0, segment >= 1: {parallel}, {budget}, {segment}"
            )
        self.parallel = parallel
        self.budget = budget
        self.segment = segment
        self.held = 0
        self.slow = False
        """A stream of this source has proved its link slow: the next ones read ahead from their start."""

    def worth_it(self, size: int) -> bool:
        """A read of ``size`` bytes has a segment to read ahead (and room for one, at all)."""
        return self.parallel > 1 and size > self.segment and self.budget >= self.segment

    def take(self, size: int) -> bool:
        """Room for ``size`` bytes, if there is room now (never waits: a stream without room reads on alone)."""
        if self.held + size > self.budget:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size
        if self.held < 0:
            raise AssertionError("read ahead gave back more than it took")


class _Waiting:
    """Whether a stream waits on a slow connection (reading ahead helps) or on something else (it would not).

    Looked at over each ``window`` bytes the head hands on: a head that delivered them at less than
    :data:`SLOW` bytes a second *and* whose reads waited for more than half of that time is on a slow link
    from then on. A consumer slower than the link finds the bytes there when it asks for them, so its reads
    never wait; a link faster than :data:`SLOW` (a registry in the cluster, 127.0.0.1) is not helped by
    more connections, only by more CPU: neither costs read ahead or its memory.
    """

    __slots__ = ("_began", "_bytes", "_waited", "slow", "window")

    def __init__(self, window: int, *, slow: bool = False) -> None:
        self.window = window
        self.slow = slow
        self._began = monotonic()
        self._bytes = 0
        self._waited = 0.0

    def add(self, size: int, waited: float) -> bool:
        """A read of ``size`` bytes that waited ``waited`` seconds; True once the link is known slow."""
        if self.slow:
            return True
        self._bytes += size
        self._waited += waited
        if self._bytes >= self.window:
            now = monotonic()
            elapsed = now - self._began
            self.slow = self._waited > elapsed / 2 and self._bytes < SLOW * elapsed
            self._began, self._bytes, self._waited = now, 0, 0.0
        return self.slow


class _Segment:
    """Bytes ``[start, end)`` read ahead by a task into one buffer, taken in order by the stream.

    One buffer of the segment's size, not the chunks as they came: a slow link's reads are small, and each
    one kept for long holds a heap block sized for a 1 MiB read (``job.tuning``): kept as they came, 32 MiB
    read ahead raised the gzip capped bench row's peak RSS by 60-79 MiB, in one buffer by 53. The buffer is
    above ``mmap``'s threshold, so freeing it gives its pages back; each received chunk is copied into it and
    freed at once, and the stream takes copies of up to :data:`PIECE` bytes. Two copies of a byte read ahead,
    on a link slow enough that the CPU waits for it anyway.
    """

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.buffer = bytearray(end - start)
        self.filled = 0
        self.taken = 0
        self.done = False
        self.error: BaseException | None = None
        self.arrived = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def fill(self, open_range: OpenRange, what: str) -> None:
        size = self.end - self.start
        got = 0
        try:
            async with open_range(self.start, self.end) as body:
                async for chunk in body:
                    got += len(chunk)
                    if got > size:
                        break
                    self.buffer[self.filled : got] = chunk
                    self.filled = got
                    self.arrived.set()
            if got != size:
                came = f"more than {size}" if got > size else str(got)
                raise IntegrityError(f"{what}: bytes {self.start}-{self.end - 1} came as {came} bytes, not {size}")
        except Exception as exc:  # raised to the stream when it reaches this segment
            self.error = exc
        finally:
            self.done = True
            self.arrived.set()

    async def chunks_in_order(self) -> AsyncIterator[bytes]:
        view = memoryview(self.buffer)
        try:
            while True:
                if self.taken < self.filled:
                    piece = bytes(view[self.taken : min(self.filled, self.taken + PIECE)])
                    self.taken += len(piece)
                    yield piece
                    continue
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                self.arrived.clear()
                await self.arrived.wait()
        finally:
            view.release()
            self.buffer = bytearray()  # its pages go back now, not when the stream ends


async def read_in_order(
    open_range: OpenRange,
    start: int,
    end: int,
    ahead: ReadAhead,
    what: str,
    *,
    head: AsyncIterator[bytes] | None = None,
    close_head: Callable[[], Awaitable[None]] | None = None,
) -> AsyncGenerator[bytes, None]:
    """Bytes ``[start, end)`` through ``open_range``: a head and reads ahead of it (module doc).

    ``head``: a read of ``[start, end)`` the caller opened already (to see whether the server honours
    ``Range``), closed with ``close_head`` when the stream no longer needs it; heads opened here are closed here.
    """
    position = start
    """Bytes handed on so far end here."""
    planned = start
    """Segments read ahead cover bytes up to here."""
    queue: deque[_Segment] = deque()
    stack = contextlib.AsyncExitStack()

    def plan() -> None:
        nonlocal planned
        while len(queue) < ahead.parallel - (head is not None):  # the head, while open, is one of the reads
            # the first segment starts a segment past the stream, so the head has bytes of its own to read
            first = planned if queue else max(planned, position + ahead.segment)
            last = min(first + ahead.segment, end)
            if first >= end or not ahead.take(last - first):
                return
            segment = _Segment(first, last)
            segment.task = asyncio.create_task(segment.fill(open_range, what))
            queue.append(segment)
            planned = last

    async def drop_head() -> None:
        nonlocal head, close_head
        closing, head, close_head = close_head, None, None
        if closing is not None:
            await closing()
        await stack.aclose()

    waiting = _Waiting(2 * ahead.segment, slow=ahead.slow)
    try:
        while position < end:
            if queue and queue[0].start == position:
                segment = queue[0]
                async for chunk in segment.chunks_in_order():
                    position += len(chunk)
                    yield chunk
                queue.popleft()
                ahead.give_back(segment.end - segment.start)
                plan()
                continue
            if head is None:  # nothing read ahead from here: read on with a new head
                head = await stack.enter_async_context(open_range(position, end))
            if waiting.slow:
                plan()
            stop = queue[0].start if queue else end
            while position < stop:
                began = monotonic()
                try:
                    chunk = await anext(head)
                except StopAsyncIteration:
                    raise IntegrityError(f"{what}: the read ended at byte {position}, before byte {stop}") from None
                if position + len(chunk) > stop:
                    chunk = chunk[: stop - position]
                position += len(chunk)
                if waiting.add(len(chunk), monotonic() - began):
                    ahead.slow = True
                    if len(queue) < ahead.parallel - 1:  # the head is open
                        plan()
                        stop = queue[0].start if queue else end
                yield chunk
            if position < end:  # the head reached a segment read ahead: its connection is not needed any more
                await drop_head()
    finally:
        tasks = [segment.task for segment in queue if segment.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for segment in queue:
            ahead.give_back(segment.end - segment.start)
        queue.clear()
        await drop_head()
