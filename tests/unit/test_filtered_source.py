"""Include/exclude globs, with huggingface_hub's semantics, over any source."""

from __future__ import annotations

import pytest

from job.engine.transfer import TransferSettings, transfer
from job.errors import SourceNotFound
from job.retry import RetrySettings
from job.sources.filtered import FilteredSource, matches
from tests.fakes import MemoryDestination, MemorySource

FILES = ["config.json", "sub/config.json", "model.safetensors", "onnx/model.onnx", "onnx/extra/a.bin", "README.md"]


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ([], [], FILES),
        (["*.json"], [], ["config.json", "sub/config.json"]),
        (["onnx/"], [], ["onnx/model.onnx", "onnx/extra/a.bin"]),
        ([], ["onnx/", "*.md"], ["config.json", "sub/config.json", "model.safetensors"]),
        (["*.json", "*.safetensors"], ["sub/*"], ["config.json", "model.safetensors"]),
        (["config.json"], [], ["config.json"]),
    ],
)
def test_globs(include: list[str], exclude: list[str], expected: list[str]) -> None:
    assert [f for f in FILES if matches(f, include, exclude)] == expected


async def test_filtered_source_lists_only_matching_and_reads_through() -> None:
    inner = MemorySource({f: f.encode() for f in FILES})
    source = FilteredSource(inner, ["*.json"], [])
    listed = [o async for o in source.list()]
    assert [str(o.path) for o in listed] == ["config.json", "sub/config.json"]
    async with source.open(listed[1]) as stream:
        assert b"".join([c async for c in stream]) == b"sub/config.json"


@pytest.mark.parametrize("seekable", [True, False])
def test_the_filter_keeps_the_inner_source_s_capabilities(seekable: bool) -> None:
    assert FilteredSource(MemorySource({}, seekable=seekable), [], ["*.md"]).seekable is seekable


async def test_a_broken_read_through_the_filter_resumes_at_its_offset() -> None:
    """With an exclude set, a seekable source's broken read still resumes where it broke (bytes read: 1x the
    file), instead of sending the whole file again."""
    data = bytes(range(256)) * 400
    inner = MemorySource({"w.bin": data, "README.md": b"x"}, chunk_size=1000, fail_after={"w.bin": 50_000},
                         fail_times={"w.bin": 1}, seekable=True)  # fmt: skip
    dest = MemoryDestination()
    await transfer(FilteredSource(inner, [], ["*.md"]), dest, TransferSettings(retry=RetrySettings(initial_wait=0)))
    assert dest.stored == {"w.bin": data}
    assert inner.opened == [("w.bin", 0), ("w.bin", 50_000)]
    assert dest.calls.count("put:w.bin") == 1


async def test_everything_filtered_names_the_settings() -> None:
    source = FilteredSource(MemorySource({"a.bin": b"x"}), ["*.json"], [])
    with pytest.raises(SourceNotFound, match="MODEL_SYNC_SOURCE_INCLUDE"):
        _ = [o async for o in source.list()]
