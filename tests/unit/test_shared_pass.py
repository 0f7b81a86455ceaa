"""SharedPass: byte ranges of one front-to-back stream, served by a single shared pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from job.errors import SourceError
from job.formats.shared_pass import SharedPass

DATA = bytes(range(256)) * 4  # 1024 bytes


class Stream:
    """Opens DATA in 100-byte chunks; counts opens and closes."""

    def __init__(self, data: bytes = DATA) -> None:
        self.data = data
        self.opened = 0
        self.closed = 0

    @asynccontextmanager
    async def open(self) -> AsyncIterator[AsyncIterator[bytes]]:
        self.opened += 1

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(self.data), 100):
                await asyncio.sleep(0)
                yield self.data[i : i + 100]

        try:
            yield chunks()
        finally:
            self.closed += 1


async def read(shared: SharedPass, start: int, size: int) -> bytes:
    async with shared.open(start, size, f"range {start}") as chunks:
        return b"".join([c async for c in chunks])


async def test_ranges_opened_together_share_one_pass_and_it_closes_at_the_end() -> None:
    stream = Stream()
    shared = SharedPass(stream.open, "test://stream", end=1000)
    # The first open takes the pass; the others queue while it reads, out of order: the elevator sorts them.
    ranges = [(0, 50), (700, 300), (300, 250), (60, 0)]
    got = await asyncio.gather(*(read(shared, start, size) for start, size in ranges))
    assert got == [DATA[start : start + size] for start, size in ranges]
    assert (stream.opened, stream.closed) == (1, 1)  # one pass, closed once it reached `end`
    assert shared.passes == 1


async def test_a_range_behind_the_pass_restarts_it_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    stream = Stream()
    shared = SharedPass(stream.open, "test://stream", "the layer")
    assert await read(shared, 500, 10) == DATA[500:510]
    with caplog.at_level(logging.WARNING):
        assert await read(shared, 100, 10) == DATA[100:110]
    assert stream.opened == 2
    assert "test://stream: reading the layer again from its start to reach range 100" in caplog.text
    await shared.close()
    assert stream.closed == 2


async def test_a_stream_that_ends_early_is_an_error_and_the_next_range_starts_over() -> None:
    stream = Stream(DATA[:150])
    shared = SharedPass(stream.open, "test://short")
    with pytest.raises(SourceError, match=r"test://short: the stream ends early \(at byte 150\)"):
        await read(shared, 100, 100)
    assert await read(shared, 0, 10) == DATA[:10]
    assert stream.opened == 2
    await shared.close()


async def test_a_reader_that_stops_early_leaves_the_pass_in_step() -> None:
    stream = Stream()
    shared = SharedPass(stream.open, "test://stream")
    async with shared.open(0, 500, "first") as chunks:
        assert await anext(chunks) == DATA[:100]  # then stops reading
    assert await read(shared, 600, 20) == DATA[600:620]
    assert stream.opened == 1
    await shared.close()


# --- a pass that also lists: small reads between the ranges it serves (a tar.gz read once) -----------------


async def test_a_listing_reads_between_the_ranges_opened_as_it_goes() -> None:
    # The listing reads a "header", the engine opens the "member" behind it before the next header is asked for:
    # the pass serves the member first, then the header after it, in one pass.
    stream = Stream()
    shared = SharedPass(stream.open, "test://stream")
    members: list[bytes] = []
    got = await shared.read(0, 10, "header")
    for header in (0, 300, 600):
        assert got == DATA[header : header + 10]
        async with shared.open(header + 10, 200, f"member at {header}") as chunks:
            next_header = asyncio.create_task(shared.read(header + 300, 10, "header"))  # queued behind the member
            await asyncio.sleep(0)
            members.append(b"".join([c async for c in chunks]))
        got = await next_header
    assert members == [DATA[h + 10 : h + 210] for h in (0, 300, 600)]
    assert stream.opened == 1 and shared.passes == 1


async def test_a_read_is_cut_at_the_end_but_one_starting_beyond_it_is_truncated() -> None:
    shared = SharedPass(Stream().open, "test://stream")
    assert await shared.read(1000, 512, "the last header") == DATA[1000:]  # fewer only at the end
    assert await shared.read(1024, 512, "the end") == b""  # a stream that stops right there ends cleanly
    shared = SharedPass(Stream().open, "test://stream", "the archive")
    with pytest.raises(SourceError, match=r"the archive ends early \(at byte 1024\)"):
        await shared.read(1500, 512, "a header after skipped data")  # the skipped member was cut short


async def test_read_to_end_reads_what_is_left() -> None:
    stream = Stream()
    shared = SharedPass(stream.open, "test://stream")
    assert await shared.read(0, 10, "header") == DATA[:10]
    await shared.read_to_end(10, "the end")
    assert shared._pos == len(DATA) and stream.opened == 1
