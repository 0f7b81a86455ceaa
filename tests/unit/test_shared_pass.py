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
