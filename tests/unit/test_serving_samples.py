"""The serving samples (samples/serving/): KServe ClusterStorageContainers running model-sync as the storage
initializer, and an InferenceService using one.

Checked as the Job samples are: the container is a valid Kubernetes container (inside a Pod, strict
schema, two Kubernetes versions), every env var is one model-sync or upstream's initializer reads, the
ClusterStorageContainer has the fields KServe's CRD defines, and the InferenceService's storageUri is
planned by model-sync's initializer mode exactly as KServe would call it (``<storageUri> /mnt/models``,
with the container's env), which checks everything short of the network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import job.settings.registry
from job.serving.initializer import plan_serving
from job.settings.chain import Settings, load_settings
from job.settings.names import env_name

REPO = Path(__file__).parents[2]
SERVING = REPO / "samples" / "serving"
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# What upstream's initializer reads (kubeflow/hub cmd/csi) and KServe's S3 env, besides model-sync's settings.
UPSTREAM_ENV = {"MODEL_REGISTRY_BASE_URL", "MODEL_REGISTRY_SCHEME", "MODEL_REGISTRY_SERVICE_NAME",
                "MODEL_REGISTRY_CLUSTER_DOMAIN"}  # fmt: skip
KNOWN_ENV = {env_name(f) for f in Settings.model_fields} | UPSTREAM_ENV
# The fields of a ClusterStorageContainer, from KServe's CRD (serving.kserve.io/v1alpha1).
CSC_TOP = {"apiVersion", "kind", "metadata", "spec", "disabled"}
CSC_SPEC = {"container", "supportedUriFormats", "supportsMultiModelDownload", "workloadType"}


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((SERVING / name).read_text(encoding="utf-8")) if d]


def storage_containers() -> list[dict[str, Any]]:
    return [d for p in sorted(SERVING.glob("*.yaml")) for d in docs(p.name) if d["kind"] == "ClusterStorageContainer"]


def matches(formats: list[dict[str, str]], uri: str) -> bool:
    """KServe's rule: a prefix, or a regex that matches the uri."""
    return any(uri.startswith(f["prefix"]) if "prefix" in f else re.match(f["regex"], uri) for f in formats)


def test_the_samples_are_there_and_described() -> None:
    for path in SERVING.glob("*.yaml"):
        if any(d["kind"] == "ClusterStorageContainer" for d in docs(path.name)):
            assert "measured peak RSS: see README performance" in path.read_text(encoding="utf-8")
    assert {p.name for p in SERVING.glob("*.yaml")} == {
        "model-registry-storage-initializer.yaml",
        "model-sync-direct-storage.yaml",
        "inferenceservice-model-registry.yaml",
    }
    readme = (REPO / "samples" / "README.md").read_text(encoding="utf-8")
    for path in SERVING.glob("*.yaml"):
        assert f"samples/serving/{path.name}" in readme


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_storage_containers_have_kserves_fields_and_a_valid_container(version: str) -> None:
    for csc in storage_containers():
        assert csc["apiVersion"] == "serving.kserve.io/v1alpha1"
        assert set(csc) <= CSC_TOP and set(csc["spec"]) <= CSC_SPEC
        assert csc["spec"]["supportedUriFormats"] and all(
            set(f) in ({"prefix"}, {"regex"}) for f in csc["spec"]["supportedUriFormats"]
        )
        container = csc["spec"]["container"]
        assert container["image"] == "ghcr.io/example/model-sync:0.1.0" and "args" not in container
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [container]}}
        kubernetes_validate.validate(pod, version, strict=True)
        for entry in container.get("env", []):
            assert entry["name"] in KNOWN_ENV, f"unknown env var {entry['name']}"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_inference_service_is_served_by_the_model_registry_initializer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [isvc] = docs("inferenceservice-model-registry.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    [csc] = [
        c for c in storage_containers() if not c.get("disabled") and matches(c["spec"]["supportedUriFormats"], uri)
    ]
    assert csc["metadata"]["name"] == "model-sync-model-registry"
    # The init container as KServe starts it: the container's env, the pod's service-account token.
    for name in [n for n in list(os.environ) if n.startswith(("MODEL_SYNC_", "MODEL_REGISTRY_", "AWS_"))]:
        monkeypatch.delenv(name)
    env = {e["name"]: e["value"] for e in csc["spec"]["container"]["env"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    token = tmp_path / "token"
    token.write_text("service-account-token")
    monkeypatch.setattr(job.settings.registry, "DEFAULT_SA_TOKEN_PATH", token)
    plan = plan_serving(load_settings([]), uri, "/mnt/models", env)
    assert plan.registry is not None and plan.registry_uri is not None
    assert plan.registry.base_url == "http://model-registry-service.kubeflow.svc.cluster.local:8080"
    assert plan.registry.token is not None and plan.registry.token.get_secret_value() == "service-account-token"
    assert plan.registry_uri.parts == ("sentiment", "1.0.0")


def test_the_direct_storage_sample_plans_kserves_s3_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [csc] = [c for c in storage_containers() if c["metadata"]["name"] == "model-sync-direct-storage"]
    assert csc["disabled"] is True  # opt-in
    formats = csc["spec"]["supportedUriFormats"]
    assert matches(formats, "s3://models/sentiment/1.0.0/") and matches(formats, "https://h/m.tar.gz")
    assert not matches(formats, "oci://quay.io/org/m:1") and not matches(formats, "model-registry://m/1")
    kserve_env = {"AWS_ENDPOINT_URL": "http://minio.minio:9000", "AWS_ACCESS_KEY_ID": "k",
                  "AWS_SECRET_ACCESS_KEY": "s", "S3_VERIFY_SSL": "0", "AWS_DEFAULT_REGION": "eu-west-1"}  # fmt: skip
    plan = plan_serving(load_settings([]), "s3://models/sentiment/1.0.0/", str(tmp_path / "models"), kserve_env)
    assert plan.config is not None
    source = plan.config.source
    assert (source.bucket, source.key, source.endpoint, source.region, source.verify) == (  # type: ignore[union-attr]
        "models", "sentiment/1.0.0/", "http://minio.minio:9000", "eu-west-1", False
    )  # fmt: skip
