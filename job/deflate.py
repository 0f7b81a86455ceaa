"""CRC32 and inflate, from zlib-ng where its wheel is installed, else from the stdlib's zlib.

zlib-ng (PyPI ``zlib-ng``, the python-zlib-ng bindings) is a drop-in for the ``zlib`` module with SIMD
code paths, several times the stdlib's speed for both (README, Performance). Every CRC32 (S3 part
checksums, zip entries) and every inflate (tar.gz archives, gzip image layers, zip entries) goes
through here. The fallback is the stdlib, bit for bit the same results: a platform with
no zlib-ng wheel (it ships manylinux/musllinux wheels for x86_64 and aarch64, and for macOS and Windows)
still runs, slower. ``BACKEND`` names which one this process uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from zlib_ng import zlib_ng as _zlib

    BACKEND = "zlib-ng"
except ImportError:  # pragma: no cover - the wheel is in the lock; this is for other platforms
    import zlib as _zlib  # type: ignore[no-redef]

    BACKEND = "zlib"

__all__ = ["BACKEND", "MAX_WBITS", "crc32", "decompressobj", "error"]

crc32: Callable[..., int] = _zlib.crc32
decompressobj: Callable[..., Any] = _zlib.decompressobj
error: type[Exception] = _zlib.error  # type: ignore[assignment]
MAX_WBITS: int = _zlib.MAX_WBITS
