"""The transfer engine: list -> schedule -> pipe (hash, count, progress) -> commit | abort.

:func:`transfer` moves every file a :class:`~job.sources.base.Source` lists into a
:class:`~job.destinations.base.Destination`:

1. **List** the source fully before any byte moves, and check the listing: not empty, no path twice,
   no path that is both a file and a directory of another (``a`` and ``a/b``).
2. **Put** the files, ``parallel_files`` at a time (a fixed pool of workers taking files in listing
   order). Each file's source stream is wrapped once in a :class:`~job.streams.CheckedStream` (sha256,
   byte count, progress, size and digest checks, source errors tagged as ``SourceError``), handed to
   ``destination.put``, and finished after ``put`` returns; the ``Uploaded`` it returns must report
   the size and sha256 the engine saw.
3. **Commit** the ``Uploaded`` results, in listing order, once every put succeeded.

On the first failure the sibling puts are cancelled and the *first* error is raised as it is (never an
``ExceptionGroup``: the user sees one line). ``destination.abort()`` then runs exactly once, also when
the transfer task itself is cancelled (SIGTERM), shielded from that cancellation and bounded by
``cleanup_timeout``. ``source.close()`` and ``destination.close()`` run once each at the end, whatever
happened. Errors from abort and close are logged, never raised over the error that matters.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from job.destinations.base import Committed, Destination, Uploaded
from job.errors import ConfigError, IntegrityError, ModelSyncError, SourceError
from job.progress import ProgressReporter
from job.sources.base import ObjectInfo, Source, safe_relative_path
from job.streams import DEFAULT_CHUNK_SIZE, CheckedStream, MiB, describe

__all__ = [
    "TransferResult",
    "TransferSettings",
    "check_listing",
    "open_source",
    "transfer",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TransferSettings:
    """How much moves at once, and therefore how much memory the job needs.

    Memory ceiling: about ``parallel_files x (parallel_parts + 1) x part_size`` bytes of buffered part
    data (the parts in flight plus the one being filled), plus about one chunk in flight per file
    stream (~1 MiB). With the defaults and the 8 MiB part a multipart destination picks for files up
    to ~78 GiB (:meth:`part_size_for`), that is 4 x 3 x 8 MiB = **96 MiB**, plus ~4 MiB of chunks;
    larger files get larger parts (a 200 GiB file: 21 MiB parts). A destination that streams a file
    in one request (OCI PATCH) buffers nothing beyond the chunk in flight. Measured (1 GiB, 4 x 256
    MiB + small files, SeaweedFS): pvc->s3 and s3->s3 peak RSS 173 MiB with these defaults, 239 MiB
    with 4 parts per file and no faster (the server is the bottleneck); s3->oci 93 MiB.

    The engine itself uses ``parallel_files``, ``progress_interval`` and ``cleanup_timeout``.
    ``parallel_parts``, ``part_size`` and ``chunk_size`` are for the backends: the caller builds the
    source and destination with them (``from_config`` reads the same job config), so the Destination
    protocol stays ``put(obj, data)`` and each multipart upload bounds its own parts in flight. A
    per-upload limit (not one semaphore shared by all files) keeps every file moving and makes the
    ceiling above exact.
    """

    parallel_files: int = 4
    """Files moved at once."""
    parallel_parts: int = 2
    """Parts in flight per multipart upload (read by destinations)."""
    part_size: int | None = None
    """Multipart part size in bytes; ``None``: chosen per file by :meth:`part_size_for`."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Read size for sources that choose one (local files); network sources pass on what arrives."""
    progress_interval: float = 5.0
    """Seconds between progress lines (when the reporter does not set its own)."""
    cleanup_timeout: float = 20.0
    """Seconds ``abort()`` and each ``close()`` may take; less than Kubernetes' 30 s grace period."""

    def __post_init__(self) -> None:
        for name in ("parallel_files", "parallel_parts", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"transfer setting {name} must be >= 1, got {getattr(self, name)}")
        if self.part_size is not None and self.part_size < 1:
            raise ConfigError(f"transfer setting part_size must be >= 1, got {self.part_size}")
        if self.progress_interval <= 0 or self.cleanup_timeout <= 0:
            raise ConfigError("transfer settings progress_interval and cleanup_timeout must be > 0")

    def part_size_for(
        self,
        size: int | None,
        *,
        minimum: int = 5 * MiB,
        maximum: int = 5 * 1024 * MiB,
        max_parts: int = 10_000,
        default: int = 8 * MiB,
    ) -> int:
        """The part size for a file of ``size`` bytes (S3's limits are the defaults).

        ``part_size`` (or ``default``), raised to fit ``size`` in ``max_parts`` parts and rounded up to
        whole MiB, then held within ``[minimum, maximum]``. Unknown sizes get the configured size.
        """
        want = self.part_size or default
        if size is not None and size > want * max_parts:
            want = math.ceil(math.ceil(size / max_parts) / MiB) * MiB
        return max(minimum, min(maximum, want))


@dataclass(frozen=True, slots=True)
class TransferResult:
    """What one successful :func:`transfer` did."""

    committed: Committed
    files: int
    bytes: int
    seconds: float
    """Wall time from the first listing call to the commit's return."""
    uploaded: list[Uploaded]
    """One per file, in listing order (what ``commit`` received)."""


def check_listing(objects: Sequence[ObjectInfo]) -> None:
    """Raise :class:`SourceError` unless the listing can become one model tree.

    Refused: an empty listing, an unsafe path, a negative size, a path listed twice, and a path that is
    both a file and a directory of another (``a`` and ``a/b``), which no file system can hold.
    """
    if not objects:
        raise SourceError("source holds no files")
    files: set[PurePosixPath] = set()
    dirs: dict[PurePosixPath, PurePosixPath] = {}  # directory -> the first file listed below it
    for obj in objects:
        path = obj.path
        if safe_relative_path(str(path)) != path:
            raise SourceError(f"refusing path {str(path)!r}: not a normalized relative path")
        if obj.size is not None and obj.size < 0:
            raise SourceError(f"source lists {path} with a negative size ({obj.size})", path=str(path))
        if path in files:
            raise SourceError(f"source lists {path} twice", path=str(path))
        if path in dirs:
            raise SourceError(f"source lists {path} both as a file and as a directory of {dirs[path]}")
        for parent in path.parents[:-1]:  # parents[-1] is "."
            if parent in files:
                raise SourceError(f"source lists {parent} both as a file and as a directory of {path}")
            dirs.setdefault(parent, path)
        files.add(path)


@asynccontextmanager
async def open_source(source: Source, obj: ObjectInfo, *, offset: int = 0) -> AsyncIterator[AsyncIterator[bytes]]:
    """Open one listed file at the source, tagging library errors from opening or closing it.

    This is the seam for retrying a file: a retry would reopen here at ``offset=stream.size`` and feed
    the same :class:`CheckedStream` (its hash state carries on). Not done yet, because a destination
    would have to resume its half of the file too (an S3 multipart upload can; an OCI PATCH session can
    with ``Range``); today a failed file fails the transfer and Kubernetes retries the Job.
    """
    path = str(obj.path)
    body_done = False
    try:
        async with AsyncExitStack() as stack:
            try:
                chunks = await stack.enter_async_context(source.open(obj, offset=offset))
            except ModelSyncError:
                raise
            except Exception as exc:
                raise SourceError(f"opening {path} at the source: {describe(exc)}", path=path) from exc
            yield chunks
            body_done = True
    except Exception as exc:
        if body_done and not isinstance(exc, ModelSyncError):  # raised while closing the source stream
            raise SourceError(f"closing {path} at the source: {describe(exc)}", path=path) from exc
        raise


async def _put_one(source: Source, destination: Destination, obj: ObjectInfo, progress: ProgressReporter) -> Uploaded:
    path = str(obj.path)
    log.debug("putting %s (%s bytes)", path, obj.size)
    async with open_source(source, obj) as chunks:
        stream = CheckedStream(obj, chunks, on_chunk=progress.advance)
        try:
            uploaded = await destination.put(obj, stream)
        except Exception:
            # The stream's own error (source failure, short read) is the cause, whatever a destination
            # or its HTTP client made of it on the way out.
            if stream.error is not None:
                raise stream.error  # noqa: B904 - keeps the stream error's own __cause__
            raise
        await stream.finish()
    if uploaded.size != stream.size:
        raise IntegrityError(f"writing {path}: the destination reports {uploaded.size} bytes, {stream.size} were sent")
    if not uploaded.sha256:
        uploaded = replace(uploaded, sha256=stream.sha256)
    elif uploaded.sha256.lower() != stream.sha256:
        raise IntegrityError(
            f"writing {path}: the destination reports {uploaded.sha256}, the bytes sent hash to {stream.sha256}"
        )
    progress.file_done(obj.path, stream.size)
    return uploaded


async def _put_all(
    source: Source,
    destination: Destination,
    objects: Sequence[ObjectInfo],
    parallel_files: int,
    progress: ProgressReporter,
) -> list[Uploaded]:
    results: list[Uploaded | None] = [None] * len(objects)
    todo = iter(enumerate(objects))  # shared by the workers: files start in listing order
    first_error: list[BaseException] = []

    async def worker() -> None:
        for index, obj in todo:
            try:
                results[index] = await _put_one(source, destination, obj, progress)
            except Exception as exc:
                if not first_error:
                    first_error.append(exc)
                raise

    # A fixed pool of workers rather than a task per file behind a semaphore: the same cap, and a
    # listing of 100k files does not become 100k tasks. Not asyncio.TaskGroup: on 3.11 it can leave the
    # parent's cancel count raised after a child fails, and it wraps errors in a group.
    workers = [
        asyncio.create_task(worker(), name=f"transfer-worker-{n}") for n in range(min(parallel_files, len(objects)))
    ]
    try:
        await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        # On a failure or a cancellation: stop the other puts and wait until they have unwound, so
        # abort() never races a put that is still starting an upload.
        interrupted = await _cancel_and_wait(workers)
    if interrupted:  # we were cancelled while stopping the others: the cancellation wins
        raise asyncio.CancelledError from (first_error[0] if first_error else None)
    if first_error:
        raise first_error[0]
    for done in workers:
        if not done.cancelled() and (error := done.exception()) is not None:
            raise error  # a BaseException that is not an Exception (KeyboardInterrupt)
    if any(u is None for u in results):  # a worker was cancelled by someone else (loop shutdown)
        raise asyncio.CancelledError
    return [u for u in results if u is not None]


async def _cancel_and_wait(tasks: Sequence[asyncio.Task[None]]) -> bool:
    """Cancel ``tasks`` and wait until all are done, even through repeated cancellation of the caller.

    Returns True if the caller was cancelled meanwhile. Marks every task's exception as retrieved.
    """
    for task in tasks:
        task.cancel()
    interrupted = False
    while not all(task.done() for task in tasks):
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            interrupted = True
    for task in tasks:
        if not task.cancelled():
            task.exception()
    return interrupted


async def _list_all(source: Source) -> list[ObjectInfo]:
    try:
        objects = [obj async for obj in source.list()]
    except ModelSyncError:
        raise
    except Exception as exc:
        raise SourceError(f"listing the source: {describe(exc)}") from exc
    check_listing(objects)
    return objects


async def _quietly(step: Callable[[], Awaitable[None]], what: str, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await step()
    except TimeoutError:
        log.warning("%s: gave up after %.0f s", what, seconds)
    except Exception as exc:
        log.warning("%s failed: %s", what, describe(exc))


async def _run_to_end(step: Callable[[], Awaitable[None]], what: str, seconds: float) -> bool:
    """Run a cleanup step to its end even if we are cancelled meanwhile; never raises.

    Returns True if a cancellation arrived meanwhile: the caller re-raises it once cleanup is over.
    """
    task = asyncio.create_task(_quietly(step, what, seconds), name=what)
    interrupted = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # the loop is shutting down: nothing left to wait for
                return True
            interrupted = True
    return interrupted


async def transfer(
    source: Source,
    destination: Destination,
    settings: TransferSettings,
    *,
    progress: ProgressReporter | None = None,
) -> TransferResult:
    """Move every file of ``source`` into ``destination`` and commit them as one model.

    Raises the first error as it is: ``SourceError`` for listing/opening/reading, the destination's
    ``DestinationError``, ``IntegrityError`` for a size or digest that does not match; re-raises
    ``CancelledError`` after cleanup when the task is cancelled. Either way ``abort()`` ran once, and
    both ends are closed. ``progress`` defaults to a :class:`ProgressReporter` logging every
    ``settings.progress_interval`` seconds.
    """
    reporter = progress if progress is not None else ProgressReporter(interval=settings.progress_interval)
    started = time.monotonic()
    interrupted = False
    try:
        try:
            objects = await _list_all(source)
            total = None if any(o.size is None for o in objects) else sum(o.size or 0 for o in objects)
            reporter.start(files=len(objects), total_bytes=total, interval=settings.progress_interval)
            ticker = asyncio.create_task(reporter.run_ticker(), name="progress-ticker")
            try:
                uploaded = await _put_all(source, destination, objects, settings.parallel_files, reporter)
            finally:
                ticker.cancel()
            committed = await destination.commit(uploaded)
        except BaseException:
            interrupted = await _run_to_end(destination.abort, "aborting the destination", settings.cleanup_timeout)
            raise
    finally:
        for what, step in (("closing the source", source.close), ("closing the destination", destination.close)):
            interrupted = await _run_to_end(step, what, settings.cleanup_timeout) or interrupted
        if interrupted:
            raise asyncio.CancelledError  # a cancellation arrived during cleanup: honour it now
    seconds = time.monotonic() - started
    reporter.finish()
    return TransferResult(
        committed=committed,
        files=len(uploaded),
        bytes=sum(u.size for u in uploaded),
        seconds=seconds,
        uploaded=uploaded,
    )
