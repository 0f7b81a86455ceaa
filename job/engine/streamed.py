"""Moving the files of a ``one_pass`` source as it lists them, so that the source is read once.

A tar.gz at a URL (or a tar on a server without ranges) has no random access: its listing reads every byte, and
a copy after it would read them all again (twice the download, twice the inflating). Such a source says
``one_pass``, and :func:`put_while_listing` moves each file as soon as the listing reaches it:

* each file is planned alone (``destination.plan([obj], taken=n)``) and its put started on one of
  ``parallel_files`` slots; the next file is asked for only once that put has *opened* the file (or found it
  already written: a rerun), so the source, which serves an opened file before it reads the next header,
  passes the file's bytes straight to its put;
* after ``destination.groups_ahead()`` files (an OCI image keeps half its layer budget so), the rest are only
  listed, then planned together and put as usual (``job.engine.schedule``): their bytes are read again;
* a path listed again (an archive's later entry of the same name replaces the earlier, as extracting does) is put
  again once the earlier put is over, and its result replaces the earlier one; the listing's checks
  (:class:`~job.engine.listing.ListingChecks`) run file by file, so a path that is both a file and a directory is
  refused as soon as it is listed.

A put that fails is retried by ``put_group`` as any other: its new open is behind the pass, which the source
then reads again from its start. The first error stops the listing, cancels the other puts and is raised as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import PurePosixPath

from job.destinations.base import Destination
from job.engine.listing import ListingChecks, next_listed
from job.engine.progress import ProgressReporter
from job.engine.put import put_group
from job.engine.schedule import cancel_and_wait, plan_groups, put_all
from job.errors import SourceError
from job.model import ObjectInfo, Uploaded
from job.retry import RetrySettings
from job.sources.base import Source

__all__ = ["put_while_listing"]


async def put_while_listing(
    source: Source,
    destination: Destination,
    first: ObjectInfo,
    listing: AsyncIterator[ObjectInfo],
    progress: ProgressReporter,
    retry: RetrySettings,
    *,
    parallel_files: int,
    max_files: int,
    hash_all: bool,
    keep: Callable[[ObjectInfo], bool] = lambda obj: True,
) -> list[Uploaded]:
    """Put ``first`` and the rest of ``listing`` as they are listed (module doc); results in first-listed order.

    ``keep``: whether a listed file is moved (a signed run leaves out the signature it writes itself)."""
    ahead = await destination.groups_ahead()
    checks = ListingChecks(again=True)
    latest: dict[PurePosixPath, ObjectInfo] = {}  # first-listed order, the latest version of each path
    results: dict[PurePosixPath, Uploaded] = {}
    puts: dict[PurePosixPath, asyncio.Task[None]] = {}
    rest: dict[PurePosixPath, ObjectInfo] = {}
    slots = asyncio.Semaphore(parallel_files)
    failed: list[BaseException] = []
    taken = count = 0

    async def put(obj: ObjectInfo, opened: asyncio.Event) -> None:
        try:
            done = await put_group(source, destination, [obj], progress, retry, hash_all=hash_all, on_open=opened.set)
            results[obj.path] = done[0]
        except Exception as exc:
            failed.append(exc)
            raise
        finally:
            opened.set()
            slots.release()

    try:
        obj: ObjectInfo | None = first
        while obj is not None and not failed:
            count += 1
            checks.add(obj)
            if keep(obj):
                progress.listed(obj.size)
                latest[obj.path] = obj  # a path listed again keeps its first place
                if obj.path in rest or (ahead is not None and taken >= ahead):
                    rest[obj.path] = obj
                else:
                    if len(await plan_groups(destination, [obj], taken)) != 1:
                        raise AssertionError(f"{type(destination).__name__}.plan did not keep {obj.path} alone")
                    taken += 1
                    if (earlier := puts.get(obj.path)) is not None:
                        await asyncio.wait([earlier])  # the same path again: written after the earlier version
                        if failed:
                            break
                    await slots.acquire()
                    opened = asyncio.Event()
                    puts[obj.path] = asyncio.create_task(put(obj, opened), name=f"transfer-{obj.path}")
                    await opened.wait()  # the source serves this file before it lists on
            if not failed:
                obj = await next_listed(listing, count, max_files)
        if not failed and puts:
            await asyncio.wait(puts.values())
    finally:
        interrupted = await cancel_and_wait(list(puts.values()))
    if interrupted:  # cancelled while stopping the puts: the cancellation wins
        raise asyncio.CancelledError from (failed[0] if failed else None)
    if failed:
        raise failed[0]
    progress.listing_done()
    if rest:
        later = await put_all(
            source, destination, list(rest.values()), progress, retry,
            parallel_files=parallel_files, hash_all=hash_all, taken=taken,
        )  # fmt: skip
        results.update((one.obj.path, one) for one in later)
    if not latest:
        raise SourceError("source holds no files")
    return [results[path] for path in latest]
