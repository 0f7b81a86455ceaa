"""The OCI backends against real registries (CNCF distribution), checked with an independent client (skopeo).

Every image pushed here is pulled back with ``skopeo copy`` into an OCI layout and unpacked layer by layer
(:func:`tests.servers.registry.unpack_rootfs`): the rootfs must hold the base image's files and, under
``/models``, exactly the model tree, byte for byte, with modes 0644/0755 and uid/gid 0. Pushes run through
the real engine (``job.engine.transfer.transfer``) from a directory (the pvc source).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import logging
import random
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from pydantic import SecretStr

from job.backends import make_destination, make_source
from job.config import OciLocation, S3Location, build_job_config
from job.destinations.oci import OciDestination
from job.engine.transfer import TransferResult, TransferSettings, transfer
from job.errors import (
    DestinationAuthError,
    DestinationError,
    SourceAuthError,
    SourceError,
    SourceNotFound,
    UploadRejected,
)
from job.settings.chain import load_settings
from job.settings.credentials import DockerConfig, RegistryLogin
from job.sources.oci import OciSource
from job.sources.pvc import PvcSource
from tests.fakes import MemoryDestination, MemorySource
from tests.servers.registry import (
    BASE_REPO,
    BUSYBOX,
    BUSYBOX_LINKS,
    OciLayout,
    Registry,
    busybox_layer,
    skopeo_inspect,
    skopeo_pull,
    skopeo_push_layout,
    tar_info,
    unpack_rootfs,
)
from tests.servers.s3 import S3Server, fresh_bucket

pytestmark = pytest.mark.integration

TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
LONG = "a-folder-with-a-long-name-" + "x" * 60 + "/and-a-file-with-a-long-name-" + "y" * 30 + ".json"
MODEL: dict[str, bytes] = {
    "config.json": b'{"model_type": "test"}',
    "sub/config.json": b'{"nested": true}',  # same basename as the top one: olot flattened these
    "sub/deep/weights.bin": random.Random(7).randbytes(2 * 1024 * 1024 + 123),
    "tokenizer.json": random.Random(8).randbytes(70_000),
    "empty.txt": b"",
    LONG: b"{}",
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    for rel, data in MODEL.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


async def push(location: OciLocation, model: Path, tmp: Path, **settings: Any) -> TransferResult:
    destination = OciDestination(location, storage_path=tmp / "storage")
    return await transfer(PvcSource(model), destination, TransferSettings(parallel_files=2, **settings))


async def read_all(location: OciLocation, **options: Any) -> dict[str, bytes]:
    """Every file an OciSource (made with ``options``) lists, read through the engine."""
    memory = MemoryDestination()
    await transfer(OciSource(location, **options), memory, TransferSettings(parallel_files=2))
    return memory.stored


def check_modelcar(
    registry: Registry, reference: str, folder: Path, result: TransferResult, *, arch: str | None = None
) -> dict[str, Any]:
    """Pull with skopeo, unpack, and check the rootfs against the base and MODEL; return the manifest."""
    order = [str(u.obj.path) for u in result.uploaded]  # the listing order
    image = skopeo_pull(registry, reference, folder, arch=arch)
    rootfs = unpack_rootfs(image)
    # The base image is all there.
    assert rootfs["bin/busybox"].data == BUSYBOX.read_bytes() and rootfs["bin/busybox"].mode == 0o755
    for name in BUSYBOX_LINKS:
        assert rootfs[f"bin/{name}"].kind == "symlink" and rootfs[f"bin/{name}"].link == "busybox"
    # /models holds the model, byte for byte, and nothing else (nothing of the base image).
    under = {path: entry for path, entry in rootfs.items() if path == "models" or path.startswith("models/")}
    files = {path.removeprefix("models/"): e.data for path, e in under.items() if e.kind == "file"}
    assert files == MODEL
    dirs = {path for path, e in under.items() if e.kind == "dir"}
    expected_dirs = {"models"} | {f"models/{p}" for rel in MODEL for p in map(str, PurePosixPath(rel).parents[:-1])}
    assert dirs == expected_dirs and len(under) == len(files) + len(dirs)
    for path, entry in under.items():
        assert (entry.mode, entry.uid, entry.gid) == ((0o755 if entry.kind == "dir" else 0o644), 0, 0), path
    # One uncompressed layer per file, titled by its relative path, in listing order, after the base: read
    # from the registry (skopeo gzips uncompressed layers when it writes an OCI layout).
    manifest = skopeo_inspect(registry, reference, raw=True)
    if "manifests" in manifest:
        entry = next(m for m in manifest["manifests"] if m["platform"]["architecture"] == (arch or "amd64"))
        manifest = skopeo_inspect(registry, f"{reference.rpartition(':')[0]}@{entry['digest']}", raw=True)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    layers = manifest["layers"]
    assert [layer["mediaType"] for layer in layers] == [TAR_GZ] + [TAR] * len(MODEL)
    assert [layer["annotations"]["org.opencontainers.image.title"] for layer in layers[1:]] == order
    assert image.config["rootfs"]["diff_ids"][1:] == [layer["digest"] for layer in layers[1:]]
    assert [h["created_by"] for h in image.config["history"][1:]] == [f"model-sync: models/{p}" for p in order]
    return manifest


def log_lines(registry: Registry, needle: str) -> list[str]:
    return [line for line in registry.log_text().splitlines() if needle in line]


# --- pvc -> oci ------------------------------------------------------------------------------------


async def test_plain_registry_single_patch_mount_and_same_digest_twice(
    registry_plain: Registry, model_dir: Path, tmp_path: Path
) -> None:
    reg = registry_plain
    reference = f"{reg.host}/models/plain:v1"
    result = await push(reg.location(reference), model_dir, tmp_path)

    assert result.committed.uri == f"oci://{reference}"
    assert result.committed.digest and result.committed.digest.startswith("sha256:")
    # A pvc lists no sha256, so nothing hashed the files; each layer's digest covers its file instead.
    assert {str(u.obj.path): u.sha256 for u in result.uploaded} == dict.fromkeys(MODEL)
    assert all(u.detail.digest.startswith("sha256:") for u in result.uploaded)  # type: ignore[attr-defined]
    check_modelcar(reg, reference, tmp_path / "pulled", result)
    inspected = skopeo_inspect(reg, reference)
    assert inspected["Digest"] == result.committed.digest and len(inspected["Layers"]) == 1 + len(MODEL)
    # The base layer was mounted from base/busybox (201), not uploaded again.
    mounts = log_lines(reg, '"POST /v2/models/plain/blobs/uploads/?mount=')
    assert mounts and all("from=base%2Fbusybox" in line and '" 201 0 ' in line for line in mounts)
    # Single-PATCH mode: one PATCH per model file, none for the (mounted) base layer.
    assert len(log_lines(reg, '"PATCH /v2/models/plain/blobs/uploads/')) == len(MODEL)
    # Same model, same base: same manifest digest, under another tag and on a rerun.
    again = await push(reg.location(f"{reg.host}/models/plain:v2"), model_dir, tmp_path)
    rerun = await push(reg.location(reference), model_dir, tmp_path)
    assert again.committed.digest == rerun.committed.digest == result.committed.digest


async def test_chunked_patch_mode_gives_the_same_image(
    registry_plain: Registry, model_dir: Path, tmp_path: Path
) -> None:
    reg = registry_plain
    single = await push(reg.location(f"{reg.host}/models/single:v1"), model_dir, tmp_path)
    reference = f"{reg.host}/models/chunked:v1"
    chunked = await push(reg.location(reference, chunk_size=256 * 1024), model_dir, tmp_path)
    assert chunked.committed.digest == single.committed.digest
    check_modelcar(reg, reference, tmp_path / "pulled", chunked)
    patches = log_lines(reg, '"PATCH /v2/models/chunked/blobs/uploads/')
    assert len(patches) > len(MODEL)  # the 2 MiB file alone takes 9 PATCHes of 256 KiB


async def test_htpasswd_and_tls_with_a_ca_bundle(registry_htpasswd: Registry, model_dir: Path, tmp_path: Path) -> None:
    reg = registry_htpasswd
    reference = f"{reg.host}/models/basic:v1"
    result = await push(reg.location(reference), model_dir, tmp_path)
    check_modelcar(reg, reference, tmp_path / "pulled", result)
    assert skopeo_inspect(reg, reference)["Digest"] == result.committed.digest


async def test_wrong_password_is_an_auth_error_without_the_password(
    registry_htpasswd: Registry, registry_token: Registry, model_dir: Path, tmp_path: Path
) -> None:
    for reg in (registry_htpasswd, registry_token):
        location = reg.location(f"{reg.host}/models/denied:v1", password=SecretStr("wrong-Pa55"))
        with pytest.raises(DestinationAuthError) as caught:
            await push(location, model_dir, tmp_path)
        assert reg.password and reg.password not in str(caught.value) and "wrong-Pa55" not in str(caught.value)
        assert "401" in str(caught.value)
        with pytest.raises(SourceAuthError):
            await read_all(reg.location(reg.base, password=SecretStr("wrong-Pa55")))


async def test_tls_without_the_ca_fails_and_names_the_fix(
    registry_htpasswd: Registry, model_dir: Path, tmp_path: Path
) -> None:
    reg = registry_htpasswd
    with pytest.raises(DestinationError, match="CA bundle"):
        await push(reg.location(f"{reg.host}/models/noca:v1", ca_bundle=None), model_dir, tmp_path)
    # tls_verify off: https without verification, as skopeo --tls-verify=false.
    result = await push(
        reg.location(f"{reg.host}/models/noverify:v1", ca_bundle=None, tls_verify=False), model_dir, tmp_path
    )
    assert result.committed.digest


async def test_token_auth_rescopes_from_base_pull_to_target_push(
    registry_token: Registry, model_dir: Path, tmp_path: Path
) -> None:
    reg = registry_token
    assert reg.token_server is not None
    seen = len(reg.token_server.requests)
    reference = f"{reg.host}/models/token:v1"
    result = await push(reg.location(reference), model_dir, tmp_path)
    check_modelcar(reg, reference, tmp_path / "pulled", result)
    assert skopeo_inspect(reg, reference)["Digest"] == result.committed.digest
    scopes = [sorted(s) for user, s in reg.token_server.requests[seen:] if user]
    assert [f"repository:{BASE_REPO}:pull"] in scopes
    assert ["repository:models/token:pull"] in scopes  # what the tag held before (a rerun's lookup)
    # The mount needs pull on the base repository and push on the target in one token, which the model
    # layers' uploads then use.
    assert [f"repository:{BASE_REPO}:pull", "repository:models/token:pull,push"] in scopes
    # And the source side reads it back with its own pull token.
    assert await read_all(reg.location(reference)) == MODEL


async def test_multi_arch_base_gets_the_layers_on_every_platform(
    registry_plain: Registry, model_dir: Path, tmp_path: Path
) -> None:
    reg = registry_plain
    reference = f"{reg.host}/models/multi:v1"
    result = await push(reg.location(reference, base_image=reg.base_multi), model_dir, tmp_path)
    index = skopeo_inspect(reg, reference, raw=True)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [(m["platform"]["architecture"], m["mediaType"]) for m in index["manifests"]] == [
        ("amd64", "application/vnd.oci.image.manifest.v1+json"),
        ("arm64", "application/vnd.oci.image.manifest.v1+json"),
    ]
    digest = "sha256:" + hashlib.sha256(json.dumps(index, separators=(",", ":")).encode()).hexdigest()
    assert result.committed.digest == digest
    for arch in ("amd64", "arm64"):
        check_modelcar(reg, reference, tmp_path / f"pulled-{arch}", result, arch=arch)
    arm = await read_all(reg.location(reference, platform="linux/arm64/v8"))
    assert arm == MODEL


async def test_base_on_another_registry_is_streamed_across(
    registry_plain: Registry, registry_htpasswd: Registry, model_dir: Path, tmp_path: Path
) -> None:
    target, base = registry_plain, registry_htpasswd
    assert base.username and base.password
    logins = DockerConfig({base.host: RegistryLogin(base.username, SecretStr(base.password))})
    reference = f"{target.host}/models/cross:v1"
    # tls_verify=False reaches the plain target over http and the base over unverified https.
    location = target.location(reference, base_image=base.base, docker_config=logins)
    result = await push(location, model_dir, tmp_path)
    check_modelcar(target, reference, tmp_path / "pulled", result)


# --- oci -> anywhere ---------------------------------------------------------------------------------


async def test_source_reads_back_a_pushed_modelcar(registry_plain: Registry, model_dir: Path, tmp_path: Path) -> None:
    reg = registry_plain
    reference = f"{reg.host}/models/readback:v1"
    await push(reg.location(reference), model_dir, tmp_path)
    source = OciSource(reg.location(reference))
    listed = {str(o.path): o async for o in source.list()}
    await source.close()
    assert {p: o.size for p, o in listed.items()} == {p: len(d) for p, d in MODEL.items()}
    assert all(o.digest is None for o in listed.values())  # a layer digest is not a file digest
    assert await read_all(reg.location(reference)) == MODEL
    # A read from an offset (the engine's resume seam) gets the tail.
    source = OciSource(reg.location(reference))
    objects = {str(o.path): o async for o in source.list()}
    async with source.open(objects["sub/deep/weights.bin"], offset=1000) as body:
        tail = b"".join([c async for c in body])
    await source.close()
    assert tail == MODEL["sub/deep/weights.bin"][1000:]


async def test_the_base_image_has_no_model(registry_plain: Registry) -> None:
    with pytest.raises(SourceNotFound, match="no files under /models"):
        await read_all(registry_plain.location(registry_plain.base))


async def test_oras_artifact_pushed_by_oras_py(
    registry_plain: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import oras.client  # type: ignore[import-untyped]

    reg = registry_plain
    (tmp_path / "model.safetensors").write_bytes(b"s" * 5000)
    (tmp_path / "config.json").write_bytes(b'{"a": 1}')
    (tmp_path / "tokenizer" / "nested").mkdir(parents=True)
    (tmp_path / "tokenizer" / "vocab.txt").write_bytes(b"hello\nworld\n")
    (tmp_path / "tokenizer" / "nested" / "merges.txt").write_bytes(b"a b\n")
    monkeypatch.chdir(tmp_path)  # oras-py wants the files under the working directory
    reference = f"{reg.host}/artifacts/oras:v1"
    client = oras.client.OrasClient(hostname=reg.host, insecure=True)
    await asyncio.to_thread(client.push, target=reference, files=["model.safetensors", "config.json", "tokenizer"])

    source = OciSource(reg.location(reference))
    listed = {str(o.path): o async for o in source.list()}
    await source.close()
    assert listed["model.safetensors"].digest == "sha256:" + hashlib.sha256(b"s" * 5000).hexdigest()
    assert await read_all(reg.location(reference)) == {
        "model.safetensors": b"s" * 5000,
        "config.json": b'{"a": 1}',
        "tokenizer/vocab.txt": b"hello\nworld\n",
        "tokenizer/nested/merges.txt": b"a b\n",
    }


def push_layers(reg: Registry, folder: Path, reference: str, *layers: tuple[bytes, bytes, str]) -> None:
    """Push an image of the busybox layer plus ``layers`` with skopeo (digests preserved)."""
    layout = OciLayout(folder)
    base_blob, base_tar = busybox_layer()
    layout.tag(layout.image([(base_blob, base_tar, TAR_GZ), *layers]), "t")
    skopeo_push_layout(reg, folder, "t", reference)


def tar_layer(entries: list[tuple[tarfile.TarInfo, bytes | None]], *, compress: bool) -> tuple[bytes, bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    data = raw.getvalue()
    return (gzip.compress(data, mtime=0), data, TAR_GZ) if compress else (data, data, TAR)


def file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tar_info(name, size=len(data)), data


@pytest.mark.parametrize("streamed", [False, True], ids=["plain-top", "gzip-top"])
async def test_gzip_layers_whiteouts_and_links(registry_plain: Registry, tmp_path: Path, streamed: bool) -> None:
    # gzip-top: the top layer is read once, its files listed as its pass reaches them (one_pass); its whiteouts
    # still hide only what the layers below hold, not its own files met before them (models/d/y).
    reg = registry_plain
    long_name = "models/" + "deep/" * 25 + "file.bin"  # > 100 bytes: a GNU long-name header
    lower = tar_layer(
        [
            (tar_info("models/", tarfile.DIRTYPE, mode=0o755), None),
            file("models/a.json", b"old a"),
            file("models/gone.bin", b"to be whited out"),
            file("models/d/x", b"hidden by the opaque dir"),
            file(long_name, b"L" * 10_000),
            file("etc/hostname", b"outside /models"),
        ],
        compress=True,
    )
    upper = tar_layer(
        [
            file("models/a.json", b"new a"),
            file("models/d/y", b"y"),
            (tar_info("models/.wh.gone.bin"), b""),
            (tar_info("models/d/.wh..wh..opq"), b""),
            file("models/d/z", b"z"),
            (tar_info("models/link.json", tarfile.SYMTYPE, link="a.json"), None),
            (tar_info("models/hard.json", tarfile.LNKTYPE, link="models/d/z"), None),
            (tar_info("models/hard-lower.bin", tarfile.LNKTYPE, link=long_name), None),  # into the layer below
        ],
        compress=streamed,
    )
    reference = f"{reg.host}/models/layered:{'gz' if streamed else 'v1'}"
    push_layers(reg, tmp_path / "layout", reference, lower, upper)
    source = OciSource(reg.location(reference))
    async for _ in source.list():
        assert source.one_pass == streamed
    await source.close()
    assert await read_all(reg.location(reference)) == {
        "a.json": b"new a",
        "d/y": b"y",
        "d/z": b"z",
        "hard.json": b"z",
        "hard-lower.bin": b"L" * 10_000,
        "link.json": b"new a",
        long_name.removeprefix("models/"): b"L" * 10_000,
    }


async def test_one_gzip_layer_holding_the_whole_model_is_read_once(
    registry_plain: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What `docker build` with `COPY models/ /models/` pushes: every file in one gzip layer, in walk order
    # ("a/" before "a.txt", unlike path order). One pass lists them and serves them all, 4 files put at a time:
    # the layer's blob is fetched once, not once for the listing and again for the copy (nor once per file).
    reg = registry_plain
    rng = random.Random(11)
    model = {
        "a/inner.bin": rng.randbytes(70_000),
        "a.txt": b"a text",
        "config.json": b'{"x": 1}',
        "model-00001.safetensors": rng.randbytes(300_000),
        "model-00002.safetensors": rng.randbytes(300_000),
        "tokenizer.json": rng.randbytes(50_000),
        "zero.bin": b"",
    }
    entries = [(tar_info("models/", tarfile.DIRTYPE, mode=0o755), None), (tar_info("models/a/", tarfile.DIRTYPE), None)]
    entries += [file("models/" + name, data) for name, data in model.items()]
    layer = tar_layer(entries, compress=True)
    layer_digest = "sha256:" + hashlib.sha256(layer[0]).hexdigest()
    reference = f"{reg.host}/models/dockerfile-style:v1"
    push_layers(reg, tmp_path / "layout", reference, layer)

    source = OciSource(reg.location(reference))
    assert [str(o.path) async for o in source.list()] == list(model)  # tar order: the order the pass meets
    await source.close()
    before = len(log_lines(reg, f"GET /v2/models/dockerfile-style/blobs/{layer_digest}"))
    memory = MemoryDestination()
    with caplog.at_level(logging.WARNING):
        await transfer(OciSource(reg.location(reference)), memory, TransferSettings(parallel_files=4))
    assert memory.stored == model
    reads = len(log_lines(reg, f"GET /v2/models/dockerfile-style/blobs/{layer_digest}")) - before
    assert reads == 1, reads
    assert "again from its start" not in caplog.text


async def test_an_image_of_gzip_layers_is_read_once_from_its_top_layer_down(
    registry_plain: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What `skopeo copy --dest-compress` or `docker push` makes of a modelcar of one layer per file: gzip layers on
    # a base. Read from the top layer down, each layer's files are listed as its pass reaches them, unless a layer
    # above hides them (a whiteout, a file replaced, an opaque directory), and every blob is fetched once: not once
    # to list and again to copy. A plain layer between them is streamed the same way.
    reg = registry_plain
    rng = random.Random(12)
    weights = [rng.randbytes(200_000) for _ in range(3)]
    layers = [
        tar_layer([(tar_info("models/", tarfile.DIRTYPE, mode=0o755), None), file("models/w1.bin", weights[0]),
                   file("models/old.bin", b"whited out above"), file("models/cfg.json", b"replaced above"),
                   file("models/d/x", b"under an opaque directory above")], compress=True),
        tar_layer([file("models/w2.bin", weights[1]), (tar_info("models/d/.wh..wh..opq"), b""),
                   file("models/d/y", b"y")], compress=False),
        tar_layer([file("models/w3.bin", weights[2]), (tar_info("models/.wh.old.bin"), b"")], compress=True),
        tar_layer([file("models/cfg.json", b'{"new": true}')], compress=True),
    ]  # fmt: skip
    reference = f"{reg.host}/models/gzip-layers:v1"
    push_layers(reg, tmp_path / "layout", reference, *layers)
    model = {
        "cfg.json": b'{"new": true}',
        "w3.bin": weights[2],
        "w2.bin": weights[1],
        "d/y": b"y",
        "w1.bin": weights[0],
    }

    source = OciSource(reg.location(reference))
    assert [str(o.path) async for o in source.list()] == list(model)  # top layer first, tar order within each
    assert source.one_pass
    await source.close()
    digests = ["sha256:" + hashlib.sha256(blob).hexdigest() for blob, _, _ in layers]
    before = [len(log_lines(reg, f"GET /v2/models/gzip-layers/blobs/{d}")) for d in digests]
    memory = MemoryDestination()
    with caplog.at_level(logging.WARNING):
        await transfer(OciSource(reg.location(reference)), memory, TransferSettings(parallel_files=4))
    assert memory.stored == model
    reads = [
        len(log_lines(reg, f"GET /v2/models/gzip-layers/blobs/{d}")) - b for d, b in zip(digests, before, strict=False)
    ]
    assert reads == [1, 1, 1, 1]
    assert "again from its start" not in caplog.text


@pytest.mark.parametrize("top", [TAR, TAR_GZ])
async def test_a_layer_labelled_tar_that_is_gzip_is_inflated(
    registry_plain: Registry, tmp_path: Path, top: str
) -> None:
    # Listed by ranged reads below a plain top layer, read top-down below a gzip one: both look at its first bytes.
    _, lower_tar, _ = tar_layer([file("models/lower.bin", b"L" * 5000)], compress=False)
    mislabelled = (gzip.compress(lower_tar, mtime=0), lower_tar, TAR)
    upper = tar_layer([file("models/upper.json", b"{}")], compress=top == TAR_GZ)
    reference = f"{registry_plain.host}/models/mislabelled:{'gz' if top == TAR_GZ else 'v1'}"
    push_layers(registry_plain, tmp_path / "layout", reference, mislabelled, upper)
    assert await read_all(registry_plain.location(reference)) == {"lower.bin": b"L" * 5000, "upper.json": b"{}"}


async def test_a_top_layer_read_once_that_turns_a_listed_file_into_a_directory_is_refused(
    registry_plain: Registry, tmp_path: Path
) -> None:
    top = tar_layer([file("models/f", b"a file"), file("models/f/g", b"then a directory")], compress=True)
    reference = f"{registry_plain.host}/models/file-then-dir:v1"
    push_layers(registry_plain, tmp_path / "layout", reference, top)
    memory = MemoryDestination()
    with pytest.raises(SourceError, match="replaces the file models/f by a directory"):
        await transfer(OciSource(registry_plain.location(reference)), memory, TransferSettings())
    assert memory.calls[-2:] == ["abort", "close"]


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        (file("../evil", b"x"), "../evil"),
        (file("/models/abs", b"x"), "/models/abs"),
        ((tar_info("models/escape", tarfile.SYMTYPE, link="../../etc/passwd"), None), "models/escape"),
    ],
)
async def test_malicious_layers_are_refused(
    registry_plain: Registry, tmp_path: Path, entry: tuple[tarfile.TarInfo, bytes | None], named: str
) -> None:
    reg = registry_plain
    reference = f"{reg.host}/models/evil:{hashlib.sha256(named.encode()).hexdigest()[:8]}"
    push_layers(reg, tmp_path / "layout", reference, tar_layer([file("models/ok", b"ok"), entry], compress=False))
    with pytest.raises(SourceError) as caught:
        await read_all(reg.location(reference))
    assert repr(named) in str(caught.value)


# --- edges: unknown sizes, aborts, the pipeline's factories --------------------------------------------


async def test_a_file_of_unknown_size_is_spooled_then_pushed(registry_plain: Registry, tmp_path: Path) -> None:
    reg = registry_plain
    data = random.Random(3).randbytes(300_000)
    source = MemorySource({"stream.bin": data}, sizes={"stream.bin": None}, chunk_size=65536)
    reference = f"{reg.host}/models/spooled:v1"
    destination = OciDestination(reg.location(reference), storage_path=tmp_path / "storage")
    await transfer(source, destination, TransferSettings())
    assert await read_all(reg.location(reference)) == {"stream.bin": data}
    assert list((tmp_path / "storage" / "oci-spool").iterdir()) == []  # the spool file is gone


async def test_a_failed_file_cancels_its_upload_session(registry_plain: Registry, tmp_path: Path) -> None:
    reg = registry_plain
    source = MemorySource({"big.bin": bytes(1_000_000)}, fail_after={"big.bin": 300_000}, chunk_size=65536)
    destination = OciDestination(reg.location(f"{reg.host}/models/aborted:v1"), storage_path=tmp_path)
    with pytest.raises(SourceError, match="reading big.bin from the source"):
        await transfer(source, destination, TransferSettings())
    assert log_lines(reg, '"DELETE /v2/models/aborted/blobs/uploads/')
    assert not log_lines(reg, '"PUT /v2/models/aborted/manifests/')


async def test_pipeline_builds_both_oci_backends_from_settings(
    registry_plain: Registry, model_dir: Path, tmp_path: Path
) -> None:
    reg = registry_plain
    source_ref = f"{reg.host}/models/pipeline-src:v1"
    await push(reg.location(source_ref), model_dir, tmp_path)
    argv = [
        "--registry-server-address", "http://127.0.0.1:9", "--storage-path", str(tmp_path / "storage"),
        "--source-type", "oci", "--source-oci-uri", f"oci://{source_ref}", "--source-oci-enable-tls-verify", "false",
        "--destination-type", "oci", "--destination-oci-uri", f"oci://{reg.host}/models/pipeline-dst:v1",
        "--destination-oci-enable-tls-verify", "false", "--destination-oci-base-image", reg.base,
        "--destination-oci-chunk-size-mib", "1",
    ]  # fmt: skip
    config = build_job_config(load_settings(argv), {})
    result = await transfer(make_source(config), make_destination(config), TransferSettings(parallel_files=2))
    assert result.committed.uri == f"oci://{reg.host}/models/pipeline-dst:v1"
    check_modelcar(reg, f"{reg.host}/models/pipeline-dst:v1", tmp_path / "pulled", result)


# --- S3 on either side -----------------------------------------------------------------------------------


def s3_location(server: S3Server, bucket: str, key: str) -> S3Location:
    return S3Location(
        bucket=bucket,
        key=key,
        region=None,
        endpoint=server.endpoint_url,
        access_key_id=SecretStr(server.access_key),
        secret_access_key=SecretStr(server.secret_key),
    )


async def test_s3_to_oci_and_back_to_s3(seaweedfs_s3: S3Server, registry_token: Registry, tmp_path: Path) -> None:
    from job.destinations.s3 import S3Destination
    from job.sources.s3 import S3Source

    s3, reg = seaweedfs_s3, registry_token
    bucket = fresh_bucket(s3)
    client = s3.client()
    for rel, data in MODEL.items():
        client.put_object(Bucket=bucket, Key=f"models/m/{rel}", Body=data)
    reference = f"{reg.host}/models/from-s3:v1"
    destination = OciDestination(reg.location(reference), storage_path=tmp_path)
    result = await transfer(
        S3Source(s3_location(s3, bucket, "models/m/")), destination, TransferSettings(parallel_files=2)
    )
    check_modelcar(reg, reference, tmp_path / "pulled", result)

    copy = S3Destination(s3_location(s3, bucket, "copies/m/"))
    await transfer(OciSource(reg.location(reference)), copy, TransferSettings(parallel_files=2))
    stored = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="copies/m/"):
        for obj in page.get("Contents", []):
            stored[obj["Key"].removeprefix("copies/m/")] = client.get_object(Bucket=bucket, Key=obj["Key"])[
                "Body"
            ].read()
    assert stored == MODEL


async def test_a_missing_base_image_fails_before_model_bytes_move(
    registry_plain: Registry, model_dir: Path, tmp_path: Path
) -> None:
    reg = registry_plain
    location = reg.location(f"{reg.host}/models/nobase:v1", base_image=f"{reg.host}/base/missing:latest")
    with pytest.raises(
        UploadRejected, match="reading manifest .*/base/missing:latest: 404 MANIFEST_UNKNOWN: manifest unknown"
    ):
        await push(location, model_dir, tmp_path)
    assert not log_lines(reg, '"POST /v2/models/nobase/')
