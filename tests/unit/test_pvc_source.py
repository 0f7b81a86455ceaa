"""Source pvc: a mounted file or tree, nested folders kept, links out of the root refused."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from job.errors import SourceError, SourceNotFound
from job.model import ObjectInfo
from job.sources.pvc import PvcSource


async def listing(source: PvcSource) -> dict[str, int | None]:
    return {str(o.path): o.size async for o in source.list()}


async def read(source: PvcSource, obj: ObjectInfo, offset: int = 0) -> bytes:
    async with source.open(obj, offset=offset) as stream:
        return b"".join([chunk async for chunk in stream])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "config.json").write_text('{"top": true}')
    (root / "sub" / "config.json").write_text('{"sub": true}')
    (root / "sub" / "deeper" / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "zero.txt").write_bytes(b"")
    return root


async def test_lists_nested_tree_with_sizes_and_empty_files(tree: Path) -> None:
    source = PvcSource(tree)
    assert await listing(source) == {
        "config.json": 13,
        "sub/config.json": 13,
        "sub/deeper/weights.bin": 3 * 1024 * 1024 + 17,
        "zero.txt": 0,
    }


async def test_reads_bytes_exactly_and_from_an_offset(tree: Path) -> None:
    source = PvcSource(tree, chunk_size=64 * 1024)
    objs = {str(o.path): o async for o in source.list()}
    weights = (tree / "sub" / "deeper" / "weights.bin").read_bytes()
    assert await read(source, objs["sub/deeper/weights.bin"]) == weights
    assert await read(source, objs["sub/deeper/weights.bin"], offset=1000) == weights[1000:]
    assert await read(source, objs["zero.txt"]) == b""
    assert await read(source, objs["sub/config.json"]) == b'{"sub": true}'


async def test_single_file_keeps_its_name(tree: Path) -> None:
    source = PvcSource(tree / "sub" / "deeper" / "weights.bin")
    objs = [o async for o in source.list()]
    assert [o.path for o in objs] == [PurePosixPath("weights.bin")]


async def test_symlink_inside_the_root_is_followed(tree: Path) -> None:
    (tree / "alias.json").symlink_to(tree / "config.json")
    (tree / "linked-dir").symlink_to(tree / "sub" / "deeper")
    names = await listing(PvcSource(tree))
    assert names["alias.json"] == 13
    assert names["linked-dir/weights.bin"] == 3 * 1024 * 1024 + 17


@pytest.mark.parametrize("target", ["outside.txt", "outside-dir"])
async def test_symlink_out_of_the_root_is_refused(tree: Path, target: str) -> None:
    outside = tree.parent / target
    if target.endswith("dir"):
        outside.mkdir()
        (outside / "secret").write_text("x")
    else:
        outside.write_text("x")
    (tree / "escape").symlink_to(outside)
    with pytest.raises(SourceError, match="escape.*outside the model directory"):
        await listing(PvcSource(tree))


async def test_empty_dir_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFound, match="holds no files"):
        await listing(PvcSource(tmp_path / "empty"))
    with pytest.raises(SourceNotFound, match="no such file"):
        await listing(PvcSource(tmp_path / "missing"))


async def test_file_removed_after_listing_is_a_source_error(tree: Path) -> None:
    source = PvcSource(tree)
    objs = {str(o.path): o async for o in source.list()}
    (tree / "config.json").unlink()
    with pytest.raises(SourceError, match="reading config.json"):
        await read(source, objs["config.json"])
