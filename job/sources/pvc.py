"""Source ``pvc``: a file or a directory tree on a mounted volume.

The tree is walked without following directory symlinks out of the root: a symlink (to a file or
a directory) is accepted only when its target resolves inside the root, so a model directory can
link shared files, but a link to ``/etc`` or ``../other-model`` is refused with an error naming
it. Empty files are kept; empty directories carry no file and so do not appear in the model.
Sizes come from ``stat`` at listing time and are checked by the engine when the bytes are read,
so a file that changes while the job runs is an error, not a silently mixed model. So is its version:
each file is listed with an ETag made of its stat (device, inode, size, mtime in ns, as rsync's quick
check and nginx's ETags use them), compared again when the file is opened (the first time or when the
engine resumes a read at an offset) and when its last byte was read. A file rewritten in place with the
same size is caught by its mtime, one replaced by a rename by its inode. The ETag is also the file's
identity at the destination, so a rerun does not send an unchanged file again.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath

from job.errors import SourceError, SourceNotFound
from job.model import ObjectInfo, safe_relative_path
from job.streams import aiter_file


def stat_etag(st: os.stat_result) -> str:
    """The ETag of a file's version: its device, inode, size and mtime (ns), in hex."""
    return f'"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


class PvcSource:
    """Read the model from ``root``: one file, or every file below a directory."""

    seekable = True
    """A read that broke is resumed at its offset (a seek), after the file's stat is checked again."""
    one_pass = False

    def __init__(self, root: Path, *, chunk_size: int = 1024 * 1024) -> None:
        self._root = root
        self._chunk_size = chunk_size
        self._paths: dict[PurePosixPath, Path] = {}

    def _walk(self) -> list[tuple[PurePosixPath, Path, os.stat_result]]:
        root = self._root
        try:
            st = root.stat()
        except FileNotFoundError:
            raise SourceNotFound(f"listing {root}: no such file or directory", uri=str(root)) from None
        except OSError as exc:
            raise SourceError(f"listing {root}: {exc.strerror}", uri=str(root)) from None
        if stat.S_ISREG(st.st_mode):
            return [(safe_relative_path(root.name), root, st)]
        real_root = root.resolve()
        found: list[tuple[PurePosixPath, Path, os.stat_result]] = []
        # followlinks=False: a directory symlink is checked below like a file symlink, never walked blindly.
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=self._walk_error):
            dirnames.sort()
            here = Path(dirpath)
            for name in [*sorted(filenames), *(d for d in dirnames if (here / d).is_symlink())]:
                path = here / name
                rel = path.relative_to(root).as_posix()
                found.extend(self._entry(rel, path, real_root))
        return found

    def _entry(self, rel: str, path: Path, real_root: Path) -> list[tuple[PurePosixPath, Path, os.stat_result]]:
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(real_root):
                raise SourceError(
                    f"refusing {rel} in {self._root}: it is a symlink to {target}, outside the model directory",
                    uri=str(self._root),
                    path=rel,
                )
            if target.is_dir():
                # A link to a directory inside the root: its files are listed under the link's name.
                return [
                    (safe_relative_path(f"{rel}/{sub.relative_to(target).as_posix()}"), sub, sub.stat())
                    for sub in sorted(target.rglob("*"))
                    if sub.is_file() and sub.resolve().is_relative_to(real_root)
                ]
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return []  # sockets, fifos, devices: not model files
        return [(safe_relative_path(rel), path, st)]

    def _walk_error(self, exc: OSError) -> None:
        raise SourceError(f"listing {self._root}: {exc.filename}: {exc.strerror}", uri=str(self._root)) from exc

    async def list(self) -> AsyncIterator[ObjectInfo]:
        """Yield every regular file below the root (or the root file itself), sorted by path."""
        entries = await asyncio.to_thread(self._walk)
        if not entries:
            raise SourceNotFound(f"listing {self._root}: the directory holds no files", uri=str(self._root))
        for rel, path, st in entries:
            self._paths[rel] = path
            yield ObjectInfo(path=rel, size=st.st_size, etag=stat_etag(st))

    @asynccontextmanager
    async def open(self, obj: ObjectInfo, *, offset: int = 0) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream one listed file from ``offset``, if it is still the version listed (see the module doc)."""
        path = self._paths.get(obj.path) or self._root / obj.path
        await self._check_unchanged(path, obj)
        stream = aiter_file(path, self._chunk_size, offset)
        try:
            yield self._mapped(stream, path, obj)
        finally:
            await stream.aclose()

    async def _check_unchanged(self, path: Path, obj: ObjectInfo) -> None:
        if obj.etag is None:
            return
        try:
            now = stat_etag(await asyncio.to_thread(path.stat))
        except OSError as exc:
            raise SourceError(
                f"reading {obj.path} from {self._root}: {exc.strerror or exc}", uri=str(self._root), path=str(obj.path)
            ) from exc
        if now != obj.etag:
            raise SourceError(
                f"reading {obj.path} from {self._root}: the file changed after it was listed (its size, "
                "mtime or inode differ); a model must not mix two versions of a file",
                uri=str(self._root),
                path=str(obj.path),
            )

    async def _mapped(self, stream: AsyncIterator[bytes], path: Path, obj: ObjectInfo) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield chunk
        except OSError as exc:
            raise SourceError(
                f"reading {obj.path} from {self._root}: {exc.strerror or exc}", uri=str(self._root), path=str(obj.path)
            ) from exc
        await self._check_unchanged(path, obj)  # written to while it was read: caught at its end

    async def close(self) -> None:
        """Nothing to release."""
