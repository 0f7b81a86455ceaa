"""The uri source against real local http servers (tests/servers/http.py), through the real engine.

Files, archives and Hub models are copied with ``job.engine.transfer.transfer`` into a MemoryDestination (and, end to
end, into SeaweedFS and into a modelcar image on a distribution registry), and compared byte for byte. The
servers' request logs show what went over the wire: Range requests on resume, which headers reached which host.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from job.config import S3Location, UriLocation
from job.destinations.oci import OciDestination
from job.destinations.s3 import S3Destination
from job.engine.transfer import TransferResult, TransferSettings, transfer
from job.errors import SourceAuthError, SourceError, SourceNotFound
from job.http.settings import HttpSettings
from job.model import ObjectInfo, Uploaded
from job.retry import RetrySettings
from job.sources.filtered import FilteredSource
from job.sources.uri import UriSource
from tests.fakes import MemoryDestination
from tests.servers.http import API_KEY, API_TOKEN, EVIL_TAR, EVIL_ZIP, HF_TOKEN, MODEL_FILES, SINGLE, HttpTestServer
from tests.servers.registry import Registry, skopeo_pull, unpack_rootfs
from tests.servers.s3 import S3Server, fresh_bucket

pytestmark = pytest.mark.integration

FAST = HttpSettings(initial_wait=0.01, max_wait=0.05)
HUB_FILES = {**MODEL_FILES, "sub/dir/tokenizer.json": b'{"tok": 1}'}


def source(uri: str, tmp_path: Path, **location: Any) -> UriSource:
    return UriSource(UriLocation(uri, **location), storage_path=tmp_path / "storage", settings=FAST)


async def copy(
    uri: str, tmp_path: Path, *, settings: TransferSettings | None = None, **location: Any
) -> tuple[dict[str, bytes], TransferResult]:
    memory = MemoryDestination()
    settings = settings or TransferSettings(parallel_files=3, retry=RetrySettings(initial_wait=0.01, max_wait=0.05))
    result = await transfer(source(uri, tmp_path, **location), memory, settings)
    return memory.stored, result


def tag() -> str:
    """A unique query value: tells this test's requests apart in the session server's log."""
    return uuid.uuid4().hex[:12]


# --- one file -------------------------------------------------------------------------------------------------


async def test_single_file_keeps_its_name_and_bytes(http_server: HttpTestServer, tmp_path: Path) -> None:
    stored, result = await copy(http_server.url("/files/single/model.safetensors?X-Amz-Signature=abc"), tmp_path)
    assert stored == {"model.safetensors": SINGLE}
    obj = result.uploaded[0].obj
    assert obj.size == len(SINGLE) and obj.etag and obj.etag.startswith('"')


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/files/single/my%20model%20v2.bin", "my model v2.bin"),
        ("/files/single/my%20model%20v2.bin?disposition=renamed.bin", "renamed.bin"),
    ],
)
async def test_names_from_the_url_or_content_disposition(
    http_server: HttpTestServer, tmp_path: Path, path: str, name: str
) -> None:
    stored, _ = await copy(http_server.url(path), tmp_path)
    assert stored == {name: SINGLE[:1000]}


async def test_unknown_content_length(http_server: HttpTestServer, tmp_path: Path) -> None:
    stored, result = await copy(http_server.url("/files/single/model.safetensors?length=0"), tmp_path)
    assert stored == {"model.safetensors": SINGLE}
    assert result.uploaded[0].obj.size is None


async def test_a_dropped_connection_resumes_with_range(
    http_server: HttpTestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tag()
    stored, _ = await copy(http_server.url(f"/files/single/model.safetensors?drop=300000&once={key}"), tmp_path)
    assert stored == {"model.safetensors": SINGLE}
    seen = [r for r in http_server.seen("/files/single/") if key in r.query]
    assert [r.headers.get("range") for r in seen] == [None, "bytes=300000-"]
    st = (http_server.root / "single/model.safetensors").stat()
    assert seen[1].headers["if-match"] == f'"{st.st_size:x}-{st.st_mtime_ns:x}"'  # the ETag the first answer had
    assert "the connection broke at byte 300000" in caplog.text and key not in caplog.text


async def test_a_dropped_connection_without_range_support_sends_the_file_again(
    http_server: HttpTestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No ranges, so no resume: the engine's file-level retry reads the file again from its start."""
    key = tag()
    url = http_server.url(f"/files/single/model.safetensors?ranges=0&drop=300000&once={key}")
    stored, _ = await copy(url, tmp_path)
    assert stored == {"model.safetensors": SINGLE}
    seen = [r for r in http_server.seen("/files/single/") if key in r.query]
    assert [r.headers.get("range") for r in seen] == [None, None]
    assert "does not support range requests" in caplog.text and "attempt 2 of 3" in caplog.text
    assert key not in caplog.text


async def test_a_dropped_connection_without_range_support_is_a_clear_error(
    http_server: HttpTestServer, tmp_path: Path
) -> None:
    key = tag()
    url = http_server.url(f"/files/single/model.safetensors?ranges=0&drop=300000&once={key}")
    once = TransferSettings(retry=RetrySettings(file_attempts=1))
    with pytest.raises(SourceError, match=r"after 300000 bytes .*does not support range requests") as info:
        await copy(url, tmp_path, settings=once)
    assert key not in str(info.value)


async def test_a_missing_file_is_not_found_and_named_without_its_query(
    http_server: HttpTestServer, tmp_path: Path
) -> None:
    with pytest.raises(SourceNotFound) as info:
        await copy(http_server.url("/files/missing.bin?token=s3cr3t"), tmp_path)
    assert f"downloading {http_server.origin}/files/missing.bin: HTTP 404" in str(info.value)
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    "headers", [{"X-Api-Key": SecretStr(API_KEY)}, {"Authorization": SecretStr(f"Bearer {API_TOKEN}")}]
)
async def test_header_protected_server(
    http_server: HttpTestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, headers: dict[str, SecretStr]
) -> None:
    caplog.set_level(logging.DEBUG)
    url = http_server.url(f"/private/single/model.safetensors?t={tag()}")
    stored, _ = await copy(url, tmp_path, headers=headers)
    assert stored == {"model.safetensors": SINGLE}
    with pytest.raises(SourceAuthError, match="HTTP 401") as info:
        await copy(url, tmp_path)
    # A redirect to another host (the "cdn" server) does not carry the secret header along.
    key = tag()
    stored, _ = await copy(
        http_server.url(f"/redirect/files/single/model.safetensors?to=cdn&k={key}"), tmp_path, headers=headers
    )
    assert stored == {"model.safetensors": SINGLE}
    hops = [r for r in http_server.requests if key in r.query]
    name = next(iter(headers)).lower()
    assert any(r.server == "origin" and name in r.headers for r in hops)
    assert not any(r.server == "cdn" and name in r.headers for r in hops)
    for secret in (API_KEY, API_TOKEN):
        assert secret not in caplog.text and secret not in str(info.value)


# --- archives -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "mode", "gets"),
    [
        ("/files/archives/model.tar", "ranged", None),
        ("/files/archives/model.tar?ranges=0", "streamed", 1),
        ("/files/archives/model.tar.gz", "streamed", 1),
        ("/files/archives/model-gnu.tgz", "streamed", 1),
        ("/files/archives/model.zip", "ranged", None),
        ("/files/archives/model-stored.zip", "ranged", None),
        ("/files/archives/model.zip?ranges=0", "spooled", 1),
        ("/files/archives/blob?type=application/gzip", "streamed", 1),
    ],
)
async def test_archives_unpack_byte_for_byte(
    http_server: HttpTestServer, tmp_path: Path, path: str, mode: str, gets: int | None
) -> None:
    key = tag()
    stored, _ = await copy(http_server.url(f"{path}{'&' if '?' in path else '?'}k={key}"), tmp_path)
    assert stored == MODEL_FILES  # nested folders and the 0-byte file included
    seen = [r for r in http_server.requests if key in r.query]
    if mode == "ranged":
        assert all(r.headers.get("range") for r in seen)  # never the whole archive
    else:
        assert len(seen) == gets and not any("range" in r.headers for r in seen[1:])
    storage = tmp_path / "storage"
    assert not storage.exists() or not list(storage.iterdir())  # a spooled zip is deleted at close


async def test_a_dropped_archive_pass_resumes_with_range(http_server: HttpTestServer, tmp_path: Path) -> None:
    key = tag()
    stored, _ = await copy(http_server.url(f"/files/archives/model.tar.gz?drop=200000&once={key}"), tmp_path)
    assert stored == MODEL_FILES
    ranges = [r.headers.get("range") for r in http_server.requests if key in r.query]
    assert ranges == [None, "bytes=200000-"]  # the one pass, and its resume


@pytest.mark.parametrize(
    "path", ["/files/archives/links.tar", "/files/archives/links.tar.gz", "/files/archives/links.zip"]
)
async def test_links_inside_an_archive_become_copies_of_their_targets(
    http_server: HttpTestServer, tmp_path: Path, path: str
) -> None:
    stored, _ = await copy(http_server.url(path), tmp_path)
    assert stored["weights/current.safetensors"] == MODEL_FILES["weights/model.safetensors"]
    assert {k: v for k, v in stored.items() if k in MODEL_FILES} == MODEL_FILES
    if not path.endswith(".zip"):
        assert stored["config-copy.json"] == MODEL_FILES["config.json"]  # a hard link
        assert stored["tok/vocab.txt"] == MODEL_FILES["tokenizer/vocab/vocab.txt"]  # a link to a folder


@pytest.mark.parametrize("name", list(EVIL_TAR))
async def test_malicious_tars_are_refused_naming_the_entry(
    http_server: HttpTestServer, tmp_path: Path, name: str
) -> None:
    memory = MemoryDestination()
    with pytest.raises(SourceError, match=f"refusing entry {EVIL_TAR[name].name!r}"):
        await transfer(source(http_server.url(f"/files/evil/{name}.tar"), tmp_path), memory, TransferSettings())
    assert memory.stored == {}


@pytest.mark.parametrize("name", list(EVIL_ZIP))
async def test_malicious_zips_are_refused_naming_the_entry(
    http_server: HttpTestServer, tmp_path: Path, name: str
) -> None:
    memory = MemoryDestination()
    with pytest.raises(SourceError, match=f"refusing entry {EVIL_ZIP[name][0]!r}"):
        await transfer(source(http_server.url(f"/files/evil/{name}.zip"), tmp_path), memory, TransferSettings())
    assert memory.stored == {}


# --- one pass: a tar.gz is read once, its files put as they are listed --------------------------------------------


def tar_gz(entries: list[tuple[str, bytes]]) -> bytes:
    """A tar.gz of ``entries`` in this order, names repeated as given (``tar -r`` appends so)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class FailsOnce(MemoryDestination):
    """Breaks the first put of ``path`` after a few bytes, with an error worth retrying."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    async def put(self, obj: ObjectInfo, data: AsyncIterator[bytes]) -> Uploaded:
        if str(obj.path) == self.path and self.path not in self.started:
            self.started.append(self.path)
            await anext(data)
            raise ConnectionResetError("the fake destination dropped the connection")
        return await super().put(obj, data)


async def test_a_tar_gz_is_downloaded_once_its_files_moving_as_they_are_listed(
    http_server: HttpTestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    key = tag()
    memory = MemoryDestination()
    src = source(http_server.url(f"/files/archives/model.tar.gz?k={key}"), tmp_path)
    result = await transfer(src, memory, TransferSettings(parallel_files=3))
    assert memory.stored == MODEL_FILES
    assert len([r for r in http_server.requests if key in r.query]) == 1
    assert "again from its start" not in caplog.text
    assert [str(u.obj.path) for u in result.uploaded] == list(MODEL_FILES)  # the archive's order
    assert "as the source lists them" in caplog.text


async def test_a_later_entry_of_the_same_name_replaces_the_earlier(http_server: HttpTestServer, tmp_path: Path) -> None:
    key = tag()
    path = http_server.write(
        f"one-pass/{key}.tar.gz", tar_gz([("a.txt", b"old"), ("b.txt", b"b"), ("a.txt", b"newer"), ("c/d", b"d")])
    )
    stored, result = await copy(http_server.url(f"{path}?k={key}"), tmp_path)
    assert stored == {"a.txt": b"newer", "b.txt": b"b", "c/d": b"d"}
    assert [(str(u.obj.path), u.size) for u in result.uploaded] == [("a.txt", 5), ("b.txt", 1), ("c/d", 1)]
    assert len([r for r in http_server.requests if key in r.query]) == 1


async def test_a_file_turned_into_a_directory_after_it_was_read_is_refused(
    http_server: HttpTestServer, tmp_path: Path
) -> None:
    path = http_server.write(f"one-pass/{tag()}.tar.gz", tar_gz([("a", b"file"), ("a/b", b"below")]))
    memory = MemoryDestination()
    with pytest.raises(SourceError, match=r"a later entry replaces the file a by a directory .* repack it"):
        await transfer(source(http_server.url(path), tmp_path), memory, TransferSettings())
    assert memory.calls[-2:] == ["abort", "close"]


async def test_a_retried_file_reads_the_archive_again_and_the_rest_still_once(
    http_server: HttpTestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tag()
    memory = FailsOnce("weights/model.safetensors")
    settings = TransferSettings(parallel_files=2, retry=RetrySettings(initial_wait=0.01, max_wait=0.05))
    await transfer(source(http_server.url(f"/files/archives/model.tar.gz?k={key}"), tmp_path), memory, settings)
    assert memory.stored == MODEL_FILES
    assert len([r for r in http_server.requests if key in r.query]) == 2  # the pass, and one more for the retry
    assert "reading the archive again from its start to reach weights/model.safetensors" in caplog.text


async def test_files_filtered_out_are_read_past(http_server: HttpTestServer, tmp_path: Path) -> None:
    key = tag()
    memory = MemoryDestination()
    src = FilteredSource(source(http_server.url(f"/files/archives/model.tar.gz?k={key}"), tmp_path), (), ("weights/",))
    await transfer(src, memory, TransferSettings(parallel_files=2))
    assert memory.stored == {k: v for k, v in MODEL_FILES.items() if not k.startswith("weights/")}
    assert len([r for r in http_server.requests if key in r.query]) == 1


async def test_files_beyond_the_layer_budget_are_planned_once_listed(
    http_server: HttpTestServer, registry_plain: Registry, tmp_path: Path
) -> None:
    key = tag()
    reference = f"{registry_plain.host}/models/one-pass:{key}"
    destination = OciDestination(registry_plain.location(reference), storage_path=tmp_path / "storage", max_layers=4)
    src = source(http_server.url(f"/files/archives/model.tar.gz?k={key}"), tmp_path)
    result = await transfer(src, destination, TransferSettings(parallel_files=2))
    layers = {u.detail.digest for u in result.uploaded}  # type: ignore[attr-defined]
    assert len(result.uploaded) == len(MODEL_FILES) and len(layers) <= 3  # 4 less the base image's layer
    rootfs = unpack_rootfs(skopeo_pull(registry_plain, reference, tmp_path / "pulled"))
    files = {
        p.removeprefix("models/"): e.data for p, e in rootfs.items() if p.startswith("models/") and e.kind == "file"
    }
    assert files == MODEL_FILES
    # The pass, then one more for the files listed beyond half the budget (each layer's files in archive order).
    assert len([r for r in http_server.requests if key in r.query]) == 2


class AlreadyWritten(MemoryDestination):
    """Finds ``paths`` already written by an earlier try: they are neither read nor put."""

    def __init__(self, paths: set[str]) -> None:
        super().__init__()
        self.paths = paths

    async def lookup(self, obj: ObjectInfo) -> Uploaded | None:
        if str(obj.path) not in self.paths:
            return None
        return Uploaded(obj=obj, size=obj.size or 0, skipped=True)


async def test_a_rerun_reads_past_what_is_already_written(http_server: HttpTestServer, tmp_path: Path) -> None:
    key = tag()
    memory = AlreadyWritten({"config.json", "weights/model.safetensors"})
    src = source(http_server.url(f"/files/archives/model.tar.gz?k={key}"), tmp_path)
    result = await transfer(src, memory, TransferSettings(parallel_files=2))
    assert memory.stored == {k: v for k, v in MODEL_FILES.items() if k not in memory.paths}
    assert [str(u.obj.path) for u in result.uploaded if u.skipped] == ["config.json", "weights/model.safetensors"]
    assert len([r for r in http_server.requests if key in r.query]) == 1


# --- the Hub --------------------------------------------------------------------------------------------------


async def test_hub_model_pages_lfs_redirects_and_the_token_stays_on_the_hub(
    http_server: HttpTestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = len(http_server.requests)
    stored, result = await copy(
        "hf://acme/tiny", tmp_path, hf_endpoint=http_server.origin, hf_token=SecretStr(HF_TOKEN)
    )
    assert stored == HUB_FILES
    seen = http_server.requests[before:]
    assert len([r for r in seen if "/tree/" in r.path]) >= 4  # 11 entries, 2 a page, followed by Link
    objects = {str(u.obj.path): u.obj for u in result.uploaded}
    data = HUB_FILES["weights/model.safetensors"]
    assert objects["weights/model.safetensors"].digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert objects["config.json"].digest is None and objects["config.json"].etag
    lfs = [r for r in seen if r.path.startswith("/lfs/")]
    assert lfs and all(r.server == "cdn" and "authorization" not in r.headers for r in lfs)
    assert all(r.headers.get("authorization") == f"Bearer {HF_TOKEN}" for r in seen if r.server == "origin")
    resolves = [r.path for r in seen if "/resolve/" in r.path]
    assert resolves and not any("/resolve/main/" in p for p in resolves)  # pinned to the commit
    assert HF_TOKEN not in caplog.text


async def test_hub_revision(http_server: HttpTestServer, tmp_path: Path) -> None:
    stored, _ = await copy("hf://acme/tiny:v1", tmp_path, hf_endpoint=http_server.origin)
    assert stored == {"config.json": b'{"v": 1}\n', "model.bin": SINGLE}


async def test_hub_private_repository_needs_the_token(http_server: HttpTestServer, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match=r"HTTP 401.*set HF_TOKEN") as info:
        await copy("hf://acme/private", tmp_path, hf_endpoint=http_server.origin)
    assert "hf://acme/private" in str(info.value)
    stored, _ = await copy("hf://acme/private", tmp_path, hf_endpoint=http_server.origin, hf_token=SecretStr(HF_TOKEN))
    assert stored == {"model.safetensors": SINGLE[:5000]}
    with pytest.raises(SourceError, match=r"HTTP 404.*Invalid rev id"):
        await copy("hf://acme/tiny:nope", tmp_path, hf_endpoint=http_server.origin)


# --- end to end into real destinations ------------------------------------------------------------------------


async def test_tar_gz_into_s3(http_server: HttpTestServer, seaweedfs_s3: S3Server, tmp_path: Path) -> None:
    bucket = fresh_bucket(seaweedfs_s3, "uri")
    location = S3Location(
        bucket=bucket,
        key="models/tiny/",
        region=None,
        endpoint=seaweedfs_s3.endpoint_url,
        access_key_id=SecretStr(seaweedfs_s3.access_key),
        secret_access_key=SecretStr(seaweedfs_s3.secret_key),
    )
    src = source(http_server.url("/files/archives/model.tar.gz"), tmp_path)
    result = await transfer(src, S3Destination(location), TransferSettings(parallel_files=2))
    assert result.committed.uri == f"s3://{bucket}/models/tiny/"
    client = seaweedfs_s3.client()
    stored = {
        item["Key"].removeprefix("models/tiny/"): client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for item in client.list_objects_v2(Bucket=bucket)["Contents"]
    }
    assert stored == MODEL_FILES


@pytest.mark.parametrize(
    ("uri", "expected"), [("hf://acme/tiny", HUB_FILES), ("/files/archives/model.tar.gz", MODEL_FILES)]
)
async def test_into_a_modelcar(
    http_server: HttpTestServer, registry_plain: Registry, tmp_path: Path, uri: str, expected: dict[str, bytes]
) -> None:
    reference = f"{registry_plain.host}/models/from-uri:{'hub' if uri.startswith('hf:') else 'tgz'}"
    destination = OciDestination(registry_plain.location(reference), storage_path=tmp_path / "storage")
    src = source(uri if uri.startswith("hf:") else http_server.url(uri), tmp_path, hf_endpoint=http_server.origin)
    result = await transfer(src, destination, TransferSettings(parallel_files=2))
    assert result.committed.uri == f"oci://{reference}"
    rootfs = unpack_rootfs(skopeo_pull(registry_plain, reference, tmp_path / "pulled"))  # an independent client
    files = {
        p.removeprefix("models/"): e.data for p, e in rootfs.items() if p.startswith("models/") and e.kind == "file"
    }
    assert files == expected
