"""Reads ahead of a slow stream (job.readahead): the same bytes in order, bounded reads and memory, errors in place."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import pytest

from job.errors import IntegrityError
from job.readahead import ReadAhead, read_in_order

SEGMENT = 64 * 1024
READ = 16 * 1024


class Blob:
    """Ranged reads of ``data`` in ``READ``-byte chunks, each after ``delay`` seconds: a link that caps each
    connection when ``delay`` > 0. Records every range opened and how many were open at once."""

    def __init__(self, data: bytes, *, delay: float = 0.0) -> None:
        self.data = data
        self.delay = delay
        self.opened: list[tuple[int, int]] = []
        self.open_now = 0
        self.most_open = 0
        self.fail: dict[int, BaseException] = {}
        """start of a range -> the error its read raises after its first chunk."""
        self.short: set[int] = set()
        """starts of ranges whose reads end a chunk early."""

    @asynccontextmanager
    async def open_range(self, start: int, end: int) -> AsyncIterator[AsyncIterator[bytes]]:
        self.opened.append((start, end))
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            yield self._chunks(start, end)
        finally:
            self.open_now -= 1

    async def _chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        first = start
        stop = end - READ if start in self.short else end
        while start < stop:
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                await asyncio.sleep(0)
            yield self.data[start : min(start + READ, stop)]
            start += READ
            if first in self.fail:
                raise self.fail[first]


async def read(blob: Blob, ahead: ReadAhead, start: int = 0, end: int | None = None) -> bytes:
    end = len(blob.data) if end is None else end
    async with aclosing(read_in_order(blob.open_range, start, end, ahead, "reading the blob")) as chunks:
        return b"".join([chunk async for chunk in chunks])


def data(size: int) -> bytes:
    return os.urandom(size)


async def test_a_slow_link_reads_segments_ahead_and_hands_on_the_same_bytes_in_order() -> None:
    blob = Blob(data(20 * SEGMENT + 123), delay=0.002)
    ahead = ReadAhead(4, 3 * SEGMENT, segment=SEGMENT)
    assert await read(blob, ahead) == blob.data
    assert blob.opened[0] == (0, len(blob.data))  # the head: one read to the end, as without read ahead
    segments = blob.opened[1:]
    assert len(segments) >= 10
    assert all(end - start <= SEGMENT for start, end in segments)
    assert blob.most_open <= 4  # the head and parallel - 1 reads ahead
    assert ahead.held == 0


async def test_a_fast_link_is_one_read() -> None:
    blob = Blob(data(20 * SEGMENT))
    ahead = ReadAhead(4, 3 * SEGMENT, segment=SEGMENT)
    assert await read(blob, ahead) == blob.data
    assert blob.opened == [(0, len(blob.data))]


async def test_a_range_in_the_middle_of_the_object() -> None:
    blob = Blob(data(20 * SEGMENT), delay=0.002)
    ahead = ReadAhead(3, 2 * SEGMENT, segment=SEGMENT)
    assert await read(blob, ahead, 1000, 15 * SEGMENT + 7) == blob.data[1000 : 15 * SEGMENT + 7]
    assert all(1000 <= start < end <= 15 * SEGMENT + 7 for start, end in blob.opened)
    assert len(blob.opened) > 1 and ahead.held == 0


async def test_without_room_a_slow_stream_reads_on_alone() -> None:
    blob = Blob(data(12 * SEGMENT), delay=0.002)
    ahead = ReadAhead(4, 3 * SEGMENT, segment=SEGMENT)
    assert ahead.take(3 * SEGMENT)  # another stream holds all of it
    assert await read(blob, ahead) == blob.data
    assert blob.opened == [(0, len(blob.data))]
    ahead.give_back(3 * SEGMENT)


async def test_room_is_shared_by_the_streams_of_a_source() -> None:
    blobs = [Blob(data(12 * SEGMENT), delay=0.002) for _ in range(3)]
    ahead = ReadAhead(4, 2 * SEGMENT, segment=SEGMENT)
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, ahead.held)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(read(blob, ahead) for blob in blobs))
    watcher.cancel()
    assert results == [blob.data for blob in blobs]
    assert 0 < most <= 2 * SEGMENT and ahead.held == 0


async def test_an_error_ahead_is_raised_where_the_stream_reaches_it() -> None:
    blob = Blob(data(20 * SEGMENT), delay=0.002)
    blob.fail[6 * SEGMENT] = ConnectionResetError("reset by peer")
    ahead = ReadAhead(8, 16 * SEGMENT, segment=SEGMENT)
    got = bytearray()
    with pytest.raises(ConnectionResetError, match="reset by peer"):
        async with aclosing(read_in_order(blob.open_range, 0, len(blob.data), ahead, "reading")) as chunks:
            async for chunk in chunks:
                got += chunk
    # every byte before the failed segment's first chunk was handed on: a resume starts there
    assert bytes(got) == blob.data[: len(got)] and len(got) >= 6 * SEGMENT
    assert ahead.held == 0 and blob.open_now == 0


async def test_a_short_segment_is_an_integrity_error_naming_its_range() -> None:
    blob = Blob(data(20 * SEGMENT), delay=0.002)
    blob.short.add(5 * SEGMENT)
    ahead = ReadAhead(8, 16 * SEGMENT, segment=SEGMENT)
    with pytest.raises(IntegrityError, match=f"bytes {5 * SEGMENT}-{6 * SEGMENT - 1} came as"):
        await read(blob, ahead)
    assert ahead.held == 0


async def test_a_head_that_ends_early_is_an_integrity_error() -> None:
    blob = Blob(data(3 * SEGMENT))
    blob.short.add(0)
    with pytest.raises(IntegrityError, match="ended at byte"):
        await read(blob, ReadAhead(4, 3 * SEGMENT, segment=SEGMENT))


async def test_closing_early_cancels_the_reads_ahead_and_gives_their_room_back() -> None:
    blob = Blob(data(40 * SEGMENT), delay=0.002)
    ahead = ReadAhead(4, 3 * SEGMENT, segment=SEGMENT)
    async with aclosing(read_in_order(blob.open_range, 0, len(blob.data), ahead, "reading")) as chunks:
        seen = 0
        async for chunk in chunks:
            seen += len(chunk)
            if seen > 5 * SEGMENT:
                break
    assert ahead.held == 0 and blob.open_now == 0
    assert len(blob.opened) > 1  # it was reading ahead when it stopped


def test_worth_it_needs_more_than_a_segment_parallel_reads_and_room() -> None:
    assert ReadAhead(4, 32, segment=8).worth_it(9)
    assert not ReadAhead(4, 32, segment=8).worth_it(8)
    assert not ReadAhead(1, 32, segment=8).worth_it(100)
    assert not ReadAhead(4, 4, segment=8).worth_it(100)
    with pytest.raises(ValueError):
        ReadAhead(0, 32)


async def test_once_a_stream_proved_the_link_slow_the_next_one_reads_ahead_from_its_start() -> None:
    ahead = ReadAhead(4, 3 * SEGMENT, segment=SEGMENT)
    first = Blob(data(8 * SEGMENT), delay=0.002)
    await read(first, ahead)
    assert ahead.slow and first.opened[1][0] > 2 * SEGMENT  # it had to prove it first
    second = Blob(data(8 * SEGMENT), delay=0.002)
    assert await read(second, ahead) == second.data
    assert second.opened[1] == (SEGMENT, 2 * SEGMENT)  # a segment past its start, at once
