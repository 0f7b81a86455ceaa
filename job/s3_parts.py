"""S3 parts in memory: cut from the engine's stream, checksummed as they fill, sent without copies.

:class:`PartReader` cuts the chunk stream into parts of exactly ``part_size`` bytes (one copy each, into a
``bytearray``), computing the part's S3 checksum (``x-amz-checksum-sha256`` or ``-crc32``) on the way.
:class:`PartBody` hands a part to botocore and aiohttp as an async iterable of slices, so no layer makes a
whole copy of it, and can be rewound (``seek``) when its request is retried. Used by ``job.destinations.s3``.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

__all__ = ["CHECKSUMS", "Crc32", "Hash", "PartBody", "PartReader"]


class Hash(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


class Crc32:
    """zlib's CRC-32 (the one S3's ``ChecksumCRC32`` uses) with hashlib's update/digest interface."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


CHECKSUMS: dict[str, tuple[Callable[[], Hash], str]] = {
    "SHA256": (hashlib.sha256, "ChecksumSHA256"),
    "CRC32": (Crc32, "ChecksumCRC32"),
}


class PartReader:
    """Cut the engine's chunk stream into parts, checksumming each part as its chunks arrive.

    Errors the stream raises propagate unchanged. Only a chunk that straddles a part boundary is
    sliced (as memoryviews, no copy); each part is copied once, into one ``bytearray``.
    """

    def __init__(self, data: AsyncIterator[bytes], new_hash: Callable[[], Hash]) -> None:
        self._data = data
        self._new_hash = new_hash
        self._pending: bytes | memoryview = b""
        self._eof = False
        self.consumed = 0

    async def _next(self) -> bytes | memoryview:
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        while not self._eof:
            try:
                chunk = await anext(self._data)
            except StopAsyncIteration:
                self._eof = True
                break
            if chunk:
                return chunk
        return b""

    async def at_eof(self) -> bool:
        """True once the stream has ended (reads ahead one chunk, and keeps it, to find out)."""
        if not self._pending:
            self._pending = await self._next()
        return not self._pending

    async def read_part(self, size: int) -> tuple[bytearray, str]:
        """The next ``size`` bytes (fewer only at the end) and their base64 checksum.

        A ``bytearray``, not ``bytes``: botocore wraps a ``bytes`` body in a ``BytesIO``, which aiohttp
        un-shares (a copy of the part) and re-reads in 64 KiB copies; a bytearray is sent as it is.
        Measured on 512 MiB, 2 files x 4 parts: the same client CPU, 15-30 MiB less peak RSS.
        """
        # Chunks are copied into one buffer of the part's size as they arrive, and dropped at once:
        # collecting them first and joining at the end held every part twice at its peak.
        buffer = bytearray(size)
        view = memoryview(buffer)
        digest = self._new_hash()
        filled = 0
        while filled < size:
            chunk = await self._next()
            if not chunk:
                break
            room = size - filled
            if len(chunk) > room:
                whole = memoryview(chunk)
                chunk, self._pending = whole[:room], whole[room:]
            digest.update(chunk)
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        view.release()
        self.consumed += filled
        if filled < size:
            del buffer[filled:]  # the last part: shrink in place
        return buffer, base64.b64encode(digest.digest()).decode("ascii")


class PartBody:
    """A part's bytes as botocore and aiohttp should see them: sent in slices, never copied whole.

    Given a ``bytearray``, aiohttp 3.14 on Python < 3.12.9 joins the request headers with the whole
    body into one new ``bytes`` (its writelines fallback), and asyncio's transport then copies what the
    socket did not take: three copies of every part in flight. As an async iterable (aiohttp's
    ``AsyncIterablePayload``, sized by the Content-Length botocore sets from ``len()``), the part goes
    out in ``SLICE``-sized memoryviews and the transport holds at most about one slice.
    ``read``/``seek``/``tell`` are what botocore needs to validate the body and to rewind it before it
    retries a request; nothing here copies the part.
    """

    SLICE = 1024 * 1024

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytearray) -> None:
        self._data = data
        self._pos = 0

    def __len__(self) -> int:
        return len(self._data)

    def read(self, size: int = -1) -> bytes:
        """Sync read, for botocore's checks (not the hot path: aiohttp iterates instead)."""
        end = len(self._data) if size is None or size < 0 else min(len(self._data), self._pos + size)
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._data)}[whence]
        self._pos = max(0, min(len(self._data), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    async def __aiter__(self) -> AsyncIterator[memoryview]:
        view = memoryview(self._data)
        while self._pos < len(self._data):
            start, self._pos = self._pos, min(len(self._data), self._pos + self.SLICE)
            yield view[start : self._pos]
