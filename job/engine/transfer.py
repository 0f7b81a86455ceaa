"""The transfer engine: list -> schedule -> pipe (hash, count, progress) -> commit | abort.

:func:`transfer` moves every file a :class:`~job.sources.base.Source` lists into a
:class:`~job.destinations.base.Destination`:

1. **List** the source fully before any byte moves, and check the listing: not empty, no path twice,
   no path that is both a file and a directory of another (``a`` and ``a/b``) (``job.engine.listing``).
   A ``one_pass`` source (a tar.gz, which has no random access) is not listed first: each file is planned
   and put as soon as it is listed, so the source is read once (``job.engine.streamed``); steps 2 and 3
   then run file by file.
2. **Plan**: the destination groups the files (``plan``): one file per group, or for an OCI image
   whose layer budget is short, several files per layer. A group of several files is moved as one
   unit, like a file below: looked up, put (its files opened one after the other as ``put_group`` takes
   them, each wrapped as below) and retried as a whole.
3. **Put** the groups, ``parallel_files`` at a time (``job.engine.schedule``: a fixed pool of workers taking
   groups in planned order). A destination with ``lookup(obj)`` is asked first whether an earlier try already
   wrote the file (same size and source identity): then it is not read nor sent again. Otherwise the file's
   source stream (a :class:`~job.engine.resume.SourceReader`, which resumes a broken read at its offset on a
   ``seekable`` source) is wrapped once in a :class:`~job.streams.CheckedStream` (byte count, progress,
   size check, and sha256 when the source listed one; source errors tagged as ``SourceError``), handed
   to ``destination.put``, and finished after ``put`` returns; the ``Uploaded`` it returns must report
   the size the engine saw (and the sha256, when both hashed). A put that fails with a retryable error
   (``job.retry``) is tried again from the file's start, up to ``retry.file_attempts`` tries: a new
   read, a new stream (hash and count restart) and a new ``put``, which starts a new upload (the destination cleaned up
   the failed one: an S3 multipart upload is aborted, an OCI upload session cancelled).
4. **Commit** the ``Uploaded`` results, in listing order, once every put succeeded.

On the first failure the sibling puts are cancelled and the *first* error is raised as it is (never an
``ExceptionGroup``: the user sees one line). ``destination.abort()`` then runs exactly once, also when
the transfer task itself is cancelled (SIGTERM), shielded from that cancellation and bounded by
``cleanup_timeout`` (after a cancellation, abort and both closes share ``stop_cleanup_timeout``, so that
the registry's restore still fits the pod's grace period). ``source.close()`` and ``destination.close()``
run once each at the end, whatever happened. Errors from abort and close are logged, never raised over
the error that matters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from job.cleanup import run_to_end
from job.destinations.base import Destination
from job.engine.listing import check_listing, closing, list_all, next_listed
from job.engine.progress import ProgressReporter
from job.engine.resume import open_source
from job.engine.schedule import put_all
from job.engine.streamed import put_while_listing
from job.errors import ConfigError, IntegrityError
from job.model import Committed, ObjectInfo, Uploaded, sha256_digest
from job.retry import RetrySettings
from job.sources.base import Source
from job.tuning import settled

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
    """What the engine itself needs: how many files move at once, progress, the cleanup bounds, the retry budget.

    Part sizes, parts in flight and read sizes are the backends' (built with them by ``job.backends``), so the
    Destination protocol stays ``put(obj, data)`` and each multipart upload bounds its own parts in flight: a
    per-upload limit, not one semaphore shared by all files, keeps every file moving. The memory ceiling that
    follows is stated where the settings are defined (``job.settings.chain``).
    """

    parallel_files: int = 4
    """Files moved at once."""
    max_files: int = 100_000
    """Files a source may list; more is an error (a hostile or broken listing would otherwise grow memory)."""
    progress_interval: float = 5.0
    """Seconds between progress lines (when the reporter does not set its own)."""
    cleanup_timeout: float = 20.0
    """Seconds ``abort()`` and each ``close()`` may take; less than Kubernetes' 30 s grace period."""
    stop_cleanup_timeout: float = 3.0
    """Seconds ``abort()`` and both ``close()`` may take together after a cancellation (SIGTERM)."""
    retry: RetrySettings = field(default_factory=RetrySettings)
    """Retry budget: ``attempts`` bounds the resumes of one read, ``file_attempts`` the tries of a file."""

    def __post_init__(self) -> None:
        if self.parallel_files < 1:
            raise ConfigError(f"transfer setting parallel_files must be >= 1, got {self.parallel_files}")
        if self.progress_interval <= 0 or self.cleanup_timeout <= 0 or self.stop_cleanup_timeout <= 0:
            raise ConfigError("transfer settings progress_interval and the cleanup timeouts must be > 0")


class Epilogue(Protocol):
    """What a run adds to the model once its files are written (``job.signing``: the signature)."""

    hash_all: bool
    """Every file's sha256 is needed: each stream is hashed, and a file found without one is sent again."""

    def listing(self, objects: Sequence[ObjectInfo]) -> list[ObjectInfo]:
        """The listing to move (a file the epilogue will write itself is left out)."""
        ...

    async def files(self, uploaded: Sequence[Uploaded]) -> Sequence[tuple[ObjectInfo, bytes]]:
        """Files to write after the model's own, before the commit."""
        ...

    async def committed(self, destination: Destination, committed: Committed) -> Committed:
        """After the commit: attach what the destination allows (an OCI referrer); the result to record."""
        ...


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


async def _put_bytes(destination: Destination, obj: ObjectInfo, data: bytes, retry: RetrySettings) -> Uploaded:
    """Write one small file the run made itself (a signature), retried like any file."""

    async def once() -> AsyncIterator[bytes]:
        yield data

    sha256 = sha256_digest(data)
    async for attempt in retry.policy(attempts=retry.file_attempts):
        with attempt:
            uploaded = await destination.put(obj, once())
            if uploaded.size != len(data):
                raise IntegrityError(
                    f"writing {obj.path}: the destination reports {uploaded.size} of {len(data)} bytes"
                )
            return replace(uploaded, sha256=sha256)
    raise AssertionError("unreachable: the retry policy re-raises")  # pragma: no cover


class _Budget:
    """Seconds for each cleanup step: ``each`` per step, or what is left of one ``shared`` allowance."""

    def __init__(self, each: float, *, shared: float | None = None) -> None:
        self.each = each
        self.deadline = None if shared is None else time.monotonic() + shared

    def next(self) -> float:
        if self.deadline is None:
            return self.each
        return max(0.2, min(self.each, self.deadline - time.monotonic()))


async def transfer(
    source: Source,
    destination: Destination,
    settings: TransferSettings,
    *,
    progress: ProgressReporter | None = None,
    epilogue: Epilogue | None = None,
) -> TransferResult:
    """Move every file of ``source`` into ``destination`` and commit them as one model.

    ``epilogue`` (a signed run): it filters the listing, its files (the signature, made from the files'
    digests) are written after the model's and before the commit, and it sees the commit.

    Raises the first error as it is: ``SourceError`` for listing/opening/reading, the destination's
    ``DestinationError``, ``IntegrityError`` for a size or digest that does not match; re-raises
    ``CancelledError`` after cleanup when the task is cancelled. Either way ``abort()`` ran once, and
    both ends are closed. ``progress`` defaults to a :class:`ProgressReporter` logging every
    ``settings.progress_interval`` seconds.
    """
    settled()  # what is alive now lives to the end of a one-job process
    reporter = progress if progress is not None else ProgressReporter(interval=settings.progress_interval)
    started = time.monotonic()
    interrupted = False
    budget = _Budget(settings.cleanup_timeout)
    try:
        try:
            hash_all = epilogue is not None and epilogue.hash_all
            async with closing(source.list()) as listing:
                first = await next_listed(listing, 0, settings.max_files)
                one_pass = first is not None and source.one_pass
                if not one_pass:
                    objects = await list_all(first, listing, settings.max_files)
                    if epilogue is not None:
                        objects = epilogue.listing(objects)
                    total = None if any(o.size is None for o in objects) else sum(o.size or 0 for o in objects)
                    reporter.start(files=len(objects), total_bytes=total, interval=settings.progress_interval)
                else:
                    reporter.start(files=None, total_bytes=None, interval=settings.progress_interval)
                ticker = asyncio.create_task(reporter.run_ticker(), name="progress-ticker")
                try:
                    if first is not None and one_pass:
                        uploaded = await put_while_listing(
                            source, destination, first, listing, reporter, settings.retry,
                            parallel_files=settings.parallel_files, max_files=settings.max_files, hash_all=hash_all,
                            keep=lambda obj: epilogue is None or bool(epilogue.listing([obj])),
                        )  # fmt: skip
                    else:
                        uploaded = await put_all(
                            source, destination, objects, reporter, settings.retry,
                            parallel_files=settings.parallel_files, hash_all=hash_all,
                        )  # fmt: skip
                finally:
                    ticker.cancel()
            if epilogue is not None:
                for obj, data in await epilogue.files(uploaded):
                    uploaded.append(await _put_bytes(destination, obj, data, settings.retry))
            committed = await destination.commit(uploaded)
            if epilogue is not None:
                committed = await epilogue.committed(destination, committed)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                budget = _Budget(settings.cleanup_timeout, shared=settings.stop_cleanup_timeout)
            aborted = await run_to_end(destination.abort, "aborting the destination", budget.next(), log=log)
            interrupted = aborted.interrupted
            raise
    finally:
        for what, step in (("closing the source", source.close), ("closing the destination", destination.close)):
            interrupted = (await run_to_end(step, what, budget.next(), log=log)).interrupted or interrupted
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
