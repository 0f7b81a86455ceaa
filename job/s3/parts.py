"""S3 parts: sized within S3's limits, cut from the engine's stream, checksummed as they fill, sent uncopied.

:func:`choose_part_size` picks a multipart part size within S3's limits, and :func:`grow_part_size` grows it
while a stream of unknown length goes on. :func:`read_part` takes the next part from a
:class:`~job.streams.ChunkReader` as the list of chunks the source produced, computing the part's S3
checksum (``x-amz-checksum-crc32`` or ``-sha256``) on the way. :class:`PartBody` hands a part to botocore
and aiohttp as an async iterable of those chunks, so no layer makes a whole copy of it, and can be rewound
(``seek``) when its request is retried. Used by ``job.destinations.s3`` and :mod:`job.s3.multipart`.

A part is kept as its chunks rather than copied into one buffer, since the socket takes them one by one
anyway; profiles and an A/B ``make bench`` of the two are in the README (Performance). The gain is one
chunk cutter (``ChunkReader``) instead of two. Only the chunk that straddles a part boundary is sliced.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import job.deflate as deflate
from job.streams import ChunkReader

__all__ = [
    "CHECKSUMS",
    "DEFAULT_PART_MEMORY",
    "DEFAULT_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "Crc32",
    "Hash",
    "MiB",
    "Part",
    "PartBody",
    "choose_part_size",
    "grow_part_size",
    "read_part",
]

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB
"""S3's smallest part (all but the last)."""
MAX_PART_SIZE = 5 * 1024 * MiB
"""S3's largest part."""
MAX_PARTS = 10_000
"""S3's most parts in one upload."""
DEFAULT_PART_SIZE = 8 * MiB
"""s3transfer's default: large enough to be efficient, small enough that parts x files stays small."""
DEFAULT_PART_MEMORY = 24 * MiB
"""Bytes of parts an S3 destination holds at once, all files together (``MODEL_SYNC_PART_MEMORY_MIB``)."""


def choose_part_size(size: int | None, configured: int | None = None) -> int:
    """The multipart part size for an object of ``size`` bytes (``None``: unknown).

    ``configured`` (or 8 MiB), grown in whole MiB until ``size`` fits in 10,000 parts, then held within
    S3's limits [5 MiB, 5 GiB]. An unknown size gets the configured size; the uploader grows its parts
    as the count rises (:func:`grow_part_size`). A 5 TiB object (S3's largest) gets 525 MiB parts.
    """
    part = configured or DEFAULT_PART_SIZE
    if size is not None and size > part * MAX_PARTS:
        part = math.ceil(size / MAX_PARTS / MiB) * MiB
    return max(MIN_PART_SIZE, min(MAX_PART_SIZE, part))


def grow_part_size(part_size: int, parts_done: int) -> int:
    """The part size after ``parts_done`` parts of a stream of unknown length.

    Doubles every 1,000 parts (capped at 5 GiB), so 10,000 parts starting at 8 MiB hold about 8 TB
    while a stream that turns out small never buffers more than the first size. Parts of different
    sizes are valid S3 as long as all but the last are >= 5 MiB.
    """
    if parts_done and parts_done % 1000 == 0:
        return min(MAX_PART_SIZE, part_size * 2)
    return part_size


class Hash(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


class Crc32:
    """zlib's CRC-32 (the one S3's ``ChecksumCRC32`` uses) with hashlib's update/digest interface."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self.value = deflate.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


CHECKSUMS: dict[str, tuple[Callable[[], Hash], str]] = {
    "SHA256": (hashlib.sha256, "ChecksumSHA256"),
    "CRC32": (Crc32, "ChecksumCRC32"),
}


@dataclass(slots=True)
class Part:
    """One part in memory: its chunks, in order, their total size and its base64 S3 checksum."""

    chunks: list[bytes]
    size: int
    checksum: str


async def read_part(reader: ChunkReader, size: int, new_hash: Callable[[], Hash]) -> Part:
    """The next ``size`` bytes of ``reader`` (fewer only at the end) as a :class:`Part`.

    Errors the stream raises propagate unchanged.
    """
    digest = new_hash()
    chunks: list[bytes] = []
    filled = 0
    async for chunk in reader.iter_part(size):
        digest.update(chunk)
        chunks.append(chunk)
        filled += len(chunk)
    return Part(chunks, filled, base64.b64encode(digest.digest()).decode("ascii"))


class PartBody:
    """A part's bytes as botocore and aiohttp should see them: its chunks, sent as they are, never joined.

    As an async iterable (aiohttp's ``AsyncIterablePayload``, sized by the Content-Length botocore sets
    from ``len()``) the part goes out chunk by chunk: aiohttp on Python < 3.12.9 would otherwise join the
    request headers with a whole ``bytes`` body into one new object, and botocore would wrap it in a
    ``BytesIO`` that aiohttp copies again. ``read``/``seek``/``tell`` are what botocore needs to validate
    the body and to rewind it before it retries a request.
    """

    __slots__ = ("_chunks", "_pos", "_size")

    def __init__(self, part: Part) -> None:
        self._chunks = part.chunks
        self._size = part.size
        self._pos = 0

    def __len__(self) -> int:
        return self._size

    def _pieces(self) -> Iterator[bytes | memoryview]:
        """The chunks from the current position to the end (the first one sliced if need be)."""
        start = 0
        for chunk in self._chunks:
            end = start + len(chunk)
            if end > self._pos:
                yield chunk if start >= self._pos else memoryview(chunk)[self._pos - start :]
            start = end

    def read(self, size: int = -1) -> bytes:
        """Sync read, for botocore's checks (not the hot path: aiohttp iterates instead)."""
        want = self._size - self._pos if size is None or size < 0 else min(size, self._size - self._pos)
        out = bytearray()
        for piece in self._pieces():
            if len(out) >= want:
                break
            out += piece[: want - len(out)]
        self._pos += len(out)
        return bytes(out)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    async def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        for piece in self._pieces():
            self._pos += len(piece)
            yield piece
