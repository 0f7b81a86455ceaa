"""An OCI registry that lies, through the real process (``python -m job``, oci -> s3, update_artifact): the fault
proxy in front of distribution substitutes blob bytes, serves a forged manifest, or the manifest understates a
layer's size. Each ends in a one-line IntegrityError or SourceError naming the layer, exit 1, nothing of the
model recorded LIVE, and no request built from a malformed digest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.jobs import (
    FAST,
    OCI_MANIFEST,
    get_artifact,
    oci_env,
    registry_env,
    run_job,
    s3_env,
    update_artifact_env,
    write_tree,
)
from tests.integration.test_faults import _push_source_image
from tests.servers.faultproxy import FaultProxy, status
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

MODEL = {"config.json": b'{"a": 1}', "weights.bin": bytes(range(256)) * 300}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(registry: Registry, repository: str) -> dict:  # type: ignore[type-arg]
    with httpx.Client(base_url=f"http://{registry.host}/v2/{repository}", timeout=30) as api:
        doc: dict = api.get("/manifests/1", headers={"Accept": OCI_MANIFEST}).raise_for_status().json()  # type: ignore[type-arg]
    return doc


def _put_manifest(registry: Registry, repository: str, tag: str, manifest: dict) -> None:  # type: ignore[type-arg]
    data = json.dumps(manifest).encode()
    httpx.put(f"http://{registry.host}/v2/{repository}/manifests/{tag}", content=data,
              headers={"Content-Type": OCI_MANIFEST}, timeout=30).raise_for_status()  # fmt: skip


def _job(registry: ModelRegistryStandin, proxy: FaultProxy, s3: S3Server, reference: str) -> tuple[dict[str, str], str]:
    intent = update_artifact_env(registry.api_url)
    env = {**FAST, **registry_env(registry.url), **intent, **oci_env("SOURCE", f"{proxy.host}/{reference}"),
           **s3_env("DESTINATION", s3, fresh_bucket(s3, "hostile"), "m"), "MODEL_SYNC_RETRY_ATTEMPTS": "2",
           "MODEL_SYNC_RETRY_FILE_ATTEMPTS": "1"}  # fmt: skip
    return env, intent["MODEL_SYNC_MODEL_ARTIFACT_ID"]


@pytest.fixture
def image(registry_plain: Registry, tmp_path: Path) -> tuple[str, str]:
    """MODEL pushed as a modelcar (one plain tar layer per file); returns the repository and weights.bin's layer."""
    repository = f"hostile/m{uuid.uuid4().hex[:8]}"
    digest = _push_source_image(registry_plain, write_tree(tmp_path / "model", MODEL), repository, tmp_path / "st")
    return repository, digest


def test_substituted_layer_bytes_are_an_integrity_error(
    registry_standin: ModelRegistryStandin, registry_plain: Registry, oci_proxy: FaultProxy, seaweedfs_s3: S3Server,
    image: tuple[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    """Zeros in place of the layer (its listing "ends" at once), or one flipped byte in the file's data (the
    listing reads headers only; the file's read takes the whole blob and checks its digest)."""
    repository, digest = image
    env, artifact_id = _job(registry_standin, oci_proxy, seaweedfs_s3, f"{repository}:1")
    blob = httpx.get(f"http://{registry_plain.host}/v2/{repository}/blobs/{digest}", timeout=30).content
    for body in (bytes(len(blob)), blob[:5000] + bytes([blob[5000] ^ 1]) + blob[5001:]):  # zeros; one data byte
        oci_proxy.add(status(200, body=body, content_type="application/octet-stream"), method="GET",
                      path=rf"^/v2/{repository}/blobs/{digest}$", times=20)  # fmt: skip
        try:
            run = run_job(env, tmp_path)
        finally:
            oci_proxy.clear()
        run.assert_one_line_failure(code=1)
        assert f"layer {digest}" in run.message or f"weights.bin from oci://{oci_proxy.host}" in run.message
        assert "the registry sent" in run.message
        assert get_artifact(registry_standin.api_url, artifact_id)["state"] != "LIVE"


def test_a_layer_size_the_manifest_understates_is_an_integrity_error(
    registry_standin: ModelRegistryStandin, registry_plain: Registry, oci_proxy: FaultProxy,
    seaweedfs_s3: S3Server, image: tuple[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    repository, digest = image
    manifest = _manifest(registry_plain, repository)
    for layer in manifest["layers"]:
        if layer["digest"] == digest:
            layer["size"] -= 1024  # distribution accepts it: files at the layer's end would vanish
    _put_manifest(registry_plain, repository, "short", manifest)
    env, artifact_id = _job(registry_standin, oci_proxy, seaweedfs_s3, f"{repository}:short")
    run = run_job(env, tmp_path)
    run.assert_one_line_failure(code=1)
    assert f"layer {digest}: the registry holds" in run.message and "the manifest says" in run.message
    assert get_artifact(registry_standin.api_url, artifact_id)["state"] != "LIVE"


def test_a_malformed_layer_digest_is_refused_before_any_request_is_built_from_it(
    registry_standin: ModelRegistryStandin, registry_plain: Registry, oci_proxy: FaultProxy,
    seaweedfs_s3: S3Server, image: tuple[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    repository, _ = image
    manifest = _manifest(registry_plain, repository)
    manifest["layers"][-1]["digest"] = "../../../v2/_catalog?x="
    oci_proxy.add(status(200, body=json.dumps(manifest).encode(), content_type=OCI_MANIFEST), method="GET",
                  path=rf"^/v2/{repository}/manifests/1$", times=20)  # fmt: skip
    env, artifact_id = _job(registry_standin, oci_proxy, seaweedfs_s3, f"{repository}:1")
    try:
        run = run_job(env, tmp_path)
        catalog = [s for s in oci_proxy.seen() if "_catalog" in s.target or "/v2/v2/" in s.target]
    finally:
        oci_proxy.clear()
    run.assert_one_line_failure(code=1)
    assert "'../../../v2/_catalog?x=' is not a digest" in run.message
    assert catalog == []
    assert get_artifact(registry_standin.api_url, artifact_id)["state"] != "LIVE"


@pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "plain"])
def test_a_layer_holding_the_whole_model_with_substituted_bytes_is_an_integrity_error(
    registry_standin: ModelRegistryStandin, registry_plain: Registry, oci_proxy: FaultProxy,
    seaweedfs_s3: S3Server, image: tuple[str, str], tmp_path: Path, compressed: bool,
) -> None:  # fmt: skip
    """docker build's layout (the whole model in one layer): gzip, whose listing pass reads it whole and checks it,
    or plain, whose listing reads headers only and whose copy pass checks the whole blob at its end."""
    repository, _ = image
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in MODEL.items():
            info = tarfile.TarInfo(f"models/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = gzip.compress(raw.getvalue()) if compressed else raw.getvalue()
    upload = httpx.post(f"http://{registry_plain.host}/v2/{repository}/blobs/uploads/", timeout=30)
    location = httpx.URL(f"http://{registry_plain.host}").join(upload.headers["Location"])
    httpx.put(location.copy_merge_params({"digest": _sha(blob)}), content=blob, timeout=30).raise_for_status()
    manifest = _manifest(registry_plain, repository)
    media_type = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compressed else "")
    manifest["layers"] = [*manifest["layers"][:1], {"mediaType": media_type, "digest": _sha(blob), "size": len(blob)}]
    _put_manifest(registry_plain, repository, "gz", manifest)
    other = bytearray(blob)
    other[len(other) // 2 if compressed else 3000] ^= 0xFF  # plain: a byte of weights.bin's data, not a header
    oci_proxy.add(status(200, body=bytes(other), content_type="application/octet-stream"), method="GET",
                  path=rf"^/v2/{repository}/blobs/{_sha(blob)}$", times=20)  # fmt: skip
    env, artifact_id = _job(registry_standin, oci_proxy, seaweedfs_s3, f"{repository}:gz")
    try:
        run = run_job(env, tmp_path)
    finally:
        oci_proxy.clear()
    run.assert_one_line_failure(code=1)
    assert _sha(blob) in run.message
    assert get_artifact(registry_standin.api_url, artifact_id)["state"] != "LIVE"
