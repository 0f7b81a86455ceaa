"""What the job writes, read by the programs that read it in a Kubeflow cluster: the real job (``python -m job``)
syncs a model, then each consumer gets the result.

* Kubeflow's UI backend (its Go struct) reads every id from the termination message;
* Kubeflow's Python client reads model, version and artifact back by name: 0.3.14 from a registry that
  serves only the ``v1alpha3`` API, 0.3.18 from one that serves only ``v1`` (the job finds which by itself);
* KServe's storage initializer (``kserve-storage``) downloads the recorded ``s3://`` uri, with a sibling
  prefix present, and the recorded ``oci://`` uri, and gets exactly the model;
* podman + runc start the pushed modelcar as KServe's pod does, and uid 1010 reads every file byte for byte;
  also a 200-file model, which fits the layer budget.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.consumers.kserve import OCI_INSECURE_ENV, kserve_download, s3_env
from tests.consumers.kubeflow_client import read_back
from tests.consumers.podman import run_modelcar
from tests.consumers.uibackend import ui_backend_ids
from tests.integration.jobs import FAST, Run, oci_env, put_tree, pvc_env, registry_env, run_job, write_tree
from tests.integration.jobs import s3_env as job_s3_env
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

MiB = 1024 * 1024

MODEL = {
    "config.json": b'{"architectures": ["Tiny"]}',
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "weights/model 00001.safetensors": bytes(range(256)) * 4000,
    "weights/model 00002.safetensors": b"\x01" * 300_000,
}


@pytest.fixture(scope="module")
def v1alpha3_registry() -> Iterator[ModelRegistryStandin]:
    """A registry of the older generation: ``/api/model_registry/v1alpha3`` only."""
    with ModelRegistryStandin(api_versions=("v1alpha3",)) as standin:
        yield standin


@pytest.fixture(scope="module")
def v1_registry() -> Iterator[ModelRegistryStandin]:
    """A registry of the current generation: ``/api/model_registry/v1`` only."""
    with ModelRegistryStandin(api_versions=("v1",)) as standin:
        yield standin


def create_model(registry: ModelRegistryStandin, tmp: Path, name: str) -> dict[str, str]:
    """create_model with a ConfigMap that names no artifact (the UI's usual case), plus a storage key."""
    configmap = write_tree(tmp / "configmap", {"RegisteredModel.name": name.encode(), "ModelVersion.name": b"1.0.0",
                                               "ModelArtifact.storage_key": b"s3-conn"})  # fmt: skip
    return {**FAST, **registry_env(registry.url), "MODEL_SYNC_MODEL_UPLOAD_INTENT": "create_model",
            "MODEL_SYNC_METADATA_CONFIGMAP_PATH": str(configmap)}  # fmt: skip


def read_dir(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_ui_backend_and_client(run: Run, registry: ModelRegistryStandin, client: str, name: str) -> dict[str, Any]:
    """The UI backend's parse gets every id of the run; Kubeflow's client finds the three entities by name."""
    result = run.result()
    ids = ui_backend_ids(run.message)
    assert ids == {key: result[key]["id"] for key in ("RegisteredModel", "ModelVersion", "ModelArtifact")}
    assert all(ids.values())
    found = read_back(client, "127.0.0.1", registry.port, name, "1.0.0")  # type: ignore[arg-type]
    assert found["RegisteredModel"]["id"] == ids["RegisteredModel"]
    assert found["ModelVersion"]["id"] == ids["ModelVersion"]
    artifact = found["ModelArtifact"]
    assert artifact is not None, "the client looks the artifact up by the registered model's name"
    assert (artifact["id"], artifact["uri"], artifact["state"]) == (ids["ModelArtifact"], result["uri"], "LIVE")
    return artifact


def test_s3_destination_read_by_the_ui_backend_kubeflow_0_3_14_and_kserve(
    v1alpha3_registry: ModelRegistryStandin, seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    bucket = fresh_bucket(seaweedfs_s3, "consumers")
    put_tree(seaweedfs_s3, bucket, "demo/sentiment-v2/", {"config.json": b"another model"})  # a sibling prefix
    name = f"sentiment-{uuid.uuid4().hex[:6]}"
    env = {**create_model(v1alpha3_registry, tmp_path, name), **pvc_env(write_tree(tmp_path / "model", MODEL)),
           **job_s3_env("DESTINATION", seaweedfs_s3, bucket, "demo/sentiment")}  # fmt: skip
    run = run_job(env, tmp_path)
    assert run.result()["uri"] == f"s3://{bucket}/demo/sentiment/"
    artifact = check_ui_backend_and_client(run, v1alpha3_registry, "0.3.14", name)
    assert (artifact["storage_key"], artifact["storage_path"]) == ("s3-conn", "demo/sentiment/")
    asked_v1 = v1alpha3_registry.calls(path_regex=r"/api/model_registry/v1/")
    assert [r.status for r in asked_v1] == [404]  # asked once, then the job used v1alpha3
    kserve_download(run.result()["uri"], tmp_path / "served", s3_env(seaweedfs_s3))
    assert read_dir(tmp_path / "served") == MODEL  # exactly the model: nothing of sentiment-v2/


def test_oci_destination_read_by_the_ui_backend_kubeflow_0_3_18_podman_and_kserve(
    v1_registry: ModelRegistryStandin, registry_plain: Registry, tmp_path: Path
) -> None:
    name = f"modelcar-{uuid.uuid4().hex[:6]}"
    reference = f"{registry_plain.host}/consumers/{name}:1.0.0"
    env = {**create_model(v1_registry, tmp_path, name), **pvc_env(write_tree(tmp_path / "model", MODEL)),
           **oci_env("DESTINATION", reference, base=registry_plain.base)}  # fmt: skip
    run = run_job(env, tmp_path)
    assert run.result()["uri"] == f"oci://{reference}"
    check_ui_backend_and_client(run, v1_registry, "0.3.18", name)
    assert v1_registry.calls(path_regex=r"/api/model_registry/v1/") and not v1_registry.calls(
        path_regex=r"/api/model_registry/v1alpha3/"
    )
    started = run_modelcar(reference, MODEL)  # asserts every step ran and every byte matches
    assert started.layers == 1 + len(MODEL)
    kserve_download(run.result()["uri"], tmp_path / "served", OCI_INSECURE_ENV)
    assert read_dir(tmp_path / "served") == MODEL


def many_files_model() -> dict[str, bytes]:
    """200 files: 12 shards of a few MiB, 186 small files in nested folders, an empty file, a space in a name."""
    rng = random.Random(200)
    model = {f"weights/model-{i + 1:05d}-of-00012.safetensors": rng.randbytes(2 * MiB + i * 4099) for i in range(12)}
    model |= {
        f"extra/{i % 5}/part {i % 3}/file-{i:03d}.json": rng.randbytes(rng.randrange(1, 20_000)) for i in range(186)
    }
    model |= {"empty.txt": b"", "config file.json": b'{"architectures": ["Many"]}'}
    return model


def test_a_200_file_model_fits_the_layer_budget_and_starts_under_podman(
    v1_registry: ModelRegistryStandin, registry_plain: Registry, tmp_path: Path
) -> None:
    """One layer per file would make 201 layers: podman pulls that image but cannot start it ("max depth
    exceeded"). With the default budget the shards keep their layers and the small files share two."""
    model = many_files_model()
    name = f"many-{uuid.uuid4().hex[:6]}"
    reference = f"{registry_plain.host}/consumers/{name}:1.0.0"
    env = {**create_model(v1_registry, tmp_path, name), **pvc_env(write_tree(tmp_path / "model", model)),
           **oci_env("DESTINATION", reference, base=registry_plain.base)}  # fmt: skip
    run = run_job(env, tmp_path)
    assert run.result()["uri"] == f"oci://{reference}"
    started = run_modelcar(reference, model)  # KServe's init check, the sidecar, uid 1010 reads every byte
    assert started.layers == 1 + 12 + 2  # busybox, a layer per shard, 188 small files in two
