"""The layer budget against a real registry (CNCF distribution), checked with skopeo and Python's tarfile.

A model with more files than the budget allows is pushed with a small ``max_layers``: the image holds
the whole tree, in no more layers than the budget; the OCI source reads it back and copies it to another
registry and to S3; a rerun sends nothing, and a changed file re-sends only its layer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from pydantic import SecretStr

from job.config import S3Location
from job.destinations.oci import OciDestination
from job.destinations.s3 import S3Destination
from job.engine.transfer import TransferResult, TransferSettings, transfer
from job.errors import ConfigError
from job.oci.layout import BIG_FILE
from job.oci.modelcar import ANNOTATION_FILES
from job.sources.oci import OciSource
from job.sources.pvc import PvcSource
from tests.fakes import MemoryDestination
from tests.servers.registry import Registry, skopeo_inspect, skopeo_pull, unpack_rootfs
from tests.servers.s3 import S3Server, fresh_bucket

pytestmark = pytest.mark.integration

TITLE = "org.opencontainers.image.title"
RNG = random.Random(13)
# 10 "shards" at the big-file threshold, and 30 small files in nested folders, one empty, one with a space.
MANY: dict[str, bytes] = {f"model-{i:02d}-of-10.bin": RNG.randbytes(BIG_FILE + i) for i in range(10)}
MANY |= {f"folder {i % 3}/sub{i % 2}/file-{i}.json": RNG.randbytes(RNG.randrange(1, 5000)) for i in range(29)}
MANY["empty.txt"] = b""


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


async def push(reg: Registry, reference: str, model: Path, tmp: Path, max_layers: int) -> TransferResult:
    destination = OciDestination(reg.location(reference), storage_path=tmp / "storage", max_layers=max_layers)
    return await transfer(PvcSource(model), destination, TransferSettings(parallel_files=3))


def pulled_models(reg: Registry, reference: str, folder: Path) -> dict[str, bytes]:
    """The /models tree of the image, pulled by skopeo and unpacked layer by layer with tarfile."""
    rootfs = unpack_rootfs(skopeo_pull(reg, reference, folder))
    for path, entry in rootfs.items():
        if path.startswith("models"):
            assert (entry.mode, entry.uid, entry.gid) == ((0o755 if entry.kind == "dir" else 0o644), 0, 0), path
    return {
        p.removeprefix("models/"): e.data for p, e in rootfs.items() if p.startswith("models/") and e.kind == "file"
    }


def model_layers(reg: Registry, reference: str) -> list[dict[str, Any]]:
    manifest = skopeo_inspect(reg, reference, raw=True)
    layers: list[dict[str, Any]] = manifest["layers"][1:]  # after busybox's one layer
    return layers


async def test_more_files_than_the_budget_make_an_image_within_it(
    registry_plain: Registry, seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    reg = registry_plain
    model = write_tree(tmp_path / "model", MANY)
    reference = f"{reg.host}/models/budget:v1"
    result = await push(reg, reference, model, tmp_path, max_layers=6)

    layers = model_layers(reg, reference)
    assert len(layers) == 5  # 6 with the base: 10 shards share 4 layers, the 30 small files one
    assert pulled_models(reg, reference, tmp_path / "pulled") == MANY
    # Each layer names its files: a title for one, the JSON list for several; together, the whole model.
    named: list[str] = []
    for layer in layers:
        annotations = layer["annotations"]
        assert (TITLE in annotations) != (ANNOTATION_FILES in annotations)
        named += [annotations[TITLE]] if TITLE in annotations else json.loads(annotations[ANNOTATION_FILES])
        assert annotations["model-sync.source"].startswith(("etag:", "sha256:"))
    assert sorted(named) == sorted(MANY)
    small = [json.loads(a[ANNOTATION_FILES]) for a in (x["annotations"] for x in layers) if ANNOTATION_FILES in a]
    assert sorted(p for p in MANY if len(MANY[p]) < BIG_FILE) in [sorted(s) for s in small]
    digests = {str(u.obj.path): u.detail.digest for u in result.uploaded}  # type: ignore[attr-defined]
    assert len(set(digests.values())) == 5

    # The OCI source reads the packed layers back: to memory, to another registry (no budget pressure:
    # a layer per file again) and to S3.
    memory = MemoryDestination()
    await transfer(OciSource(reg.location(reference)), memory, TransferSettings(parallel_files=2))
    assert memory.stored == MANY
    copy = f"{reg.host}/models/budget-copy:v1"
    await transfer(
        OciSource(reg.location(reference)),
        OciDestination(reg.location(copy), storage_path=tmp_path / "s"),
        TransferSettings(parallel_files=2),
    )
    assert len(model_layers(reg, copy)) == len(MANY)
    assert pulled_models(reg, copy, tmp_path / "pulled-copy") == MANY
    s3 = seaweedfs_s3
    bucket = fresh_bucket(s3)
    location = S3Location(
        bucket=bucket,
        key="m/",
        region=None,
        endpoint=s3.endpoint_url,
        access_key_id=SecretStr(s3.access_key),
        secret_access_key=SecretStr(s3.secret_key),
    )
    await transfer(OciSource(reg.location(reference)), S3Destination(location), TransferSettings(parallel_files=2))
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="m/").get("Contents", [])]
    stored = {k.removeprefix("m/"): client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    assert stored == MANY


async def test_a_rerun_sends_nothing_and_a_changed_file_resends_its_layer_only(
    registry_plain: Registry, tmp_path: Path
) -> None:
    reg = registry_plain
    model = write_tree(tmp_path / "model", MANY)
    reference = f"{reg.host}/models/budget-rerun:v1"
    first = await push(reg, reference, model, tmp_path, max_layers=6)
    again = await push(reg, reference, model, tmp_path, max_layers=6)
    assert all(u.skipped for u in again.uploaded)
    assert again.committed.digest == first.committed.digest

    changed = "folder 1/sub1/file-1.json"
    (model / changed).write_bytes(b"changed")
    third = await push(reg, reference, model, tmp_path, max_layers=6)
    sent = sorted(str(u.obj.path) for u in third.uploaded if not u.skipped)
    assert sent == sorted(p for p in MANY if len(MANY[p]) < BIG_FILE)  # the small files' layer, nothing else
    assert pulled_models(reg, reference, tmp_path / "pulled") == MANY | {changed: b"changed"}


async def test_within_the_budget_every_file_keeps_its_own_layer(registry_plain: Registry, tmp_path: Path) -> None:
    reg = registry_plain
    model = write_tree(tmp_path / "model", MANY)
    reference = f"{reg.host}/models/budget-roomy:v1"
    result = await push(reg, reference, model, tmp_path, max_layers=1 + len(MANY))
    layers = model_layers(reg, reference)
    assert [layer["annotations"][TITLE] for layer in layers] == [str(u.obj.path) for u in result.uploaded]
    assert all(PurePosixPath(layer["annotations"][TITLE]).as_posix() in MANY for layer in layers)


async def test_a_base_image_that_fills_the_budget_fails_before_model_bytes_move(
    registry_plain: Registry, tmp_path: Path
) -> None:
    reg = registry_plain
    model = write_tree(tmp_path / "model", {"a.json": b"{}"})
    base = f"{reg.host}/models/two-layers:v1"
    await push(reg, base, model, tmp_path, max_layers=2)  # busybox + a.json: two layers
    location = reg.location(f"{reg.host}/models/no-room:v1", base_image=base)
    destination = OciDestination(location, storage_path=tmp_path / "s", max_layers=2)
    with pytest.raises(ConfigError, match=r"MODEL_SYNC_DESTINATION_OCI_MAX_LAYERS=2: the base image .* has 2 layers"):
        await transfer(PvcSource(model), destination, TransferSettings())
    assert not [line for line in reg.log_text().splitlines() if '"PATCH /v2/models/no-room/' in line]
