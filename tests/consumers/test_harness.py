"""Smoke tests of the consumer harness itself, on inputs written by hand or by the test servers (not by
model-sync): each proves its consumer really runs and that the harness reads its answer right."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.consumers import ConsumerError
from tests.consumers.kserve import OCI_INSECURE_ENV, kserve_download, s3_env
from tests.consumers.kubeflow_client import read_back
from tests.consumers.podman import run_modelcar
from tests.consumers.uibackend import ui_backend_ids
from tests.servers.registry import OciLayout, Registry, _tar_gz, busybox_layer, skopeo_push_layout, tar_info
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

MODEL_FILES: dict[str, bytes] = {
    "config.json": b'{"architectures": ["Tiny"]}\n',
    "sub/weights.bin": hashlib.sha256(b"seed").digest() * 4096,  # 128 KiB
}
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _read_tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_modelcar(registry_plain: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A hand-built modelcar on the plain registry: the busybox base plus one uncompressed layer per model
    file (as olot lays them out), pushed with skopeo. Returns its reference."""
    layout = OciLayout(tmp_path_factory.mktemp("tiny-modelcar"))
    base_blob, base_tar = busybox_layer()
    layers = [(base_blob, base_tar, GZIP_LAYER)]
    for name, data in MODEL_FILES.items():
        _, tar = _tar_gz([(tar_info(f"models/{name}", size=len(data), mode=0o644), data)])
        layers.append((tar, tar, TAR_LAYER))
    layout.tag(layout.image(layers), "v1")
    reference = f"{registry_plain.host}/consumers/tiny-modelcar:v1"
    skopeo_push_layout(registry_plain, layout.folder, "v1", reference)
    return reference


# --- Kubeflow's UI backend (Go) -------------------------------------------------------------------------


def test_ui_backend_reads_nested_ids() -> None:
    message = (
        '{"intent":"create_model","RegisteredModel":{"id":"1"},"ModelVersion":{"id":"2"},"ModelArtifact":{"id":"3"}}'
    )
    assert ui_backend_ids(message) == {"RegisteredModel": "1", "ModelVersion": "2", "ModelArtifact": "3"}


def test_ui_backend_reads_flat_ids_as_empty_and_rejects_numeric_ids(tmp_path: Path) -> None:
    flat = tmp_path / "termination-log"
    flat.write_text('{"registered_model_id": "1", "model_version_id": "2"}')
    assert ui_backend_ids(flat) == {"RegisteredModel": "", "ModelVersion": "", "ModelArtifact": ""}
    with pytest.raises(ConsumerError, match=r"cannot unmarshal number .*RegisteredModel\.id of type string"):
        ui_backend_ids('{"RegisteredModel": {"id": 1}}')


# --- podman + runc, as KServe's pod -------------------------------------------------------------------------


def test_podman_init_check_fails_on_the_empty_base(registry_plain: Registry) -> None:
    result = run_modelcar(registry_plain.base)
    assert result.error == ""
    assert result.layers == 1
    assert not result.init_ok, result.init_output
    assert "NOK" in result.init_output
    assert result.tree == {}


def test_podman_serves_a_modelcar_to_uid_1010(tiny_modelcar: str) -> None:
    result = run_modelcar(tiny_modelcar, MODEL_FILES)
    assert result.layers == 1 + len(MODEL_FILES)
    assert "OK ... Prefetched and valid" in result.init_output
    assert result.sizes == {name: len(data) for name, data in MODEL_FILES.items()}


# --- KServe's storage initializer ---------------------------------------------------------------------------


def test_kserve_downloads_an_s3_prefix(seaweedfs_s3: S3Server, tmp_path: Path) -> None:
    bucket = fresh_bucket(seaweedfs_s3, "kserve")
    client = seaweedfs_s3.client()
    for name, data in MODEL_FILES.items():
        client.put_object(Bucket=bucket, Key=f"models/tiny/{name}", Body=data)
    client.put_object(Bucket=bucket, Key="models/other/x.txt", Body=b"not ours")
    kserve_download(f"s3://{bucket}/models/tiny/", tmp_path / "out", s3_env(seaweedfs_s3))
    assert _read_tree(tmp_path / "out") == MODEL_FILES


def test_kserve_downloads_an_oci_modelcar(tiny_modelcar: str, tmp_path: Path) -> None:
    kserve_download(f"oci://{tiny_modelcar}", tmp_path / "out", OCI_INSECURE_ENV)
    assert _read_tree(tmp_path / "out") == MODEL_FILES


# --- Kubeflow's Python clients ------------------------------------------------------------------------------


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        created: dict[str, Any] = json.loads(response.read())
        return created


def test_kubeflow_client_0_3_14_finds_nothing_in_an_empty_registry(registry_standin: ModelRegistryStandin) -> None:
    registry_standin.reset()
    found = read_back("0.3.14", "127.0.0.1", registry_standin.port, "no-such-model", "v1", "t")
    assert found == {"RegisteredModel": None, "ModelVersion": None, "ModelArtifact": None}
    assert registry_standin.calls("GET", r"/api/model_registry/v1alpha3/registered_model\b")


def test_kubeflow_client_0_3_14_reads_back_a_seeded_model(registry_standin: ModelRegistryStandin) -> None:
    registry_standin.reset()
    api = registry_standin.api_url_for("v1alpha3")
    model = _post(f"{api}/registered_models", {"name": "tiny"})
    version = _post(f"{api}/registered_models/{model['id']}/versions", {"name": "v1", "registeredModelId": model["id"]})
    # The client finds the artifact by the *registered model's* name within the version.
    artifact = _post(
        f"{api}/model_versions/{version['id']}/artifacts",
        {"artifactType": "model-artifact", "name": "tiny", "uri": "s3://bucket/tiny/", "state": "LIVE"},
    )
    found = read_back("0.3.14", "127.0.0.1", registry_standin.port, "tiny", "v1", "t")
    assert found["RegisteredModel"]["id"] == model["id"]
    assert found["ModelVersion"]["id"] == version["id"]
    assert found["ModelArtifact"]["id"] == artifact["id"]
    assert found["ModelArtifact"]["uri"] == "s3://bucket/tiny/"
    assert found["ModelArtifact"]["state"] == "LIVE"


def test_kubeflow_client_0_3_18_finds_nothing_in_an_empty_registry(registry_standin: ModelRegistryStandin) -> None:
    registry_standin.reset()
    found = read_back("0.3.18", "127.0.0.1", registry_standin.port, "no-such-model", "v1", "t")
    assert found == {"RegisteredModel": None, "ModelVersion": None, "ModelArtifact": None}
    assert registry_standin.calls("GET", r"/api/model_registry/v1/registered_model\b")
