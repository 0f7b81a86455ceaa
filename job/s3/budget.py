"""The memory an S3 destination's parts may hold, all files together, and each file's share of it.

A multipart part is held in memory from the moment it is read until its request is answered (a part is
retried from memory). Each file may have ``parallel_parts`` parts in flight, but files in flight times
parts per file times part size is a ceiling that grows with every setting (4 x 2 x 8 MiB = 64 MiB by
default, and 16 files of 64 MiB parts would be 2 GiB). :class:`ByteBudget` caps the *sum*: bytes of parts
held by every file of the destination at once (s3transfer caps the same thing by counting chunks,
``max_in_memory_upload_chunks``). Bytes rather than parts, so that small files, each read whole as its one
part, reserve their own size and do not queue behind budget meant for 8 MiB parts.

:class:`PartSlots` is one file's view: at most ``per_file`` parts, each reserving its size from the shared
budget before it is read; :meth:`PartSlots.close` gives back whatever the file still holds (a first part never
handed to an upload, an upload that failed before its parts were sent), so a failed try never shrinks the
budget for the next. Used by ``job.destinations.s3`` and :mod:`job.s3.multipart`.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["ByteBudget", "PartSlots"]


class ByteBudget:
    """Bytes held at once, at most ``limit``; waiters are served in arrival order (no starvation of big parts).

    A request larger than the whole budget is cut to it: it waits until nothing else is held, then runs alone.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a byte budget must be >= 1, got {limit}")
        self.limit = limit
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, size: int) -> int:
        """Wait until ``size`` bytes (at most ``limit``) fit, take them; returns what was taken."""
        size = max(0, min(size, self.limit))
        if not self._waiters and self.held + size <= self.limit:
            self.held += size
            return size
        entry = (size, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self.release(size)  # granted, but cancelled before it could return: give it back
            else:
                self._waiters.remove(entry)
                self._wake()  # the next in line may fit now that this one no longer blocks it
            raise
        return size

    def release(self, size: int) -> None:
        """Give back ``size`` bytes taken by :meth:`acquire`."""
        self.held -= size
        if self.held < 0:
            raise AssertionError("byte budget released more than it lent")
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held + self._waiters[0][0] <= self.limit:
            size, future = self._waiters.popleft()
            if not future.done():
                self.held += size
                future.set_result(None)


class PartSlots:
    """One file's parts: at most ``per_file`` held at once, their bytes taken from the shared ``budget``."""

    def __init__(self, budget: ByteBudget, per_file: int) -> None:
        self._budget = budget
        self._file = asyncio.Semaphore(per_file)
        self._held = 0
        self._closed = False

    async def acquire(self, size: int) -> int:
        """Room for one part of ``size`` bytes; returns the amount to :meth:`release` once the part is sent."""
        await self._file.acquire()
        try:
            taken = await self._budget.acquire(size)
        except BaseException:
            self._file.release()
            raise
        self._held += taken
        return taken

    def release(self, taken: int) -> None:
        """The part that took ``taken`` was sent (or dropped)."""
        self._file.release()
        if not self._closed:  # after close() the budget already has it back
            self._held -= taken
            self._budget.release(taken)

    def close(self) -> None:
        """Give back what this file still holds; the file reads no further part."""
        held, self._held, self._closed = self._held, 0, True
        if held:
            self._budget.release(held)
