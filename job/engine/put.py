"""Moving one group of files (usually one file): lookup, put, the engine's checks, retries.

See ``job.engine.transfer`` for the whole; this is its step 3 for one group.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import replace

from job.destinations.base import Destination
from job.engine.progress import ProgressReporter
from job.engine.resume import SourceReader
from job.errors import IntegrityError, ModelSyncError
from job.model import ObjectInfo, Uploaded
from job.retry import RetrySettings, log_before_sleep
from job.sources.base import Source
from job.streams import CheckedStream, describe

__all__ = ["put_group"]

log = logging.getLogger("job.engine.transfer")


async def put_group(
    source: Source,
    destination: Destination,
    group: Sequence[ObjectInfo],
    progress: ProgressReporter,
    retry: RetrySettings,
    *,
    hash_all: bool = False,
    on_open: Callable[[], None] | None = None,
) -> list[Uploaded]:
    """One group: skipped when the destination already has it, else put, and put again while retryable.

    ``hash_all``: every file's sha256 is needed (a signed run): a file found at the destination without
    one is sent again rather than skipped, and every stream is hashed. ``on_open`` is called once the
    file's source is open (a one-pass source then serves it before it lists on), or found not to be needed."""
    what = str(group[0].path) if len(group) == 1 else f"{len(group)} files from {group[0].path}"
    found = await (destination.lookup(group[0]) if len(group) == 1 else destination.lookup_group(group))
    if found is not None:
        found = [found] if isinstance(found, Uploaded) else found
        if hash_all and any(one.sha256 is None for one in found):
            found = None  # its digest is needed and only reading it tells
    if found is not None:
        if len(found) != len(group):
            raise IntegrityError(f"writing {what}: the destination found {len(found)} results for {len(group)} files")
        for obj, one in zip(group, found, strict=True):
            if obj.size is not None and one.size != obj.size:
                raise IntegrityError(
                    f"writing {obj.path}: the destination holds {one.size} bytes, the source lists {obj.size}"
                )
            progress.file_skipped(obj.path, one.size)
        if on_open is not None:
            on_open()
        return found
    before_sleep = log_before_sleep(log, f"sending {what}", retry.file_attempts, _cause)
    async for attempt in retry.policy(attempts=retry.file_attempts, before_sleep=before_sleep):
        with attempt:
            if len(group) == 1:
                return [await _put_attempt(source, destination, group[0], progress, retry, hash_all, on_open)]
            return await _put_group_attempt(source, destination, group, progress, retry, hash_all)
    raise AssertionError("unreachable: the retry policy re-raises")  # pragma: no cover


def _cause(exc: BaseException | None) -> str:
    return str(exc) if isinstance(exc, ModelSyncError) else describe(exc or Exception())


def _checked(uploaded: Uploaded, stream: CheckedStream) -> Uploaded:
    """``uploaded`` with the engine's sha256 filled in, once its size and digest agree with the stream's."""
    path = str(stream.obj.path)
    if uploaded.obj.path != stream.obj.path:
        raise IntegrityError(f"writing {path}: the destination reports {uploaded.obj.path} instead")
    if uploaded.size != stream.size:
        raise IntegrityError(f"writing {path}: the destination reports {uploaded.size} bytes, {stream.size} were sent")
    if stream.sha256 is None:
        return uploaded  # nothing hashed the whole file: the destination's own checks covered the bytes
    if uploaded.sha256 is None:
        return replace(uploaded, sha256=stream.sha256)
    if uploaded.sha256.lower() != stream.sha256:
        raise IntegrityError(
            f"writing {path}: the destination reports {uploaded.sha256}, the bytes sent hash to {stream.sha256}"
        )
    return uploaded


async def _put_attempt(
    source: Source,
    destination: Destination,
    obj: ObjectInfo,
    progress: ProgressReporter,
    retry: RetrySettings,
    hash_all: bool,
    on_open: Callable[[], None] | None = None,
) -> Uploaded:
    log.debug("putting %s (%s bytes)", obj.path, obj.size)
    reader = SourceReader(source, obj, retry)
    stream: CheckedStream | None = None
    read_to_end = False
    try:
        await reader.start()
        if on_open is not None:
            on_open()
        stream = CheckedStream(obj, reader, on_chunk=progress.advance, hash_all=hash_all)
        try:
            uploaded = await destination.put(obj, stream)
        except Exception:
            # The stream's own error (source failure, short read) is the cause, whatever a destination
            # or its HTTP client made of it on the way out.
            if stream.error is not None:
                raise stream.error  # noqa: B904 - keeps the stream error's own __cause__
            raise
        await stream.finish()
        read_to_end = True
    except Exception:
        if stream is not None:
            progress.rewind(stream.size)  # this try's bytes; another try counts them again
        raise
    finally:
        if read_to_end:
            await reader.aclose()  # an error closing a fully read source is still an error
        else:
            await reader.aclose_quietly()  # also on cancellation: nothing stays open
    uploaded = _checked(uploaded, stream)
    progress.file_done(obj.path, stream.size)
    return uploaded


async def _put_group_attempt(
    source: Source,
    destination: Destination,
    group: Sequence[ObjectInfo],
    progress: ProgressReporter,
    retry: RetrySettings,
    hash_all: bool,
) -> list[Uploaded]:
    """One try of a group: its files are opened one after the other, as ``put_group`` takes them."""
    log.debug("putting %d files from %s", len(group), group[0].path)
    streams: list[CheckedStream] = []
    open_reader: list[SourceReader] = []
    feed_errors: list[Exception] = []

    async def feed() -> AsyncGenerator[tuple[ObjectInfo, AsyncIterator[bytes]], None]:
        try:
            for obj in group:
                reader = SourceReader(source, obj, retry)
                open_reader[:] = [reader]
                await reader.start()
                stream = CheckedStream(obj, reader, on_chunk=progress.advance, hash_all=hash_all)
                streams.append(stream)
                yield obj, stream
                await stream.finish()  # the destination took the next file: this one must be whole
                open_reader.clear()
                await reader.aclose()
        except Exception as exc:
            feed_errors.append(exc)
            raise

    files = feed()
    try:
        try:
            uploaded = await destination.put_group(group, files)
        except Exception:
            errors = [*feed_errors, *(s.error for s in streams if s.error is not None)]
            if errors:
                raise errors[0]  # noqa: B904 - the source's own error is the cause (see _put_attempt)
            raise
        if await anext(files, None) is not None or len(streams) != len(group):
            raise IntegrityError(f"writing {group[0].path}: the destination did not read every file of its group")
    except Exception:
        progress.rewind(sum(s.size for s in streams))
        raise
    finally:
        for reader in open_reader:
            await reader.aclose_quietly()
        await files.aclose()
    if len(uploaded) != len(group):
        raise IntegrityError(f"writing {group[0].path}: the destination reports {len(uploaded)} of {len(group)} files")
    checked = [_checked(u, s) for u, s in zip(uploaded, streams, strict=True)]
    for stream in streams:
        progress.file_done(stream.obj.path, stream.size)
    return checked
