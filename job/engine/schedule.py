"""Scheduling a listing's files: planned into groups by the destination, put ``parallel_files`` at a time.

See ``job.engine.transfer`` for the whole (its step 3); one group is moved by :func:`job.engine.put.put_group`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from job.destinations.base import Destination
from job.engine.progress import ProgressReporter
from job.engine.put import put_group
from job.model import ObjectInfo, Uploaded
from job.retry import RetrySettings
from job.sources.base import Source

__all__ = ["cancel_and_wait", "plan_groups", "put_all"]


async def put_all(
    source: Source,
    destination: Destination,
    objects: Sequence[ObjectInfo],
    progress: ProgressReporter,
    retry: RetrySettings,
    *,
    parallel_files: int,
    hash_all: bool,
    taken: int = 0,
) -> list[Uploaded]:
    """Plan ``objects`` into groups (``taken`` groups already written) and put them, ``parallel_files`` at once.

    Results in ``objects``' order. The first error is raised as it is, after the other puts are cancelled and
    unwound; a cancellation wins over it."""
    groups = await plan_groups(destination, objects, taken)
    position = {obj.path: i for i, obj in enumerate(objects)}
    if source.one_pass:  # read front to back only: a group's files in listing order, or each jump back rereads it
        groups = [sorted(group, key=lambda obj: position[obj.path]) for group in groups]
    results: list[Uploaded | None] = [None] * len(objects)
    todo = iter(groups)  # shared by the workers: groups start in the planned order
    first_error: list[BaseException] = []

    async def worker() -> None:
        for group in todo:
            try:
                done = await put_group(source, destination, group, progress, retry, hash_all=hash_all)
                for obj, one in zip(group, done, strict=True):
                    results[position[obj.path]] = one
            except Exception as exc:
                if not first_error:
                    first_error.append(exc)
                raise

    # A fixed pool of workers rather than a task per file behind a semaphore: the same cap, and a
    # listing of 100k files does not become 100k tasks. Not asyncio.TaskGroup: on 3.11 it can leave the
    # parent's cancel count raised after a child fails, and it wraps errors in a group.
    workers = [
        asyncio.create_task(worker(), name=f"transfer-worker-{n}") for n in range(min(parallel_files, len(groups)))
    ]
    try:
        await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        # On a failure or a cancellation: stop the other puts and wait until they have unwound, so
        # abort() never races a put that is still starting an upload.
        interrupted = await cancel_and_wait(workers)
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


async def plan_groups(
    destination: Destination, objects: Sequence[ObjectInfo], taken: int = 0
) -> list[Sequence[ObjectInfo]]:
    """The destination's groups, checked to hold every listed file exactly once."""
    groups = [group for group in await destination.plan(objects, taken=taken) if group]
    planned = sorted(str(obj.path) for group in groups for obj in group)
    if planned != sorted(str(obj.path) for obj in objects):
        raise AssertionError(f"{type(destination).__name__}.plan did not group each listed file exactly once")
    return groups


async def cancel_and_wait(tasks: Sequence[asyncio.Task[None]]) -> bool:
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
