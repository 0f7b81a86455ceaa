"""What the contract suite runs over: one small model, and a case per Source or Destination built on it.

The fixtures that build each case against the local servers are in ``tests/contract/conftest.py``; the tests
are in ``test_sources.py`` and ``test_destinations.py``. A case hands out *new* backend objects (``make()``),
because a source or destination is used once by a run (listed, read, closed) and a rerun is a new process.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from job.destinations.base import Destination
from job.model import ObjectInfo
from job.sources.base import Source
from tests.fakes import FailingStream, sha256_of

CHUNK = 64 * 1024
"""Chunk size of the streams the tests feed to destinations, and of the pvc source's reads."""

_rng = random.Random(20250101)
MODEL: dict[str, bytes] = {
    "config.json": b'{"model_type": "contract", "hidden_size": 8}\n',
    "model.safetensors": _rng.randbytes(300_007),
    "sub/deep/weights.bin": _rng.randbytes(70_001),
    "tokenizer/vocab.txt": b"\n".join(f"tok{i}".encode() for i in range(2000)),
    "empty.txt": b"",
}
"""The model every backend holds: a nested path, a ~300 KB file, a 0-byte file, small text files."""

EXCLUDE = ("tokenizer/",)
"""The exclude glob of the ``filtered-*`` cases."""
FILTERED: dict[str, bytes] = {path: data for path, data in MODEL.items() if not path.startswith("tokenizer/")}
"""What a FilteredSource over the model with :data:`EXCLUDE` holds."""


@dataclass(frozen=True)
class SourceCase:
    """A source over a known set of files."""

    make: Callable[[], Source]
    """A new source object over the files (not listed yet)."""
    files: Mapping[str, bytes]
    """Relative path -> bytes: what the source must list and read."""


@dataclass(frozen=True)
class DestinationCase:
    """A destination writing to a target nothing else uses, with independent readers of that target."""

    name: str
    make: Callable[[], Destination]
    """A new destination object for the target (the first try of a job, or its rerun)."""
    uri: str
    """What ``commit`` must return as ``Committed.uri``."""
    read_back: Callable[[], dict[str, bytes]]
    """The committed model, read with a client that is not model-sync's."""
    stored: Callable[[], list[str]]
    """What the target holds that a reader could take for the model (objects, the tag's manifest)."""
    open_uploads: Callable[[], list[str]]
    """Unfinished uploads the target still keeps (S3 multipart uploads, registry upload sessions)."""


def objects(files: Mapping[str, bytes] = MODEL) -> list[ObjectInfo]:
    """The files as a source lists them, each with its sha256 (so a destination knows its identity)."""
    return [ObjectInfo(PurePosixPath(path), len(data), digest=sha256_of(data)) for path, data in files.items()]


def stream(data: bytes, *, fail_after: int | None = None, error: BaseException | None = None) -> FailingStream:
    """The bytes as a destination receives them, in chunks of :data:`CHUNK`; ``fail_after=n``: then ``error``."""
    return FailingStream(data, chunk_size=CHUNK, fail_after=fail_after, error=error)


async def listing(source: Source) -> list[ObjectInfo]:
    """Everything ``source.list()`` yields, in order."""
    return [obj async for obj in source.list()]


async def read(source: Source, obj: ObjectInfo, offset: int = 0) -> bytes:
    """The bytes ``source.open(obj, offset=offset)`` streams."""
    async with source.open(obj, offset=offset) as chunks:
        return b"".join([chunk async for chunk in chunks])


async def stalled(data: bytes, started: Callable[[], None]) -> AsyncIterator[bytes]:
    """Yield ``data``, call ``started`` once the consumer asks for more, then stall until cancelled."""
    yield data
    started()
    await asyncio.Event().wait()  # never set
    yield b""  # pragma: no cover - never reached
