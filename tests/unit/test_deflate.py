"""job.deflate: zlib-ng where installed (it is, from the lock), with the stdlib's exact results."""

from __future__ import annotations

import gzip
import random
import zlib

from job import deflate


def test_zlib_ng_is_in_use_and_agrees_with_the_stdlib() -> None:
    assert deflate.BACKEND == "zlib-ng"
    data = random.Random(5).randbytes(3 * 1024 * 1024 + 7)
    assert deflate.crc32(data) == zlib.crc32(data)
    assert deflate.crc32(data[1000:], deflate.crc32(data[:1000])) == zlib.crc32(data)
    packed = gzip.compress(data[:100_000] * 5)
    decoder = deflate.decompressobj(wbits=31)
    assert decoder.decompress(packed) == data[:100_000] * 5 and decoder.eof
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = raw.compress(data[:5000]) + raw.flush()
    assert deflate.decompressobj(-deflate.MAX_WBITS).decompress(stream) == data[:5000]
