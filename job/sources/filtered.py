"""Include/exclude globs over any source (``MODEL_SYNC_SOURCE_INCLUDE`` / ``MODEL_SYNC_SOURCE_EXCLUDE``).

Matching follows ``huggingface_hub``'s ``allow_patterns``/``ignore_patterns``: ``fnmatch`` on the
relative path, where ``*`` also spans ``/`` (``*.json`` matches ``sub/config.json``), and a pattern
ending in ``/`` names a folder (``onnx/`` is ``onnx/*``). A file is copied when it matches an
include pattern (or none is given) and no exclude pattern.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from fnmatch import fnmatchcase

from job.errors import SourceNotFound
from job.model import ObjectInfo
from job.sources.base import Source


def _normalise(patterns: Sequence[str]) -> tuple[str, ...]:
    return tuple(p + "*" if p.endswith("/") else p for p in patterns)


def matches(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether ``path`` passes the include and exclude globs."""
    inc, exc = _normalise(include), _normalise(exclude)
    if inc and not any(fnmatchcase(path, p) for p in inc):
        return False
    return not any(fnmatchcase(path, p) for p in exc)


class FilteredSource:
    """A source that lists only the files passing the globs; reading is delegated unchanged, and so are the
    inner source's capabilities (``seekable``, ``one_pass``: a file filtered out is one the engine does not
    open, and a one-pass listing reads past its bytes)."""

    def __init__(self, inner: Source, include: Sequence[str], exclude: Sequence[str]) -> None:
        self._inner = inner
        self.seekable = inner.seekable
        self._include = tuple(include)
        self._exclude = tuple(exclude)

    @property
    def one_pass(self) -> bool:
        return self._inner.one_pass

    async def list(self) -> AsyncIterator[ObjectInfo]:
        """The inner listing, filtered; an all-filtered listing says which globs removed everything."""
        kept = skipped = 0
        async for obj in self._inner.list():
            if matches(obj.path.as_posix(), self._include, self._exclude):
                kept += 1
                yield obj
            else:
                skipped += 1
        if not kept and skipped:
            raise SourceNotFound(
                f"no file of the source ({skipped} listed) passes MODEL_SYNC_SOURCE_INCLUDE={','.join(self._include)!r} "
                f"and MODEL_SYNC_SOURCE_EXCLUDE={','.join(self._exclude)!r}"
            )

    def open(self, obj: ObjectInfo, *, offset: int = 0) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Delegate to the inner source."""
        return self._inner.open(obj, offset=offset)

    async def close(self) -> None:
        """Close the inner source."""
        await self._inner.close()
