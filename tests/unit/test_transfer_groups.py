"""The engine moving groups of files (an OCI layer of several files) on the in-memory fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from job.destinations.base import FileFeed
from job.engine.transfer import TransferSettings, transfer
from job.errors import IntegrityError, SourceError, UploadRejected
from job.model import ObjectInfo, Uploaded
from job.retry import RetrySettings
from tests.fakes import MemoryDestination, MemorySource, sha256_of

FILES = {f"d/f{i}.json": bytes([i]) * (10 + i) for i in range(7)}
SETTINGS = TransferSettings(parallel_files=2, retry=RetrySettings(initial_wait=0.001, max_wait=0.002))


class Grouping(MemoryDestination):
    """Groups the listing in runs of ``size``; ``put_group`` reads each file to its end in turn.

    ``skip_last``: never takes the group's last file; ``fail_once``: the first put_group breaks with a
    503 after reading its first file; ``found``: ``lookup_group`` answers for groups starting there.
    """

    def __init__(self, size: int = 3, *, skip_last: bool = False, fail_once: bool = False, found: str = "") -> None:
        super().__init__()
        self.size, self.skip_last, self.fail_once, self.found = size, skip_last, fail_once, found
        self.groups: list[list[str]] = []
        self.open_sources: list[int] = []

    async def plan(self, objects: Sequence[ObjectInfo], *, taken: int = 0) -> list[list[ObjectInfo]]:
        return [list(objects[i : i + self.size]) for i in range(0, len(objects), self.size)]

    async def lookup_group(self, objs: Sequence[ObjectInfo]) -> list[Uploaded] | None:
        if str(objs[0].path) != self.found:
            return None
        return [Uploaded(obj=o, size=o.size or 0, skipped=True) for o in objs]

    async def put_group(self, objs: Sequence[ObjectInfo], files: FileFeed) -> list[Uploaded]:
        self.groups.append([str(o.path) for o in objs])
        results = []
        for n, expected in enumerate(objs):
            if self.skip_last and n == len(objs) - 1:
                break
            obj, data = await anext(files)
            assert obj is expected
            results.append(await self.put(obj, data))
            if self.fail_once:
                self.fail_once = False
                raise UploadRejected("uploading a layer: 503 UNAVAILABLE", status=503)
        return results


async def test_groups_are_fed_file_after_file_and_committed_in_listing_order() -> None:
    source = MemorySource(FILES, digests={p: sha256_of(d) for p, d in FILES.items()})
    dest = Grouping()
    result = await transfer(source, dest, SETTINGS)
    assert dest.stored == FILES
    names = list(FILES)
    assert sorted(dest.groups) == [names[0:3], names[3:6]]  # the group of one file went through put()
    assert [str(u.obj.path) for u in result.uploaded] == list(FILES)
    assert [u.sha256 for u in result.uploaded] == [sha256_of(d) for d in FILES.values()]
    assert sorted(source.opened) == [(p, 0) for p in FILES] and source.open_now == 0


async def test_a_group_is_retried_from_its_first_file() -> None:
    source = MemorySource(FILES)
    dest = Grouping(size=7, fail_once=True)
    result = await transfer(source, dest, SETTINGS)
    assert dest.stored == FILES and result.files == 7
    first = next(iter(FILES))
    assert source.opened[:2] == [(first, 0), (first, 0)]  # the whole group again, from its first file
    assert source.open_now == 0


async def test_a_destination_that_leaves_a_file_unread_fails_the_transfer() -> None:
    source = MemorySource(FILES)
    dest = Grouping(size=7, skip_last=True)
    with pytest.raises(IntegrityError, match="did not read every file of its group"):
        await transfer(source, dest, SETTINGS)
    assert dest.abort_calls == 1 and source.open_now == 0


async def test_a_source_error_in_a_group_is_the_error_reported() -> None:
    source = MemorySource(FILES, fail_after={"d/f4.json": 3}, error=lambda p: PermissionError(f"denied: {p}"))
    dest = Grouping(size=7)
    with pytest.raises(SourceError, match="reading d/f4.json from the source: PermissionError"):
        await transfer(source, dest, SETTINGS)
    assert source.open_now == 0 and dest.abort_calls == 1


async def test_a_short_file_in_a_group_is_caught_when_the_next_one_is_taken() -> None:
    source = MemorySource(FILES, sizes={"d/f1.json": 50})
    with pytest.raises(IntegrityError, match="d/f1.json from the source: got 11 bytes, expected 50"):
        await transfer(source, Grouping(size=7), SETTINGS)


async def test_a_group_found_from_an_earlier_try_is_not_read() -> None:
    source = MemorySource(FILES)
    dest = Grouping(found="d/f3.json")
    result = await transfer(source, dest, SETTINGS)
    assert sorted(p for p, _ in source.opened) == [p for p in FILES if p not in ("d/f3.json", "d/f4.json", "d/f5.json")]
    assert [u.skipped for u in result.uploaded] == [False] * 3 + [True] * 3 + [False]


async def test_a_plan_that_loses_a_file_is_a_bug_not_a_silent_loss() -> None:
    class Loses(Grouping):
        async def plan(self, objects: Sequence[ObjectInfo], *, taken: int = 0) -> list[list[ObjectInfo]]:
            return [list(objects[1:])]

    with pytest.raises(AssertionError, match="did not group each listed file exactly once"):
        await transfer(MemorySource(FILES), Loses(), SETTINGS)


async def test_cancelling_during_a_group_closes_its_open_source() -> None:
    gate = asyncio.Event()
    source = MemorySource(FILES, gates={"d/f2.json": gate})
    task = asyncio.create_task(transfer(source, Grouping(size=7), SETTINGS))
    while not any(p == "d/f2.json" for p, _ in source.opened):
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.open_now == 0
