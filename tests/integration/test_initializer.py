"""The storage-initializer mode through the real process: ``python -m job <storage-uri> <dest-dir>``, as KServe
runs it, against the stand-in Model Registry, SeaweedFS, the local registry and the Hub test server.

Where KServe's own initializer (``kserve-storage``) can read the same uri, its result is the reference:
the directory model-sync fills must hold exactly what KServe's would.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.consumers.kserve import OCI_INSECURE_ENV, kserve_download
from tests.consumers.kserve import s3_env as kserve_s3_env
from tests.integration.jobs import FAST, Run, oci_env, put_tree, pvc_env, registry_env, run_job, write_tree
from tests.servers.http import MODEL_FILES, HttpTestServer
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

MODEL = {
    "config.json": b'{"architectures": ["Served"]}',
    "weights/model 1.safetensors": bytes(range(256)) * 3000,
    "tokenizer/vocab.txt": b"a\nb\n",
}


def read_dir(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def serve(uri: str, target: Path, tmp: Path, env: dict[str, str]) -> Run:
    """``python -m job <uri> <target>`` with ``env`` (plus short retries)."""
    return run_job({**FAST, **env}, tmp, args=[uri, str(target)])


def registry_at(standin: ModelRegistryStandin) -> dict[str, str]:
    """Upstream's initializer env: the registry as ``MODEL_REGISTRY_BASE_URL`` (host:port, http)."""
    return {"MODEL_REGISTRY_BASE_URL": f"127.0.0.1:{standin.port}", "MODEL_REGISTRY_SCHEME": "http"}


def register(standin: ModelRegistryStandin, name: str, versions: dict[str, list[dict[str, Any]]]) -> None:
    """A registered model with versions (in order) and their artifacts (in order: the last is the newest)."""
    api = httpx.Client(base_url=standin.api_url, timeout=30)
    rm = api.post("/registered_models", json={"name": name}).raise_for_status().json()
    for version, artifacts in versions.items():
        body = {"name": version, "registeredModelId": rm["id"]}
        mv = api.post(f"/registered_models/{rm['id']}/versions", json=body).raise_for_status().json()
        for n, fields in enumerate(artifacts):
            artifact = {"artifactType": "model-artifact", "name": f"{name}-{version}-{n}", **fields}
            api.post(f"/model_versions/{mv['id']}/artifacts", json=artifact).raise_for_status()


def test_a_modelcar_pushed_by_model_sync_is_served_like_kserve_would(
    registry_standin: ModelRegistryStandin, registry_plain: Registry, tmp_path: Path
) -> None:
    name = f"served-{uuid.uuid4().hex[:6]}"
    reference = f"{registry_plain.host}/serving/{name}:1.0.0"
    configmap = write_tree(tmp_path / "cm", {"RegisteredModel.name": name.encode(), "ModelVersion.name": b"1.0.0"})
    pushed = run_job({**FAST, **registry_env(registry_standin.url), **pvc_env(write_tree(tmp_path / "m", MODEL)),
                      **oci_env("DESTINATION", reference, base=registry_plain.base),
                      "MODEL_SYNC_MODEL_UPLOAD_INTENT": "create_model",
                      "MODEL_SYNC_METADATA_CONFIGMAP_PATH": str(configmap)}, tmp_path)  # fmt: skip
    assert pushed.result()["uri"] == f"oci://{reference}"

    env = {**registry_at(registry_standin), "MODEL_SYNC_SOURCE_OCI_ENABLE_TLS_VERIFY": "false"}
    run = serve(f"model-registry://{name}/1.0.0", tmp_path / "mnt" / "models", tmp_path, env)
    assert run.result()["uri"] == f"oci://{reference}"
    assert read_dir(tmp_path / "mnt" / "models") == MODEL
    kserve_download(f"oci://{reference}", tmp_path / "kserve", OCI_INSECURE_ENV)
    assert read_dir(tmp_path / "kserve") == read_dir(tmp_path / "mnt" / "models")
    # Only reads: no registry write in initializer mode.
    assert not [r for r in registry_standin.requests[-20:] if r.method != "GET" and name in r.path]

    # A restarted init container finds the files in place and sends nothing again.
    again = serve(f"model-registry://{name}/1.0.0", tmp_path / "mnt" / "models", tmp_path, env)
    assert again.result()["files"] == len(MODEL) and "already" in again.stderr.lower()


def test_an_s3_artifact_with_kserves_env_the_newest_version_and_a_host_in_the_uri(
    registry_standin: ModelRegistryStandin, seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    bucket = fresh_bucket(seaweedfs_s3, "serve")
    put_tree(seaweedfs_s3, bucket, "models/old/", {"old.txt": b"old"})
    put_tree(seaweedfs_s3, bucket, "models/new/", MODEL)
    put_tree(seaweedfs_s3, bucket, "models/new-v2/", {"sibling.txt": b"not this model"})
    name = f"s3-{uuid.uuid4().hex[:6]}"
    register(registry_standin, name, {
        "1": [{"uri": f"s3://{bucket}/models/old/", "state": "LIVE"}],
        "2": [{"uri": f"s3://{bucket}/models/new/", "state": "LIVE"}],
    })  # fmt: skip
    # No version: the newest. The registry's host in the uri; the base url points nowhere.
    env = {**kserve_s3_env(seaweedfs_s3), "MODEL_REGISTRY_BASE_URL": "127.0.0.1:9", "MODEL_REGISTRY_SCHEME": "http"}
    run = serve(f"model-registry://127.0.0.1:{registry_standin.port}/{name}", tmp_path / "out", tmp_path, env)
    assert run.result()["uri"] == f"s3://{bucket}/models/new/"
    assert read_dir(tmp_path / "out") == MODEL
    kserve_download(f"s3://{bucket}/models/new/", tmp_path / "kserve", kserve_s3_env(seaweedfs_s3))
    assert read_dir(tmp_path / "kserve") == MODEL
    # A direct s3:// uri, as KServe's own initializer takes it.
    direct = serve(f"s3://{bucket}/models/new/", tmp_path / "direct", tmp_path, kserve_s3_env(seaweedfs_s3))
    assert direct.code == 0 and read_dir(tmp_path / "direct") == MODEL


def test_an_hf_artifact_and_a_pending_newest_artifact_skipped(
    registry_standin: ModelRegistryStandin, http_server: HttpTestServer, tmp_path: Path
) -> None:
    name = f"hf-{uuid.uuid4().hex[:6]}"
    register(registry_standin, name, {"v1": [
        {"uri": "hf://acme/tiny", "state": "LIVE"},
        {"uri": "s3://placeholder/not-synced-yet/", "state": "PENDING"},  # newest: a sync still running
    ]})  # fmt: skip
    env = {**registry_at(registry_standin), "HF_ENDPOINT": http_server.origin}
    run = serve(f"model-registry://{name}/v1", tmp_path / "out", tmp_path, env)
    assert run.result()["uri"] == "hf://acme/tiny"
    assert read_dir(tmp_path / "out") == {**MODEL_FILES, "sub/dir/tokenizer.json": b'{"tok": 1}'}
    assert "state is PENDING" in run.stderr


def test_a_model_registered_by_kubeflows_client_state_unknown_is_served(
    registry_standin: ModelRegistryStandin, seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    """Kubeflow's ``register_model`` leaves the artifact UNKNOWN: upstream serves it, so do we."""
    bucket = fresh_bucket(seaweedfs_s3, "serve")
    put_tree(seaweedfs_s3, bucket, "m/", MODEL)
    name = f"unknown-{uuid.uuid4().hex[:6]}"
    register(registry_standin, name, {"v1": [{"uri": f"s3://{bucket}/m/", "state": "UNKNOWN"}]})
    env = {**registry_at(registry_standin), **kserve_s3_env(seaweedfs_s3)}
    assert serve(f"model-registry://{name}/v1", tmp_path / "out", tmp_path, env).code == 0
    strict = serve(f"model-registry://{name}/v1", tmp_path / "strict", tmp_path,
                   {**env, "MODEL_SYNC_SERVE_ARTIFACT_STATES": "LIVE"})  # fmt: skip
    strict.assert_one_line_failure(code=1)
    assert "has no servable model artifact" in strict.message


def test_no_servable_artifact_is_one_line_and_exit_1(registry_standin: ModelRegistryStandin, tmp_path: Path) -> None:
    name = f"pending-{uuid.uuid4().hex[:6]}"
    register(registry_standin, name, {"v1": [{"uri": "s3://b/p/", "state": "PENDING"}]})
    run = serve(f"model-registry://{name}/v1", tmp_path / "out", tmp_path, registry_at(registry_standin))
    run.assert_one_line_failure(code=1)
    assert f"model {name!r} version 'v1' has no servable model artifact" in run.message
    assert "found: PENDING" in run.message
    missing = serve("model-registry://no-such-model/v1", tmp_path / "out", tmp_path, registry_at(registry_standin))
    missing.assert_one_line_failure(code=1)
    assert "no registered model named 'no-such-model'" in missing.message


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("gs://bucket/model", "model-sync serves"),
        ("model-registry://", "expected model-registry://"),
        ("model-registry://m/v1?namespace=not.a.namespace", "namespace"),
        ("s3:///no-bucket", "expected s3://bucket/prefix"),
    ],
)
def test_a_bad_uri_exits_2_before_any_connection(
    registry_standin: ModelRegistryStandin, tmp_path: Path, uri: str, needle: str
) -> None:
    before = len(registry_standin.requests)
    run = serve(uri, tmp_path / "out", tmp_path, registry_at(registry_standin))
    run.assert_one_line_failure(code=2)
    assert needle in run.message and "storage uri" in run.message
    assert len(registry_standin.requests) == before and not (tmp_path / "out").exists()


def test_the_job_can_write_to_a_mounted_claim(seaweedfs_s3: S3Server, registry_standin: ModelRegistryStandin,
                                              tmp_path: Path) -> None:  # fmt: skip
    """The same directory destination in a Job: ``pvc://<claim>/<path>`` recorded for KServe."""
    from tests.integration.jobs import s3_env, update_artifact_env

    bucket = fresh_bucket(seaweedfs_s3, "serve")
    put_tree(seaweedfs_s3, bucket, "m/", MODEL)
    mount = tmp_path / "claim"
    env = {**FAST, **registry_env(registry_standin.url), **update_artifact_env(registry_standin.api_url),
           **s3_env("SOURCE", seaweedfs_s3, bucket, "m/"), "MODEL_SYNC_DESTINATION_TYPE": "pvc",
           "MODEL_SYNC_DESTINATION_PATH": str(mount / "models" / "m"), "MODEL_SYNC_DESTINATION_PVC_CLAIM": "models",
           "MODEL_SYNC_DESTINATION_PVC_MOUNT_PATH": str(mount)}  # fmt: skip
    run = run_job(env, tmp_path)
    assert run.result()["uri"] == "pvc://models/models/m"
    assert read_dir(mount / "models" / "m") == MODEL
