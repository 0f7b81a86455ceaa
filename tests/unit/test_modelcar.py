"""Modelcar layers and documents (job.oci.modelcar); reading layers back is tests/unit/test_formats.py's."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import PurePosixPath

import pytest

from job.errors import IntegrityError
from job.formats.tar import RangedInput, scan_tar
from job.oci.modelcar import (
    LAYER_MTIME,
    LayerDescriptor,
    ModelLayer,
    base_annotations,
    modelcar_config,
    modelcar_index,
    modelcar_manifest,
)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def layer_bytes(path: str, data: bytes, pieces: int = 3) -> bytes:
    layer = ModelLayer(PurePosixPath(path), len(data))
    step = max(1, len(data) // pieces)
    parts = [data[i : i + step] for i in range(0, len(data), step)]
    return b"".join([c async for c in layer.stream(chunks(*parts))])


# --- writing layers ---------------------------------------------------------------------------------


async def test_layer_holds_parent_directories_then_the_file_with_fixed_metadata() -> None:
    data = b"weights" * 100
    raw = await layer_bytes("sub/deep/w.bin", data)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        members = tar.getmembers()
        assert [(m.name, m.type, m.mode) for m in members] == [
            ("models", tarfile.DIRTYPE, 0o755),
            ("models/sub", tarfile.DIRTYPE, 0o755),
            ("models/sub/deep", tarfile.DIRTYPE, 0o755),
            ("models/sub/deep/w.bin", tarfile.REGTYPE, 0o644),
        ]
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", LAYER_MTIME)
        extracted = tar.extractfile(members[-1])
        assert extracted is not None and extracted.read() == data
    # Raw header fields: ustar magic, names with the trailing slash for directories.
    assert raw[257:263] == b"ustar\x00" and raw[:8] == b"models/\x00"


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 4096 + 7])
async def test_size_formula_padding_and_end_of_archive(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    layer = ModelLayer(PurePosixPath("f.bin"), size)
    raw = await layer_bytes("f.bin", data)
    assert len(raw) == layer.layer_size == len(layer.header) + size + (-size % 512) + 1024
    assert len(layer.header) == 2 * 512 and layer.padding == -size % 512
    assert raw.endswith(bytes(1024 + layer.padding)) and len(raw) % 512 == 0


async def test_same_file_same_digest_and_other_paths_differ() -> None:
    one = await layer_bytes("a/config.json", b"{}", pieces=1)
    two = await layer_bytes("a/config.json", b"{}", pieces=2)
    assert hashlib.sha256(one).digest() == hashlib.sha256(two).digest()
    assert one != await layer_bytes("b/config.json", b"{}")


async def test_long_and_non_ascii_names_and_huge_sizes_get_pax_headers() -> None:
    long = "d" * 120 + "/" + "é" * 10 + ".bin"
    layer = ModelLayer(PurePosixPath(long), 9 * 1024**3)
    assert b"path=" in layer.header and b"size=9663676416" in layer.header

    async def fetch(start: int, length: int) -> bytes:  # the header, then zeros (the file is not built)
        return (layer.header + bytes(length))[start : start + length] if start < len(layer.header) else bytes(length)

    members = [m async for m in scan_tar(RangedInput(fetch, layer.layer_size, "test"), "test")]
    assert [m.name.rstrip("/") for m in members] == ["models", f"models/{'d' * 120}", f"models/{long}"]
    assert members[-1].size == 9 * 1024**3 and members[-1].offset == len(layer.header)


async def test_stream_refuses_a_short_or_long_file() -> None:
    layer = ModelLayer(PurePosixPath("f"), 4)
    with pytest.raises(IntegrityError, match="ended after 3 of 4"):
        _ = [c async for c in layer.stream(chunks(b"abc"))]
    with pytest.raises(IntegrityError, match="more than the 4 bytes"):
        _ = [c async for c in ModelLayer(PurePosixPath("f"), 4).stream(chunks(b"abc", b"de"))]


# --- documents ----------------------------------------------------------------------------------------

BASE_CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Cmd": ["sh"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:base"]},
    "history": [{"created_by": "busybox"}],
}
LAYERS = [
    LayerDescriptor("sha256:" + "1" * 64, 2048, (PurePosixPath("config.json"),)),
    LayerDescriptor("sha256:" + "2" * 64, 4096, (PurePosixPath("sub/w.bin"),)),
]


def test_config_appends_diff_ids_and_history_in_order_without_touching_the_base() -> None:
    config = json.loads(modelcar_config(BASE_CONFIG, LAYERS))
    assert config["rootfs"]["diff_ids"] == ["sha256:base", LAYERS[0].digest, LAYERS[1].digest]
    assert [h["created_by"] for h in config["history"]] == [
        "busybox",
        "model-sync: models/config.json",
        "model-sync: models/sub/w.bin",
    ]
    assert BASE_CONFIG["rootfs"] == {"type": "layers", "diff_ids": ["sha256:base"]}
    assert modelcar_config(BASE_CONFIG, LAYERS) == modelcar_config(BASE_CONFIG, LAYERS)


def test_docker_schema2_base_becomes_an_oci_manifest_with_the_same_blobs() -> None:
    docker = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:c", "size": 1},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:l", "size": 9}],
    }
    annotations = base_annotations("docker.io/library/busybox:latest", "sha256:b")
    manifest = json.loads(modelcar_manifest(docker, "sha256:new", 123, LAYERS, annotations))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"] == {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": "sha256:new",
        "size": 123,
    }
    assert manifest["layers"][0] == {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": "sha256:l",
        "size": 9,
    }
    assert manifest["layers"][1:] == [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": d.digest,
            "size": d.size,
            "annotations": {"org.opencontainers.image.title": d.title},
        }
        for d in LAYERS
    ]
    assert manifest["annotations"]["org.opencontainers.image.base.digest"] == "sha256:b"


def test_index_points_each_platform_at_its_new_manifest() -> None:
    entry_amd = {
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "digest": "sha256:a",
        "size": 1,
        "platform": {"architecture": "amd64", "os": "linux"},
    }
    entry_arm = {
        **entry_amd,
        "digest": "sha256:b",
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
    }
    base = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [entry_amd, entry_arm],
    }
    index = json.loads(modelcar_index(base, [(entry_amd, "sha256:A", 10), (entry_arm, "sha256:B", 11)], {}))
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [(m["digest"], m["size"], m["platform"]["architecture"], m["mediaType"]) for m in index["manifests"]] == [
        ("sha256:A", 10, "amd64", "application/vnd.oci.image.manifest.v1+json"),
        ("sha256:B", 11, "arm64", "application/vnd.oci.image.manifest.v1+json"),
    ]
