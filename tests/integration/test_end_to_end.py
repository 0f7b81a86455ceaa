"""Every route a user runs, with every intent, as a Kubernetes Job runs it: ``python -m job`` with env vars.

Real servers only: the Model Registry stand-in, SeaweedFS, CNCF distribution (plain and htpasswd+TLS), and the
local http server (files, archives, a Hub emulation). After each run: exit 0, the upstream termination message,
the artifact LIVE at the recorded uri, and the destination holding exactly the model, byte for byte (OCI images
are pulled back with skopeo and unpacked).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.http import MODEL_FILES, HttpTestServer
from tests.servers.registry import Registry, skopeo_pull, unpack_rootfs
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

REPO = Path(__file__).parents[2]
MODEL = {
    "config.json": b'{"top": true}',
    "sub/config.json": b'{"nested": true}',
    "sub/deeper/empty.txt": b"",
    "weights.safetensors": os.urandom(6 * 1024 * 1024 + 11),  # above the 5 MiB part size set below
}
HUB_MODEL = {**MODEL_FILES, "sub/dir/tokenizer.json": b'{"tok": 1}'}
_names = itertools.count()


@dataclass
class Stack:
    registry: ModelRegistryStandin
    s3: S3Server
    oci: Registry
    oci_tls: Registry
    http: HttpTestServer
    tmp: Path


@pytest.fixture
def stack(
    registry_standin: ModelRegistryStandin,
    seaweedfs_s3: S3Server,
    registry_plain: Registry,
    registry_htpasswd: Registry,
    http_server: HttpTestServer,
    tmp_path: Path,
) -> Stack:
    return Stack(registry_standin, seaweedfs_s3, registry_plain, registry_htpasswd, http_server, tmp_path)


def run_job(env: dict[str, str], tmp: Path) -> tuple[int, str, str]:
    termination = tmp / f"termination-{uuid.uuid4().hex[:6]}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_SYNC_", "AWS_", "HF_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "job"],
        env={**clean, "TERMINATION_MESSAGE_PATH": str(termination), **env},
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    return proc.returncode, termination.read_text() if termination.exists() else "", proc.stderr


def s3_env(side: str, s3: S3Server) -> dict[str, str]:
    return {
        f"MODEL_SYNC_{side}_AWS_ENDPOINT": s3.endpoint_url,
        f"MODEL_SYNC_{side}_AWS_REGION": "us-east-1",
        f"MODEL_SYNC_{side}_AWS_ACCESS_KEY_ID": s3.access_key,
        f"MODEL_SYNC_{side}_AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }


def oci_env(side: str, registry: Registry) -> dict[str, str]:
    env = {f"MODEL_SYNC_{side}_OCI_ENABLE_TLS_VERIFY": "true" if registry.tls else "false"}
    if registry.username:
        env[f"MODEL_SYNC_{side}_OCI_USERNAME"] = registry.username
        env[f"MODEL_SYNC_{side}_OCI_PASSWORD"] = registry.password or ""
    if registry.ca_cert:
        env[f"MODEL_SYNC_{side}_OCI_CA_BUNDLE"] = str(registry.ca_cert)
    return env


# --- sources: each returns (env, the model it holds) ---------------------------------------------


def pvc_source(stack: Stack) -> tuple[dict[str, str], dict[str, bytes]]:
    root = stack.tmp / "pvc-model"
    for name, data in MODEL.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return {"MODEL_SYNC_SOURCE_TYPE": "pvc", "MODEL_SYNC_SOURCE_PATH": str(root)}, MODEL


def s3_source(stack: Stack) -> tuple[dict[str, str], dict[str, bytes]]:
    bucket = fresh_bucket(stack.s3, "src")
    client = stack.s3.client()
    for name, data in MODEL.items():
        client.put_object(Bucket=bucket, Key=f"models/m/{name}", Body=data)
    env = {
        "MODEL_SYNC_SOURCE_TYPE": "s3",
        "MODEL_SYNC_SOURCE_AWS_BUCKET": bucket,
        "MODEL_SYNC_SOURCE_AWS_KEY": "models/m/",
    }
    return {**env, **s3_env("SOURCE", stack.s3)}, MODEL


def oci_source(stack: Stack) -> tuple[dict[str, str], dict[str, bytes]]:
    """A modelcar pushed by model-sync itself (pvc -> oci), then read back as the source."""
    env, model = pvc_source(stack)
    ref = f"{stack.oci.host}/sources/m{next(_names)}:v1"
    code, message, stderr = run_job(
        {**env, **registry_env(stack), **update_artifact(stack), "MODEL_SYNC_DESTINATION_TYPE": "oci",
         "MODEL_SYNC_DESTINATION_OCI_URI": ref, "MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE": stack.oci.base,
         **oci_env("DESTINATION", stack.oci)},
        stack.tmp,
    )  # fmt: skip
    assert code == 0, stderr[-2000:]
    return {"MODEL_SYNC_SOURCE_TYPE": "oci", "MODEL_SYNC_SOURCE_OCI_URI": ref, **oci_env("SOURCE", stack.oci)}, model


def uri_targz_source(stack: Stack) -> tuple[dict[str, str], dict[str, bytes]]:
    url = stack.http.url("/files/archives/model.tar.gz")
    return {"MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI": url}, MODEL_FILES


def hf_source(stack: Stack) -> tuple[dict[str, str], dict[str, bytes]]:
    return {
        "MODEL_SYNC_SOURCE_TYPE": "uri",
        "MODEL_SYNC_SOURCE_URI": "hf://acme/tiny",
        "HF_ENDPOINT": stack.http.origin,
    }, HUB_MODEL


SOURCES: dict[str, Callable[[Stack], tuple[dict[str, str], dict[str, bytes]]]] = {
    "pvc": pvc_source, "s3": s3_source, "oci": oci_source, "uri-tar.gz": uri_targz_source, "hf": hf_source,
}  # fmt: skip


# --- destinations: env, and a reader of what ended up there --------------------------------------


def s3_destination(stack: Stack) -> tuple[dict[str, str], Callable[[str], dict[str, bytes]]]:
    bucket = fresh_bucket(stack.s3, "dst")
    env = {"MODEL_SYNC_DESTINATION_TYPE": "s3", "MODEL_SYNC_DESTINATION_AWS_BUCKET": bucket,
           "MODEL_SYNC_DESTINATION_AWS_KEY": "published/m", **s3_env("DESTINATION", stack.s3)}  # fmt: skip

    def read(uri: str) -> dict[str, bytes]:
        assert uri == f"s3://{bucket}/published/m/"
        client = stack.s3.client()
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        return {k.removeprefix("published/m/"): client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}

    return env, read


def oci_destination(registry_of: Callable[[Stack], Registry]) -> Callable[[Stack], tuple[dict[str, str], Any]]:
    def make(stack: Stack) -> tuple[dict[str, str], Callable[[str], dict[str, bytes]]]:
        registry = registry_of(stack)
        ref = f"{registry.host}/models/m{next(_names)}:1.0"
        env = {"MODEL_SYNC_DESTINATION_TYPE": "oci", "MODEL_SYNC_DESTINATION_OCI_URI": ref,
               "MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE": registry.base, **oci_env("DESTINATION", registry)}  # fmt: skip

        def read(uri: str) -> dict[str, bytes]:
            assert uri == f"oci://{ref}"
            rootfs = unpack_rootfs(skopeo_pull(registry, ref, stack.tmp / f"pulled-{uuid.uuid4().hex[:6]}"))
            assert "bin/busybox" in rootfs  # the base image is there
            return {
                p.removeprefix("models/"): e.data
                for p, e in rootfs.items()
                if p.startswith("models/") and e.kind == "file"
            }

        return env, read

    return make


DESTINATIONS = {
    "s3": s3_destination,
    "oci": oci_destination(lambda s: s.oci),
    "oci-tls": oci_destination(lambda s: s.oci_tls),  # another registry: https + login
}


# --- intents: registry set-up before the run, and the ids to check after --------------------------


def registry_env(stack: Stack) -> dict[str, str]:
    return {"MODEL_SYNC_REGISTRY_SERVER_ADDRESS": stack.registry.url, "MODEL_SYNC_PART_SIZE_MIB": "5",
            "MODEL_SYNC_JOB_ID": f"job-{uuid.uuid4().hex[:8]}"}  # fmt: skip


def update_artifact(stack: Stack) -> dict[str, str]:
    api = httpx.Client(base_url=stack.registry.api_url)
    rm = api.post("/registered_models", json={"name": f"ua-{uuid.uuid4().hex[:8]}"}).json()
    mv = api.post(f"/registered_models/{rm['id']}/versions", json={"name": "v1", "registeredModelId": rm["id"]}).json()
    ma = api.post(f"/model_versions/{mv['id']}/artifacts",
                  json={"artifactType": "model-artifact", "name": "a", "state": "UNKNOWN"}).json()  # fmt: skip
    return {"MODEL_SYNC_MODEL_UPLOAD_INTENT": "update_artifact", "MODEL_SYNC_MODEL_ARTIFACT_ID": ma["id"]}


def metadata(stack: Stack, **files: str) -> str:
    folder = stack.tmp / f"metadata-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    for key, value in files.items():
        (folder / key).write_text(value)
    return str(folder)


def create_model(stack: Stack) -> dict[str, str]:
    path = metadata(stack, **{"RegisteredModel.name": f"cm-{uuid.uuid4().hex[:8]}", "ModelVersion.name": "1.0",
                              "ModelArtifact.model_format_name": "onnx"})  # fmt: skip
    return {"MODEL_SYNC_MODEL_UPLOAD_INTENT": "create_model", "MODEL_SYNC_METADATA_CONFIGMAP_PATH": path}


def create_version(stack: Stack) -> dict[str, str]:
    rm = httpx.post(stack.registry.api_url + "/registered_models", json={"name": f"cv-{uuid.uuid4().hex[:8]}"}).json()
    path = metadata(stack, **{"ModelVersion.name": "2.0", "ModelVersion.custom_properties": '{"epochs": 3}'})
    return {"MODEL_SYNC_MODEL_UPLOAD_INTENT": "create_version", "MODEL_SYNC_MODEL_ID": rm["id"],
            "MODEL_SYNC_METADATA_CONFIGMAP_PATH": path}  # fmt: skip


INTENTS = {"update_artifact": update_artifact, "create_model": create_model, "create_version": create_version}

ROUTES = [
    ("pvc", "s3"), ("s3", "s3"),  # the engine issue
    ("s3", "oci"), ("pvc", "oci"), ("oci", "s3"), ("oci", "oci-tls"),  # the OCI issue (oci->oci: another registry)
    ("uri-tar.gz", "s3"), ("uri-tar.gz", "oci"), ("hf", "oci"),  # the URI issue
]  # fmt: skip


@pytest.mark.parametrize("intent", list(INTENTS))
@pytest.mark.parametrize(("source", "destination"), ROUTES)
def test_route_with_intent(stack: Stack, source: str, destination: str, intent: str) -> None:
    source_env, model = SOURCES[source](stack)
    destination_env, read_back = DESTINATIONS[destination](stack)
    env = {**registry_env(stack), **INTENTS[intent](stack), **source_env, **destination_env}
    code, message, stderr = run_job(env, stack.tmp)
    assert code == 0, stderr[-3000:]
    result = json.loads(message)
    assert result["intent"] == intent
    artifact = httpx.get(f"{stack.registry.api_url}/model_artifacts/{result['ModelArtifact']['id']}").json()
    assert artifact["state"] == "LIVE"
    assert artifact["uri"] == result["uri"]
    if destination.startswith("oci"):
        assert result["digest"].startswith("sha256:")
        assert artifact["customProperties"]["model_sync.digest"]["string_value"] == result["digest"]
    if intent != "update_artifact":
        version = httpx.get(f"{stack.registry.api_url}/model_versions/{result['ModelVersion']['id']}").json()
        assert version["state"] == "LIVE"
    assert read_back(result["uri"]) == model
    summary = [line for line in stderr.splitlines() if "job.pipeline: done: " in line]
    assert len(summary) == 1 and "files, " in summary[0] and "MB/s" in summary[0] and result["uri"] in summary[0]
    for secret in (stack.s3.secret_key, stack.oci_tls.password or "-"):
        assert secret not in stderr + message
