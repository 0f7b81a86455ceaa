"""The layer budget (job.oci.layout) and layers of several files (job.oci.modelcar.PackedLayer)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from collections.abc import AsyncIterator, Sequence
from pathlib import PurePosixPath

import pytest

from job.errors import IntegrityError
from job.oci.layout import BIG_FILE, MAX_LAYERS_LIMIT, PACK_FILES, plan_layers
from job.oci.modelcar import (
    ANNOTATION_FILES,
    MAX_FILE_LISTS,
    LayerDescriptor,
    ModelLayer,
    PackedLayer,
    group_identity,
    modelcar_manifest,
)

MiB = 1024 * 1024
GiB = 1024 * MiB


def listing(n: int, *, seed: int = 1, shards: int = 0, shard_size: int = 4 * GiB) -> list[tuple[PurePosixPath, int]]:
    """``n`` files: ``shards`` big ones and small ones (0-64 KiB) spread over nested folders, shuffled."""
    rng = random.Random(seed)
    files = [(PurePosixPath(f"model-{i:05d}-of-{shards:05d}.safetensors"), shard_size) for i in range(shards)]
    files += [
        (PurePosixPath(f"d{i % 7}/sub{i % 3}/f {i}.json"), rng.randrange(0, 64 * 1024)) for i in range(n - shards)
    ]
    rng.shuffle(files)
    return files


def check_plan(files: Sequence[tuple[PurePosixPath, int]], budget: int) -> list[list[int]]:
    groups = plan_layers(files, budget)
    assert len(groups) <= budget
    assert sorted(i for g in groups for i in g) == list(range(len(files)))  # each file exactly once
    for group in groups:  # a group is written in path order
        assert [files[i][0].parts for i in group] == sorted(files[i][0].parts for i in group)
    assert [min(g) for g in groups] == sorted(min(g) for g in groups)  # groups in listing order
    return groups


@pytest.mark.parametrize("n", [1, 10, 127, 128, 500, 10_000])
@pytest.mark.parametrize("budget", [1, 63, 126])
def test_the_budget_holds_for_any_number_of_files(n: int, budget: int) -> None:
    files = listing(n, shards=min(n, 4))
    groups = check_plan(files, budget)
    if n <= budget:
        assert groups == [[i] for i in range(n)]  # within the budget: a layer per file, in listing order


def test_many_big_files_share_with_their_neighbours() -> None:
    shards = [(PurePosixPath(f"model-{i:05d}-of-00200.safetensors"), 4 * GiB + i) for i in range(200)]
    files = [*shards, (PurePosixPath("config.json"), 700), (PurePosixPath("tokenizer_config.json"), 900)]
    groups = check_plan(files, 63)
    big = [g for g in groups if files[g[0]][1] >= BIG_FILE]
    # Neighbours in path order: each group of shards is a run of consecutive shard numbers, and no layer
    # holds more than it must (62 slots for 200 shards: 4).
    for group in big:
        assert group == list(range(group[0], group[0] + len(group))) and len(group) <= 4
    assert [[files[i][0].name for i in g] for g in groups if g not in big] == [["config.json", "tokenizer_config.json"]]


def test_big_files_keep_their_own_layer_and_small_ones_are_packed_by_folder() -> None:
    files = listing(2004, shards=4, seed=3)
    groups = check_plan(files, 63)
    alone = [files[g[0]][0].name for g in groups if len(g) == 1]
    assert sorted(alone) == [f"model-{i:05d}-of-00004.safetensors" for i in range(4)]
    packs = [g for g in groups if len(g) > 1]
    assert len(packs) == -(-2000 // PACK_FILES)  # as few packs as PACK_FILES allows
    assert max(len(g) for g in packs) - min(len(g) for g in packs) <= PACK_FILES // 2
    # Path order: the packs cut the sorted listing into runs.
    ordered = sorted(files[i][0].parts for g in packs for i in g)
    runs = sorted(([files[i][0].parts for i in g] for g in packs), key=lambda r: r[0])
    assert [p for run in runs for p in run] == ordered


def test_the_plan_is_a_function_of_paths_and_sizes_only() -> None:
    files = listing(3000, shards=10, seed=5)
    shuffled = files[:]
    random.Random(9).shuffle(shuffled)

    def as_paths(fs: Sequence[tuple[PurePosixPath, int]], groups: list[list[int]]) -> set[tuple[str, ...]]:
        return {tuple(str(fs[i][0]) for i in g) for g in groups}

    assert as_paths(files, plan_layers(files, 40)) == as_paths(shuffled, plan_layers(shuffled, 40))
    assert plan_layers(files, 40) == plan_layers(list(files), 40)


def test_empty_files_and_a_budget_of_one() -> None:
    files = [(PurePosixPath(f"e{i}"), 0) for i in range(300)]
    assert check_plan(files, 1) == [sorted(range(300), key=lambda i: files[i][0].parts)]
    assert len(check_plan(files, 63)) == -(-300 // PACK_FILES)
    with pytest.raises(ValueError, match="budget"):
        plan_layers(files, 0)
    assert MAX_LAYERS_LIMIT == 127


# --- layers of several files --------------------------------------------------------------------------


async def parts(*datas: bytes, pieces: int = 3) -> AsyncIterator[AsyncIterator[bytes]]:
    for data in datas:

        async def chunks(data: bytes = data) -> AsyncIterator[bytes]:
            step = max(1, len(data) // pieces)
            for i in range(0, len(data), step):
                yield data[i : i + step]

        yield chunks()


async def packed_bytes(files: dict[str, bytes]) -> tuple[PackedLayer, bytes]:
    layer = PackedLayer([(PurePosixPath(p), len(d)) for p, d in files.items()])
    raw = b"".join([c async for c in layer.stream_files(parts(*files.values()))])
    return layer, raw


async def test_a_packed_layer_is_what_tarfile_reads_back() -> None:
    files = {
        "a b/config.json": b'{"x": 1}',
        "a b/empty.txt": b"",
        "a b/deep/w.bin": random.Random(1).randbytes(70_001),
        "top.txt": b"x" * 512,
        "é/ü.json": b"{}",
    }
    layer, raw = await packed_bytes(files)
    assert len(raw) == layer.layer_size and len(raw) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        members = tar.getmembers()
        names = [(m.name, m.type) for m in members]
        assert names == [
            ("models", tarfile.DIRTYPE),
            ("models/a b", tarfile.DIRTYPE),
            ("models/a b/config.json", tarfile.REGTYPE),
            ("models/a b/empty.txt", tarfile.REGTYPE),  # no directory entry twice
            ("models/a b/deep", tarfile.DIRTYPE),
            ("models/a b/deep/w.bin", tarfile.REGTYPE),
            ("models/top.txt", tarfile.REGTYPE),
            ("models/é", tarfile.DIRTYPE),
            ("models/é/ü.json", tarfile.REGTYPE),
        ]
        for m in members:
            assert (m.mode, m.uid, m.gid) == ((0o755 if m.isdir() else 0o644), 0, 0)
            if m.isfile():
                extracted = tar.extractfile(m)
                assert extracted is not None and extracted.read() == files[m.name.removeprefix("models/")]


async def test_one_file_packed_is_byte_for_byte_the_single_file_layer() -> None:
    data = random.Random(2).randbytes(1000)
    _, packed = await packed_bytes({"sub/w.bin": data})
    single = ModelLayer(PurePosixPath("sub/w.bin"), len(data))

    async def one() -> AsyncIterator[bytes]:
        yield data

    assert packed == b"".join([c async for c in single.stream(one())])
    assert (
        hashlib.sha256(packed).hexdigest()
        == hashlib.sha256(b"".join([c async for c in single.stream(one())])).hexdigest()
    )


async def test_a_packed_layer_refuses_a_wrong_size_or_a_missing_file() -> None:
    layer = PackedLayer([(PurePosixPath("a"), 3), (PurePosixPath("b"), 2)])
    with pytest.raises(IntegrityError, match="b: the file ended after 1 of 2"):
        _ = [c async for c in layer.stream_files(parts(b"abc", b"d"))]
    with pytest.raises(IntegrityError, match="b: no stream for it"):
        _ = [c async for c in layer.stream_files(parts(b"abc"))]
    with pytest.raises(ValueError, match="at least one file"):
        PackedLayer([])


class ZerosTar(io.RawIOBase):
    """A seekable file holding ``head``, then ``size`` zero bytes, then ``tail``: a layer whose file is
    never built (tarfile seeks over the data)."""

    def __init__(self, head: bytes, size: int, tail: bytes) -> None:
        self.head, self.size, self.tail, self.pos = head, size, tail, 0
        self.length = len(head) + size + len(tail)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.length + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.length - self.pos)
        out = bytearray(n)
        for start, data in ((0, self.head), (len(self.head) + self.size, self.tail)):
            lo, hi = max(self.pos, start), min(self.pos + n, start + len(data))
            if lo < hi:
                out[lo - self.pos : hi - self.pos] = data[lo - start : hi - start]
        buffer[:n] = out
        self.pos += n
        return n


@pytest.mark.parametrize("size", [8 * GiB - 1, 8 * GiB, 8 * GiB + 1, 100 * GiB + 3])
def test_a_file_of_8_gib_or_more_reads_back_with_tarfile(size: int) -> None:
    """Files over the ustar limit (8 GiB - 1) get a PAX size record: Python's tarfile (an independent
    reader) lists the right size and finds the next file after the data, without 8 GiB being built."""
    layer = PackedLayer([(PurePosixPath("big/w.bin"), size), (PurePosixPath("z.json"), 2)])
    head, second = layer.headers
    tail = bytes(-size % 512) + second + b"{}" + bytes(510) + bytes(1024)
    assert len(head) + size + len(tail) == layer.layer_size
    assert (b"size=" in head) == (size > 8 * GiB - 1)
    with tarfile.open(fileobj=io.BufferedReader(ZerosTar(head, size, tail)), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["models/big/w.bin"].size == size
        extracted = tar.extractfile(members["models/z.json"])
        assert extracted is not None and extracted.read() == b"{}"


# --- descriptors ----------------------------------------------------------------------------------------


def test_a_layer_of_several_files_lists_them_and_has_no_title() -> None:
    paths = (PurePosixPath("a/config.json"), PurePosixPath("a/é x.txt"))
    layer = LayerDescriptor("sha256:" + "1" * 64, 4096, paths, "sha256:" + "2" * 64)
    document = layer.to_json()
    assert "org.opencontainers.image.title" not in document["annotations"]
    assert json.loads(document["annotations"][ANNOTATION_FILES]) == ["a/config.json", "a/é x.txt"]
    assert LayerDescriptor.from_json(document) == layer
    single = LayerDescriptor("sha256:" + "3" * 64, 2048, (PurePosixPath("w.bin"),), "etag:x")
    assert single.to_json()["annotations"]["org.opencontainers.image.title"] == "w.bin"
    assert LayerDescriptor.from_json(single.to_json()) == single


def test_file_lists_are_left_out_of_a_manifest_they_would_swell() -> None:
    many = tuple(PurePosixPath(f"folder/{'n' * 100}-{i}.json") for i in range(MAX_FILE_LISTS // 100))
    layer = LayerDescriptor("sha256:" + "1" * 64, 4096, many, "sha256:" + "2" * 64)
    base = {"layers": []}
    manifest = json.loads(modelcar_manifest(base, "sha256:" + "c" * 64, 10, [layer], {}))
    annotations = manifest["layers"][0]["annotations"]
    assert ANNOTATION_FILES not in annotations and annotations["model-sync.source"] == layer.source
    assert LayerDescriptor.from_json(manifest["layers"][0]) == LayerDescriptor(layer.digest, 4096, (), layer.source)
    few = LayerDescriptor("sha256:" + "1" * 64, 4096, many[:10], "sha256:" + "2" * 64)
    assert (
        ANNOTATION_FILES
        in json.loads(modelcar_manifest(base, "sha256:" + "c" * 64, 10, [few], {}))["layers"][0]["annotations"]
    )


def test_a_group_identity_covers_paths_sizes_and_sources() -> None:
    one = [(PurePosixPath("a"), 1, "sha256:aa"), (PurePosixPath("b"), 2, "etag:bb")]
    assert group_identity(one) == group_identity(list(one))
    assert group_identity(one) != group_identity(
        [(PurePosixPath("a"), 1, "sha256:aa"), (PurePosixPath("b"), 3, "etag:bb")]
    )
    assert group_identity(one) != group_identity(
        [(PurePosixPath("a"), 1, "sha256:aa"), (PurePosixPath("c"), 2, "etag:bb")]
    )
    assert group_identity([*one, (PurePosixPath("c"), 1, None)]) is None
