"""Write a model into a local directory: a mounted PVC (the Job), or ``/mnt/models`` (KServe's storage initializer).

``put(obj, data)`` writes ``<root>/<path>`` as ``<name>.part``, in batches of about ``write_size`` bytes each
written by a worker thread (the loop never blocks on the disk, tiny chunks do not each cost a thread hop, a file
holds at most one batch in memory). Once the stream ended (the engine's stream ends only after the size and a
listed digest checked out) the file is fsynced and renamed to its name: a reader never sees a partial file under
a model's name. A failure or cancellation removes the ``.part`` (once a write running in its thread returned;
``abort()`` waits for those). ``commit`` fsyncs the directories written to (best effort) and returns the uri the
caller gave (``pvc://claim/...``). Files are ``0644`` and created directories ``0755`` whatever the umask: the
model server reads them, maybe as another user.

Symlinks planted in the directory (``<root>/sub -> /etc``) never redirect a write. The root is opened once (it may
be a symlink, as KServe's mounts are); below it each parent is opened or created one component at a time, relative
to its parent's descriptor, with ``O_NOFOLLOW``: a symlink or non-directory on the way is an error naming it. The
``.part`` is created ``O_EXCL | O_NOFOLLOW`` after unlinking a stale one (a killed try's, or a planted link). A
final name that is a symlink is replaced by the file (``rename`` replaces the link, never writes through it); a
directory there is an error.

Reruns: :meth:`PvcDestination.lookup` finds a regular file (not a link) of the listed size whose sha256 is the
listed ``sha256:`` digest (hashed in a thread), or, when none is listed, whose xattr ``user.model-sync.source`` is
the file's ``source_identity`` (for a pvc source its stat), set on the checked ``.part`` before its rename. Without
user xattrs (tmpfs before Linux 6.6, some NFS) such files are sent again.

The stream's errors propagate as they are; the destination's own ``OSError`` becomes a one-line, never retried
:class:`~job.errors.DestinationError` ("writing sub/w.bin to /mnt/models: No space left on device").
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import stat
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from job.destinations.base import OneFilePerPut
from job.errors import DestinationError
from job.model import Committed, ObjectInfo, Uploaded, source_identity

__all__ = ["PART_SUFFIX", "XATTR_SOURCE", "PvcDestination"]

log = logging.getLogger(__name__)

T = TypeVar("T")

PART_SUFFIX = ".part"
"""A file is written as ``<name>.part`` and renamed to ``<name>`` once complete."""
XATTR_SOURCE = "user.model-sync.source"
"""Extended attribute holding the file's identity at its source (``job.model.source_identity``)."""
FILE_MODE = 0o644
DIR_MODE = 0o755
WRITE_SIZE = 1024 * 1024
"""Bytes gathered from the stream before one write in a worker thread."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_IOV_MAX = 1024


class _Blocked(Exception):
    """Something in the directory is in the way (a symlink, a file where a directory must be)."""


@dataclass(eq=False)
class _Part:
    """One ``.part`` being written: its directory's descriptor, its own, its final name, and ``busy``, the thread
    call using the descriptors (they are closed only after it returned)."""

    dir_fd: int
    fd: int
    name: str
    busy: asyncio.Future[Any] | None = None
    keep: bool = False
    """The ``.part`` is not ours to remove: not created yet, or renamed."""
    closed: bool = False

    @property
    def part_name(self) -> str:
        return self.name + PART_SUFFIX

    def discard(self) -> None:
        """Remove the ``.part`` (unless ``keep``) and close both descriptors, once no thread uses them."""
        if self.closed:
            return
        if self.busy is not None and not self.busy.done():
            self.busy.add_done_callback(lambda _: self.discard())
            return
        self.closed = True
        if not self.keep:
            try:
                os.unlink(self.part_name, dir_fd=self.dir_fd)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("removing %s: %s", self.part_name, exc.strerror)
        _close_fd(self.fd)
        _close_fd(self.dir_fd)


def _what_is(dir_fd: int, name: str) -> str:
    with suppress(OSError):
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            return f"is a symlink (to {os.readlink(name, dir_fd=dir_fd)!r})"
    return "is not a directory"


def _open_parent(root_fd: int, rel: PurePosixPath, *, create: bool) -> int:
    """A descriptor of ``rel``'s parent, walked from ``root_fd`` one component at a time, never through a symlink."""
    fd = os.dup(root_fd)
    try:
        for depth, name in enumerate(rel.parts[:-1], start=1):
            created = False
            if create:
                try:
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                    created = True
                except FileExistsError:
                    pass
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                where = PurePosixPath(*rel.parts[:depth])
                raise _Blocked(f"{where} {_what_is(fd, name)}; refusing to write through it") from None
            os.close(fd)
            fd = sub
            if created:
                os.fchmod(fd, DIR_MODE)  # exactly 0755, whatever the umask
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_part(root_fd: int, rel: PurePosixPath) -> _Part:
    part = _Part(_open_parent(root_fd, rel, create=True), -1, rel.name, keep=True)
    try:
        with suppress(FileNotFoundError):  # a stale .part of an earlier, killed try (or a planted link)
            os.unlink(part.part_name, dir_fd=part.dir_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        part.fd = os.open(part.part_name, flags, FILE_MODE, dir_fd=part.dir_fd)
        part.keep = False
        os.fchmod(part.fd, FILE_MODE)  # exactly 0644, whatever the umask
    except BaseException:
        part.discard()
        raise
    return part


def _write_all(fd: int, chunks: list[bytes]) -> None:
    views = [memoryview(chunk) for chunk in chunks]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i : i + _IOV_MAX])
        if n == 0:
            raise OSError(errno.EIO, "the write made no progress")
        while n:
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i], n = views[i][n:], 0


def _finish(part: _Part, identity: str | None) -> OSError | None:
    """Tag, fsync and rename a complete ``.part``; returns why the xattr could not be set, if it could not."""
    xattr_error = None
    if identity is not None:
        try:
            os.setxattr(part.fd, XATTR_SOURCE, identity.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            xattr_error = exc
    os.fsync(part.fd)
    try:
        os.replace(part.part_name, part.name, src_dir_fd=part.dir_fd, dst_dir_fd=part.dir_fd)
    except IsADirectoryError:
        raise _Blocked("a directory of that name is in the way") from None
    part.keep = True
    return xattr_error


def _sha256_of(fd: int, stop: threading.Event) -> str | None:
    digest = hashlib.sha256()
    buf = bytearray(WRITE_SIZE)
    view = memoryview(buf)
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while n := f.readinto(buf):
            if stop.is_set():
                return None
            digest.update(view[:n])
    return "sha256:" + digest.hexdigest()


def _probe(root_fd: int, obj: ObjectInfo, identity: str | None, stop: threading.Event) -> bool:
    """True when ``obj``'s final file is there, complete and the same (see the module docstring)."""
    digest = (obj.digest or "").lower()
    if obj.size is None or (not digest.startswith("sha256:") and identity is None):
        return False
    try:
        dir_fd = _open_parent(root_fd, obj.path, create=False)
        try:
            fd = os.open(obj.path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, _Blocked):
        return False  # missing, a symlink (ELOOP) on the way or at the end, unreadable: send it
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != obj.size:
            return False
        if digest.startswith("sha256:"):
            return _sha256_of(fd, stop) == digest  # the bytes themselves, when there is a digest to check
        assert identity is not None
        return os.getxattr(fd, XATTR_SOURCE) == identity.encode("utf-8", "surrogateescape")
    except OSError:
        return False
    finally:
        os.close(fd)


def _fsync_dirs(root_fd: int, dirs: Sequence[PurePosixPath]) -> None:
    for rel in dirs:
        with suppress(OSError, _Blocked):
            fd = _open_parent(root_fd, rel / "_", create=False)
            with suppress(OSError):
                os.fsync(fd)
            os.close(fd)


class PvcDestination(OneFilePerPut):
    """A :class:`~job.destinations.base.Destination` writing files below a local directory."""

    def __init__(self, root: Path, *, uri: str | None = None, write_size: int = WRITE_SIZE) -> None:
        self.root = root
        self.uri = uri if uri is not None else str(root)
        """What ``commit`` returns: ``pvc://claim/path`` computed by the caller, or the root."""
        self.write_size = max(1, write_size)
        self._root_fd: int | None = None
        self._root_lock = asyncio.Lock()
        self._parts: set[_Part] = set()
        self._busy: set[asyncio.Future[Any]] = set()
        self._dirs: set[PurePosixPath] = set()
        """Directories a file was renamed into or created in: fsynced by ``commit``."""
        self._planned: set[PurePosixPath] = set()  # every path planned (a one-pass source: file by file)
        self._xattrs_warned = False

    def _error(self, what: str, cause: str) -> DestinationError:
        error = DestinationError(f"writing {what} to {self.root}: {cause}", uri=self.uri, path=what)
        error.retryable = False  # a full, read-only or hostile directory stays so
        return error

    async def _run(
        self,
        what: str | None,
        fn: Callable[..., T],
        *args: Any,
        part: _Part | None = None,
        orphan: Callable[[T], None] | None = None,
    ) -> T:
        """``fn(*args)`` in a worker thread, shielded: a cancelled caller leaves it to finish (then ``orphan``
        gets its result). With ``what``, ``OSError`` becomes a ``DestinationError`` about ``what``."""
        fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._busy.add(fut)
        fut.add_done_callback(self._busy.discard)
        if part is not None:
            part.busy = fut
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if orphan is not None:
                fut.add_done_callback(lambda f: None if f.cancelled() or f.exception() else orphan(f.result()))
            raise
        except (_Blocked, OSError) as exc:
            if what is None:
                raise
            raise self._error(what, getattr(exc, "strerror", None) or str(exc)) from exc

    def _open_root(self, create: bool) -> int | None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # follows a symlinked root (KServe's mounts)
        try:
            return os.open(self.root, flags)
        except FileNotFoundError:
            if not create:
                return None
        os.makedirs(self.root, DIR_MODE, exist_ok=True)
        fd = os.open(self.root, flags)
        os.fchmod(fd, DIR_MODE)
        return fd

    async def _root(self, what: str, *, create: bool) -> int | None:
        """The root's descriptor, opened once (and created when ``create``); None when it does not exist."""
        async with self._root_lock:
            if self._root_fd is None:
                self._root_fd = await self._run(what, self._open_root, create, orphan=_close_fd)
            return self._root_fd

    async def plan(self, objects: Sequence[ObjectInfo], *, taken: int = 0) -> Sequence[Sequence[ObjectInfo]]:
        """One file per group; refuses both ``x`` and ``x.part`` (the first's temporary name), also across calls."""
        self._planned.update(obj.path for obj in objects)
        for path, name in ((obj.path, obj.path.name) for obj in objects):
            pairs = [(path.with_name(name + PART_SUFFIX), path)]  # (temporary name, the file written)
            if len(name) > len(PART_SUFFIX) and name.endswith(PART_SUFFIX):
                pairs.append((path, path.with_name(name[: -len(PART_SUFFIX)])))
            if clash := next(((p, f) for p, f in pairs if p in self._planned and f in self._planned), None):
                raise self._error(str(clash[0]), f"it is also the temporary name of {clash[1]} while that is written")
        return await super().plan(objects)

    async def lookup(self, obj: ObjectInfo) -> Uploaded | None:
        """The complete file an earlier try wrote for ``obj`` (see the module docstring), or None: send it."""
        try:
            root_fd = await self._root(str(obj.path), create=False)
        except DestinationError:
            return None  # put says what is wrong
        if root_fd is None:
            return None
        stop = threading.Event()
        try:
            found = await self._run(None, _probe, root_fd, obj, source_identity(obj), stop)
        except asyncio.CancelledError:
            stop.set()  # a long hash stops at its next chunk
            raise
        if not found or obj.size is None:
            return None
        digest = (obj.digest or "").lower()
        sha256 = digest if digest.startswith("sha256:") else None
        return Uploaded(obj=obj, size=obj.size, sha256=sha256, detail=self.root / obj.path, skipped=True)

    async def put(self, obj: ObjectInfo, data: AsyncIterator[bytes]) -> Uploaded:
        """Write one file from its stream as ``.part``, then fsync and rename it (see the module docstring)."""
        what = str(obj.path)
        root_fd = await self._root(what, create=True)
        assert root_fd is not None
        part = await self._run(what, _open_part, root_fd, obj.path, orphan=_Part.discard)
        self._parts.add(part)
        try:
            size, batched = 0, 0
            batch: list[bytes] = []
            async for chunk in data:  # the stream's errors propagate as they are
                if not chunk:
                    continue
                batch.append(chunk)
                batched += len(chunk)
                if batched >= self.write_size:
                    await self._run(what, _write_all, part.fd, batch, part=part)
                    size, batch, batched = size + batched, [], 0
            if batch:
                await self._run(what, _write_all, part.fd, batch, part=part)
                size += batched
            xattr_error = await self._run(what, _finish, part, source_identity(obj), part=part)
        finally:
            part.discard()  # removes the .part unless renamed; after a thread still writing returns
            if part.closed:
                self._parts.discard(part)
        if xattr_error is not None and not self._xattrs_warned:
            self._xattrs_warned = True
            why = xattr_error.strerror or xattr_error
            log.info(
                "no xattr %s in %s (%s): a rerun sends again files whose source lists no sha256",
                XATTR_SOURCE,
                self.root,
                why,
            )
        self._dirs.update(obj.path.parents)
        return Uploaded(obj=obj, size=size, sha256=None, detail=self.root / obj.path)

    async def commit(self, uploaded: Sequence[Uploaded]) -> Committed:
        """Fsync the directories written to (best effort) and return the uri; safe to repeat."""
        if self._root_fd is not None and self._dirs:
            dirs = sorted(self._dirs, key=lambda p: len(p.parts), reverse=True)
            await self._run(None, _fsync_dirs, self._root_fd, dirs)
        return Committed(uri=self.uri)

    async def abort(self) -> None:
        """Wait for writes still running in threads, then remove every ``.part`` left. Never raises."""
        try:
            if self._busy:
                await asyncio.wait(set(self._busy))
            for part in list(self._parts):
                part.discard()
            self._parts.clear()
        except Exception as exc:
            log.warning("cleaning up %s: %s", self.root, exc)

    async def close(self) -> None:
        """Close the root's descriptor (once no thread uses it)."""
        if self._busy:
            await asyncio.wait(set(self._busy))
        _close_fd(self._root_fd)
        self._root_fd = None


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        with suppress(OSError):
            os.close(fd)
