"""The Source contract (``job/sources/base.py``), checked on every source against real servers.

In the spirit of rclone's fstests: the same tests run over every backend (``source_case`` in ``conftest.py``):

1. ``list()`` yields each file of the model once, with a validated relative path (no ``..``, no leading ``/``)
   and a size equal to the bytes ``open()`` gives; a listed ``digest`` is the sha256 of those bytes;
2. a full read of every file gives the model's bytes;
3. ``seekable`` is declared, as a bool; when True, ``open(obj, offset=n)`` gives exactly ``bytes[n:]`` for
   n in 0, 1, size // 2 and size (when False, nothing is asserted about offsets);
4. a wrapper keeps the capabilities of what it wraps: ``FilteredSource(inner).seekable == inner.seekable``, and
   ``one_pass`` likewise, also once listing has set it;
5. ``close()`` returns without error after a full read, and after a listing that read nothing;
6. ``one_pass`` is declared, as a bool; when True (once a file is listed), each file opened as soon as it is listed,
   before the next is asked for, gives its bytes, and the source is read once.
"""

from __future__ import annotations

from collections import Counter
from pathlib import PurePosixPath

import pytest

from job.model import ObjectInfo, safe_relative_path
from job.sources.base import Source
from job.sources.filtered import FilteredSource
from tests.contract.cases import EXCLUDE, SourceCase, listing, read
from tests.fakes import sha256_of

pytestmark = pytest.mark.integration


async def read_everything(source: Source) -> dict[str, tuple[ObjectInfo, bytes]]:
    """List, then read each listed file in full (the engine's order)."""
    listed = await listing(source)
    return {str(obj.path): (obj, await read(source, obj)) for obj in listed}


async def test_list_yields_each_file_once_with_valid_paths_and_true_sizes(source_case: SourceCase) -> None:
    source = source_case.make()
    try:
        listed = await listing(source)
        paths = [obj.path.as_posix() for obj in listed]
        assert [p for p, n in Counter(paths).items() if n > 1] == []
        assert sorted(paths) == sorted(source_case.files)
        for obj in listed:
            assert isinstance(obj.path, PurePosixPath)
            assert not obj.path.is_absolute() and ".." not in obj.path.parts
            assert safe_relative_path(obj.path.as_posix()) == obj.path
            data = await read(source, obj)
            assert obj.size == len(data), obj.path
            if obj.digest is not None:
                assert obj.digest == sha256_of(data), obj.path
    finally:
        await source.close()


async def test_full_reads_give_the_model(source_case: SourceCase) -> None:
    source = source_case.make()
    try:
        files = await read_everything(source)
    finally:
        await source.close()
    assert {path: data for path, (_, data) in files.items()} == source_case.files


async def test_seekable_is_declared_and_offset_reads_give_the_tail(source_case: SourceCase) -> None:
    source = source_case.make()
    try:
        assert isinstance(source.seekable, bool)
        if not source.seekable:
            return  # nothing is promised about offsets
        for obj in await listing(source):
            data = source_case.files[obj.path.as_posix()]
            for offset in sorted(n for n in {0, 1, len(data) // 2, len(data)} if n <= len(data)):
                assert await read(source, obj, offset) == data[offset:], (obj.path, offset)
    finally:
        await source.close()


async def test_a_wrapper_keeps_the_capabilities(source_case: SourceCase) -> None:
    inner = source_case.make()
    try:
        assert FilteredSource(inner, (), ()).seekable == inner.seekable
        assert FilteredSource(inner, ("*",), EXCLUDE).seekable == inner.seekable
        assert FilteredSource(FilteredSource(inner, (), EXCLUDE), (), ()).seekable == inner.seekable
    finally:
        await inner.close()


async def test_a_wrapper_keeps_one_pass_once_listing_set_it(source_case: SourceCase) -> None:
    inner = source_case.make()
    wrapper = FilteredSource(inner, (), ())
    try:
        assert wrapper.one_pass == inner.one_pass
        await listing(wrapper)
        assert isinstance(inner.one_pass, bool) and wrapper.one_pass == inner.one_pass
    finally:
        await wrapper.close()


async def test_a_one_pass_source_serves_each_file_opened_as_it_is_listed(
    source_case: SourceCase, caplog: pytest.LogCaptureFixture
) -> None:
    source = source_case.make()
    got: dict[str, bytes] = {}
    try:
        async for obj in source.list():
            assert isinstance(source.one_pass, bool)
            if not source.one_pass:
                return  # nothing is promised about opening a file while listing
            async with source.open(obj) as chunks:  # before the next file is asked for
                got[obj.path.as_posix()] = b"".join([chunk async for chunk in chunks])
    finally:
        await source.close()
    assert got == source_case.files
    assert "again from its start" not in caplog.text  # one pass served the listing and every file


async def test_close_after_a_full_read(source_case: SourceCase) -> None:
    source = source_case.make()
    files = await read_everything(source)
    assert files
    await source.close()


async def test_close_after_listing_without_reading(source_case: SourceCase) -> None:
    source = source_case.make()
    assert await listing(source)
    await source.close()
