"""gzip streams inflated as they arrive, in bounded pieces: one reader for archives and image layers."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import job.deflate as deflate
from job.errors import SourceError

__all__ = ["GZIP_MAGIC", "PIECE", "inflate"]

GZIP_MAGIC = b"\x1f\x8b"
PIECE = 1024 * 1024
"""Most bytes one decompress call returns: a gzip bomb costs time, never memory."""


async def inflate(
    chunks: AsyncIterator[bytes], what: str, *, plain_passes: bool = False
) -> AsyncGenerator[bytes, None]:
    """Decompress a gzip stream (several concatenated members too, as pigz and bgzip write) in pieces of at most
    :data:`PIECE` bytes. Zero padding after the last member is ignored.

    ``plain_passes``: a stream that does not start with the gzip magic passes through unchanged (a ``.tar`` that
    is plain, or a ``.tar.gz`` whose gzip layer the HTTP client already removed because the server sent
    ``Content-Encoding: gzip``). Otherwise it is a ``SourceError``, as is corrupt or truncated data; ``what``
    starts each message.
    """
    decoder = deflate.decompressobj(wbits=31)
    fed = False
    plain: bool | None = None
    try:
        async for chunk in chunks:
            if plain is None and chunk:
                plain = plain_passes and not chunk.startswith(GZIP_MAGIC)
            if plain:
                yield chunk
                continue
            data = chunk
            while data:
                fed = True
                out = decoder.decompress(data, PIECE)
                if out:
                    yield out
                if decoder.eof:
                    data = decoder.unused_data
                    decoder, fed = deflate.decompressobj(wbits=31), False
                    if not data.strip(b"\0"):
                        break  # zero padding after the last member
                    continue
                data = decoder.unconsumed_tail
                while not data and len(out) == PIECE:  # output still buffered in zlib
                    out = decoder.decompress(b"", PIECE)
                    if out:
                        yield out
    except deflate.error as exc:
        raise SourceError(f"{what}: it is not valid gzip data ({exc})") from exc
    if fed and not decoder.eof:
        raise SourceError(f"{what}: the gzip stream ends early")
