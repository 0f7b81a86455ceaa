"""Reading a source's listing for the engine: one file at a time, bounded, and checked to make one model tree.

:func:`next_listed` takes the next file (listing errors tagged as ``SourceError``, at most ``max_files``);
:func:`list_all` reads a listing whole and checks it (:func:`check_listing`); :class:`ListingChecks` is that check
file by file, for a one-pass source whose files move while it lists (``job.engine.streamed``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import PurePosixPath

from job.errors import ModelSyncError, SourceError
from job.model import ObjectInfo, safe_relative_path
from job.streams import describe

__all__ = ["ListingChecks", "check_listing", "closing", "list_all", "next_listed"]


class ListingChecks:
    """The listing's checks, file by file (see :func:`check_listing`). ``again``: a path listed twice is a later
    version of the file (a one-pass archive's later entry of the same name) rather than an error."""

    def __init__(self, *, again: bool = False) -> None:
        self.again = again
        self.files: set[PurePosixPath] = set()
        self.dirs: dict[PurePosixPath, PurePosixPath] = {}  # directory -> the first file listed below it

    def add(self, obj: ObjectInfo) -> None:
        path = obj.path
        if safe_relative_path(str(path)) != path:
            raise SourceError(f"refusing path {str(path)!r}: not a normalized relative path")
        if obj.size is not None and obj.size < 0:
            raise SourceError(f"source lists {path} with a negative size ({obj.size})", path=str(path))
        if path in self.files:
            if self.again:
                return
            raise SourceError(f"source lists {path} twice", path=str(path))
        if path in self.dirs:
            raise SourceError(f"source lists {path} both as a file and as a directory of {self.dirs[path]}")
        for parent in path.parents[:-1]:  # parents[-1] is "."
            if parent in self.files:
                raise SourceError(f"source lists {parent} both as a file and as a directory of {path}")
            self.dirs.setdefault(parent, path)
        self.files.add(path)


def check_listing(objects: Sequence[ObjectInfo]) -> None:
    """Raise :class:`SourceError` unless the listing can become one model tree.

    Refused: an empty listing, an unsafe path, a negative size, a path listed twice, and a path that is
    both a file and a directory of another (``a`` and ``a/b``), which no file system can hold.
    """
    if not objects:
        raise SourceError("source holds no files")
    checks = ListingChecks()
    for obj in objects:
        checks.add(obj)


async def next_listed(listing: AsyncIterator[ObjectInfo], count: int, max_files: int) -> ObjectInfo | None:
    """The next file of the listing (``count`` listed so far), or None at its end; errors as ``SourceError``."""
    try:
        obj = await anext(listing)
    except StopAsyncIteration:
        return None
    except ModelSyncError:
        raise
    except Exception as exc:
        raise SourceError(f"listing the source: {describe(exc)}") from exc
    if count >= max_files:  # a listing that never ends must not grow memory without bound
        raise SourceError(f"listing the source: more than {max_files} files (MODEL_SYNC_MAX_FILES)")
    return obj


async def list_all(first: ObjectInfo | None, listing: AsyncIterator[ObjectInfo], max_files: int) -> list[ObjectInfo]:
    """``first`` and the rest of ``listing``, checked (:func:`check_listing`)."""
    objects: list[ObjectInfo] = []
    obj = first
    while obj is not None:
        objects.append(obj)
        obj = await next_listed(listing, len(objects), max_files)
    check_listing(objects)
    return objects


@asynccontextmanager
async def closing(listing: AsyncIterator[ObjectInfo]) -> AsyncIterator[AsyncIterator[ObjectInfo]]:
    """The listing, closed at the end when it can be (an async generator: its stream or pass is released)."""
    try:
        yield listing
    finally:
        close = getattr(listing, "aclose", None)
        if close is not None:
            await close()
