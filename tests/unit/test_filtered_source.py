"""Include/exclude globs, with huggingface_hub's semantics, over any source."""

from __future__ import annotations

import pytest

from job.errors import SourceNotFound
from job.sources.filtered import FilteredSource, matches
from tests.fakes import MemorySource

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


async def test_everything_filtered_names_the_settings() -> None:
    source = FilteredSource(MemorySource({"a.bin": b"x"}), ["*.json"], [])
    with pytest.raises(SourceNotFound, match="MODEL_SYNC_SOURCE_INCLUDE"):
        _ = [o async for o in source.list()]
