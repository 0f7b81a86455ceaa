"""A rerun sends only what an earlier try did not finish: the destinations' ``lookup`` on real servers.

What a file is at its source (its listed sha256, or its ETag) is stored with what was written: S3 user metadata,
an annotation on the modelcar's layer. A second transfer of the same source reads none of the files already
there; a file whose identity changed is sent again; a file with no identity is always sent.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path, PurePosixPath

import pytest

from job.config import OciLocation
from job.destinations.oci import OciDestination
from job.destinations.s3 import S3Destination
from job.engine.transfer import TransferSettings, transfer
from job.model import ObjectInfo
from job.retry import RetrySettings
from tests.fakes import MemorySource, sha256_of
from tests.integration.test_s3_backends import s3_location
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server, fresh_bucket

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
FILES = {
    "big.bin": random.Random(1).randbytes(6 * MiB + 5),  # a multipart upload at 5 MiB parts
    "small.json": b'{"a": 1}',
    "anonymous.txt": b"no identity at its source",
}
ETAGS = {"big.bin": '"big-v1"', "small.json": '"small-v1"'}
SETTINGS = TransferSettings(parallel_files=2, retry=RetrySettings(initial_wait=0.01, max_wait=0.02))


def source(etags: dict[str, str] | None = None) -> MemorySource:
    return MemorySource(FILES, chunk_size=256 * 1024, etags=ETAGS if etags is None else etags)


async def test_s3_sends_only_what_is_missing_or_changed(seaweedfs_s3: S3Server) -> None:
    location = s3_location(seaweedfs_s3, fresh_bucket(seaweedfs_s3, "rerun"), "models/m")
    await transfer(source(), S3Destination(location, part_size=5 * MiB), SETTINGS)

    again = source()
    await transfer(again, S3Destination(location, part_size=5 * MiB), SETTINGS)
    assert [path for path, _ in again.opened] == ["anonymous.txt"]  # the two with an identity were skipped

    changed = source({**ETAGS, "big.bin": '"big-v2"'})
    await transfer(changed, S3Destination(location, part_size=5 * MiB), SETTINGS)
    assert sorted(path for path, _ in changed.opened) == ["anonymous.txt", "big.bin"]


async def test_s3_lookup_checks_size_and_records_a_known_sha256(seaweedfs_s3: S3Server) -> None:
    location = s3_location(seaweedfs_s3, fresh_bucket(seaweedfs_s3, "rerun"), "m")
    digest = sha256_of(FILES["small.json"])
    await transfer(MemorySource({"small.json": FILES["small.json"]}, etags={"small.json": '"e"'}),
                   S3Destination(location), SETTINGS)  # fmt: skip
    destination = S3Destination(location)
    listed = ObjectInfo(PurePosixPath("small.json"), len(FILES["small.json"]), etag='"e"')
    found = await destination.lookup(listed)
    assert found is not None and found.sha256 == digest  # one part: its sha256 was known before the write
    assert await destination.lookup(ObjectInfo(listed.path, listed.size + 1, etag='"e"')) is None
    assert await destination.lookup(ObjectInfo(PurePosixPath("other.json"), 8, etag='"e"')) is None
    await destination.close()


def oci_location(registry: Registry, reference: str) -> OciLocation:
    return OciLocation(reference=reference, registry=registry.host, username=None, password=None, tls_verify=False,
                       base_image=registry.base)  # fmt: skip


async def test_oci_reuses_the_layers_of_the_tags_manifest(registry_plain: Registry, tmp_path: Path) -> None:
    location = oci_location(registry_plain, f"{registry_plain.host}/rerun/m{uuid.uuid4().hex[:6]}:1")
    first = await transfer(source(), OciDestination(location, storage_path=tmp_path), SETTINGS)

    again = source()
    second = await transfer(again, OciDestination(location, storage_path=tmp_path), SETTINGS)
    assert [path for path, _ in again.opened] == ["anonymous.txt"]
    assert second.committed.digest == first.committed.digest  # the same image, pushed again

    changed = source({**ETAGS, "small.json": '"small-v2"'})
    third = await transfer(changed, OciDestination(location, storage_path=tmp_path), SETTINGS)
    assert sorted(path for path, _ in changed.opened) == ["anonymous.txt", "small.json"]
    assert third.committed.digest != first.committed.digest  # the layer's annotation names the new version
