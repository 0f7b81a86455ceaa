"""samples/: valid Kubernetes objects, and Jobs that model-sync's own settings accept.

Each Job's container env and args go through ``load_settings`` -> ``build_job_config`` ->
``plan_job``, with what the pod would have mounted laid out under tmp_path the way the kubelet
does it: a Secret or ConfigMap volume is a directory with one file per key, a projected
service-account token is a file, a PVC is a directory holding the model. Paths in env values and
args that point into a mount are rewritten to those directories. A sample our settings reject
fails here rather than in someone's cluster.

The last tests do the same for manifests written the way an existing user of the upstream
async-upload job writes them (its README's names, value styles and ConfigMap): they must run
unchanged.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import job.config
import job.settings.registry
from job.config import JobConfig, OciLocation, PvcLocation, S3Location, UriLocation, build_job_config
from job.errors import ConfigError
from job.pipeline import plan_job
from job.settings.chain import Settings, load_settings
from job.settings.names import arg_name, env_name

REPO = Path(__file__).parents[2]
SAMPLES_DIR = REPO / "samples"
SAMPLES = sorted(SAMPLES_DIR.glob("*.yaml"))

IMAGE = "ghcr.io/example/model-sync:0.1.0"
REGISTRY_URL = "https://model-registry-service.kubeflow.svc.cluster.local:8443"
FAKE_UID = "0b6a4d39-9a53-4c1e-8f2f-3c4d5e6f7a8b"
FAKE_SA_TOKEN = "fake-service-account-token"
FIELD_REFS = {"metadata.labels['batch.kubernetes.io/controller-uid']": FAKE_UID}

# Oldest Kubernetes the samples claim (backoffLimitPerIndex is beta from 1.29), and the newest
# schema kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

# Backends still being built: plan_job refuses them with "<side>-type <kind> is not available in
# this version of model-sync" (after the metadata and intent checks have passed), which a sample
# using one may hit. Every backend the samples use exists now, so the set is empty: each sample is
# planned in full. An entry must name a backend module that really is missing (checked below).
BEING_BUILT: frozenset[tuple[str, str]] = frozenset()
_NOT_AVAILABLE = re.compile(r"(source|destination)-type (\w+) is not available in this version of model-sync")

KNOWN_ENV = {env_name(f) for f in Settings.model_fields}
KNOWN_ARGS = {arg_name(f) for f in Settings.model_fields}
# Env vars a sample may set that are not settings: read by the config layer itself.
OTHER_ENV = {"HF_TOKEN", "HF_ENDPOINT", "MODEL_REGISTRY_TOKEN_PATH"}

# What each sample must come out as, attribute paths of JobConfig -> value.
EXPECTED: dict[str, dict[str, object]] = {
    "s3-to-oci-update-artifact.yaml": {
        "intent": "update_artifact",
        "model_artifact_id": "7",
        "source.bucket": "models",  # from the Secret
        "source.key": "sentiment/1.0.0/",
        "source.endpoint": "https://minio.minio.svc.cluster.local:9000",
        "destination.reference": "quay.io/example/sentiment-modelcar:1.0.0",
        "destination.username": "example+model_sync",  # from the .dockerconfigjson
        "destination.base_image": "docker.io/library/busybox:1.36",
    },
    "uri-to-oci-create-model.yaml": {
        "intent": "create_model",
        "source.uri": "https://models.example.com/vision/resnet50-2.1.0.tar.gz",  # from the Secret's URI file
        "destination.reference": "quay.io/example/resnet50-modelcar:2.1.0",
        "destination.username": "example+model_sync",
        "registry.author": "model-sync",
    },
    "hf-to-oci-create-version.yaml": {
        "intent": "create_version",
        "model_id": "3",
        "source.uri": "hf://sentence-transformers/all-MiniLM-L6-v2",
        "include": ("*.safetensors", "*.json", "*.txt"),
        "exclude": ("onnx/*", "openvino/*"),
        "destination.reference": "quay.io/example/minilm-modelcar:v5",
    },
    "oci-to-s3.yaml": {
        "intent": "update_artifact",
        "model_artifact_id": "12",
        "source.reference": "registry.example.com/models/sentiment-modelcar:1.0.0",
        "source.username": "model-sync",
        "source.platform": "linux/amd64",
        "destination.bucket": "models-export",
        "destination.key": "sentiment/1.0.0/",
        "destination.region": "eu-west-1",  # AWS_DEFAULT_REGION in the Secret
    },
    "pvc-to-oci.yaml": {
        "intent": "create_version",
        "model_id": "5",
        "exclude": ("checkpoints/*", "*.tmp", ".ipynb_checkpoints/*"),
        "destination.reference": "quay.io/example/fraud-detector-modelcar:run-42",
    },
    "s3-to-s3.yaml": {
        "intent": "create_model",
        "source.bucket": "staging-models",  # AWS_S3_BUCKET, the older name
        "source.endpoint": "http://minio.minio.svc.cluster.local:9000",
        "source.key": "churn/3.0.0/",
        "destination.bucket": "prod-models",
        "destination.region": "eu-central-1",
        "parallel_files": 4,
        "parallel_parts": 4,
        "part_memory": 64 * 1024 * 1024,
    },
    "indexed-job-many-models.yaml": {"intent": "update_artifact", "source.bucket": "models"},
}
SOURCE_TYPES = {
    "s3-to-oci-update-artifact.yaml": (S3Location, OciLocation),
    "uri-to-oci-create-model.yaml": (UriLocation, OciLocation),
    "hf-to-oci-create-version.yaml": (UriLocation, OciLocation),
    "oci-to-s3.yaml": (OciLocation, S3Location),
    "pvc-to-oci.yaml": (PvcLocation, OciLocation),
    "s3-to-s3.yaml": (S3Location, S3Location),
    "indexed-job-many-models.yaml": (S3Location, OciLocation),
}
INDEXED = "indexed-job-many-models.yaml"
INDEXED_EXPECTED = {
    0: {"source.key": "vision/resnet50/2.1.0/", "model_artifact_id": "21"},
    1: {"source.key": "vision/efficientnet-b0/1.3.0/", "model_artifact_id": "22"},
    2: {"source.key": "vision/vit-base/4.0.0/", "model_artifact_id": "23", "include": ("*.safetensors", "*.json")},
}


# ---------------------------------------------------------------------------------------------
# Reading manifests and faking what a pod would see


def load_docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def sample_docs(name: str) -> list[dict[str, Any]]:
    return load_docs((SAMPLES_DIR / name).read_text(encoding="utf-8"))


def the_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    jobs = [doc for doc in docs if doc["kind"] == "Job"]
    assert len(jobs) == 1, "one Job per sample file"
    return jobs[0]


def the_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = the_job(docs)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def secret_files(secret: dict[str, Any]) -> dict[str, bytes]:
    """A Secret's keys as the kubelet writes them: ``data`` base64-decoded, then ``stringData``."""
    files = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
    files.update({key: value.encode() for key, value in (secret.get("stringData") or {}).items()})
    return files


def _pick(files: dict[str, bytes], items: list[dict[str, str]] | None) -> dict[str, bytes]:
    if not items:
        return files
    return {item["path"]: files[item["key"]] for item in items}


def _lookup(objects: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    assert (kind, name) in objects, f"the Job uses {kind} {name!r}, which is not in the same file"
    return objects[kind, name]


def volume_files(volume: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, bytes]:
    """The files a volume shows in the container (relative path -> content)."""
    if "secret" in volume:
        secret = _lookup(objects, "Secret", volume["secret"]["secretName"])
        return _pick(secret_files(secret), volume["secret"].get("items"))
    if "configMap" in volume:
        config_map = _lookup(objects, "ConfigMap", volume["configMap"]["name"])
        data = {key: value.encode() for key, value in (config_map.get("data") or {}).items()}
        return _pick(data, volume["configMap"].get("items"))
    if "projected" in volume:
        files: dict[str, bytes] = {}
        for source in volume["projected"]["sources"]:
            if "serviceAccountToken" in source:
                files[source["serviceAccountToken"]["path"]] = FAKE_SA_TOKEN.encode()
            else:
                files.update(volume_files(source, objects))
        return files
    if "persistentVolumeClaim" in volume:
        _lookup(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        return {}  # the model inside is made once the paths pointing into it are known
    if "emptyDir" in volume:
        return {}
    raise AssertionError(f"volume type not faked by this test: {volume}")


@dataclass
class FakePod:
    """What the container would see: env, args and command, with its mounts under a temp dir."""

    env: dict[str, str]
    args: list[str]
    command: list[str]
    mounts: dict[str, Path] = field(default_factory=dict)
    """mountPath -> the directory standing in for it."""
    service_account_token: Path | None = None
    """Where the automounted token would be (None: automountServiceAccountToken is false)."""

    def local(self, value: str) -> str:
        """``value`` with a leading mountPath replaced by its stand-in directory."""
        for mount_path in sorted(self.mounts, key=len, reverse=True):
            prefix = mount_path.rstrip("/")
            if value == prefix or value.startswith(prefix + "/"):
                return str(self.mounts[mount_path]) + value[len(prefix) :]
        return value

    def local_arg(self, arg: str) -> str:
        if arg.startswith("--") and "=" in arg:
            flag, _, value = arg.partition("=")
            return f"{flag}={self.local(value)}"
        return self.local(arg)

    def local_script(self, script: str) -> str:
        """Every whole mountPath in a shell script replaced, in one pass (the stand-ins live under /tmp too)."""
        if not self.mounts:
            return script
        paths = "|".join(re.escape(p.rstrip("/")) for p in sorted(self.mounts, key=len, reverse=True))
        by_path = {p.rstrip("/"): str(d) for p, d in self.mounts.items()}
        return re.sub(rf"(?<![\w./-])({paths})(?![\w.-])", lambda m: by_path[m[1]], script)


def env_value(entry: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]]) -> str | None:
    """One ``env`` entry's value as the kubelet resolves it (None: an optional key that is absent)."""
    if "value" in entry:
        return str(entry["value"])
    ref = entry["valueFrom"]
    if "fieldRef" in ref:
        path = ref["fieldRef"]["fieldPath"]
        assert path in FIELD_REFS, f"{entry['name']}: fieldRef {path} not faked by this test"
        return FIELD_REFS[path]
    kind, key_ref = ("Secret", ref["secretKeyRef"]) if "secretKeyRef" in ref else ("ConfigMap", ref["configMapKeyRef"])
    obj = _lookup(objects, kind, key_ref["name"])
    files = secret_files(obj) if kind == "Secret" else {k: v.encode() for k, v in obj.get("data", {}).items()}
    if key_ref["key"] not in files:
        assert key_ref.get("optional"), f"{entry['name']}: {kind} {key_ref['name']} has no key {key_ref['key']!r}"
        return None
    return files[key_ref["key"]].decode()


def fake_pod(docs: list[dict[str, Any]], root: Path) -> FakePod:
    """Lay out the Job's mounts under ``root`` and resolve its env, args and command."""
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    pod_spec = the_job(docs)["spec"]["template"]["spec"]
    container = the_container(docs)
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    pod = FakePod(env={}, args=list(container.get("args", [])), command=list(container.get("command", [])))
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in volumes, f"volumeMount {mount['name']} has no volume"
        where = root / "mounts" / mount["name"]
        where.mkdir(parents=True)
        for relative, content in volume_files(volumes[mount["name"]], objects).items():
            (where / relative).parent.mkdir(parents=True, exist_ok=True)
            (where / relative).write_bytes(content)
        pod.mounts[mount["mountPath"]] = where
    for entry in container.get("env", []):
        value = env_value(entry, objects)
        if value is not None:
            pod.env[entry["name"]] = pod.local(value)
    pod.args = [pod.local_arg(arg) for arg in pod.args]
    pod.command = [pod.local_script(part) for part in pod.command]
    # The model on each PVC: a file in every directory an env value or arg points at.
    pvc_mounts = [
        m["mountPath"] for m in container.get("volumeMounts", []) if "persistentVolumeClaim" in volumes[m["name"]]
    ]
    for value in [*pod.env.values(), *(a.partition("=")[2] or a for a in pod.args)]:
        if any(value.startswith(str(pod.mounts[m])) for m in pvc_mounts):
            Path(value).mkdir(parents=True, exist_ok=True)
            (Path(value) / "model.safetensors").write_bytes(b"\0" * 16)
    if pod_spec.get("automountServiceAccountToken", True):
        pod.service_account_token = root / "serviceaccount" / "token"
        pod.service_account_token.parent.mkdir(parents=True)
        pod.service_account_token.write_text(FAKE_SA_TOKEN)
    return pod


def plan(pod: FakePod, monkeypatch: pytest.MonkeyPatch, root: Path) -> JobConfig:
    """Run the pod's env and args through the settings and plan_job; the typed config back.

    ConfigError propagates, except "not available in this version" for a backend in BEING_BUILT.
    """
    for name in list(os.environ):
        if name.startswith(("MODEL_SYNC_", "AWS_", "HF_", "HUGGING_FACE_")) or name in (
            "TERMINATION_MESSAGE_PATH",
            "KF_PIPELINES_SA_TOKEN_PATH",
            "MODEL_REGISTRY_TOKEN_PATH",
        ):
            monkeypatch.delenv(name)
    for name, value in pod.env.items():
        monkeypatch.setenv(name, value)
    # The kubelet's automounted token, and no stray /etc/model-metadata of the machine running the test.
    monkeypatch.setattr(job.settings.registry, "DEFAULT_SA_TOKEN_PATH", pod.service_account_token or root / "no-token")
    monkeypatch.setattr(job.config, "DEFAULT_METADATA_PATH", root / "no-metadata")
    config = build_job_config(load_settings(pod.args))
    try:
        plan_job(config)
    except ConfigError as exc:
        match = _NOT_AVAILABLE.fullmatch(str(exc))
        if not match or (match[1], match[2]) not in BEING_BUILT:
            raise
    return config


def assert_config(config: JobConfig, expected: dict[str, object]) -> None:
    for path, value in expected.items():
        assert attrgetter(path)(config) == value, path


def run_wrapper(pod: FakePod, index: int, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the Indexed Job's sh wrapper as the container would, with a fake model-sync that prints its env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "model-sync"
    dump = 'import json, os, sys; print(json.dumps({"argv": sys.argv[1:], "env": dict(os.environ)}))'
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c '{dump}' \"$@\"\n")
    fake.chmod(0o755)
    assert pod.command[:2] == ["/bin/sh", "-c"]
    env = {**pod.env, "JOB_COMPLETION_INDEX": str(index), "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"}
    return subprocess.run(["/bin/sh", "-c", pod.command[2]], env=env, capture_output=True, text=True, timeout=30)


# ---------------------------------------------------------------------------------------------
# (a) Valid Kubernetes objects


def test_being_built_lists_only_missing_backends() -> None:
    for side, kind in BEING_BUILT:
        module = f"job.{'sources' if side == 'source' else 'destinations'}.{kind}"
        assert (
            importlib.util.find_spec(module) is None
        ), f"{module} exists: remove ({side!r}, {kind!r}) from BEING_BUILT"


def test_every_sample_is_there_and_described() -> None:
    names = {path.name for path in SAMPLES}
    assert names == set(EXPECTED)
    readme = (SAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    for name in names:
        assert f"samples/{name}" in readme, f"samples/README.md does not describe {name}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes(path: Path, version: str) -> None:
    docs = load_docs(path.read_text(encoding="utf-8"))
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


# ---------------------------------------------------------------------------------------------
# The conventions every Job follows


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_job_conventions(path: Path) -> None:
    docs = load_docs(path.read_text(encoding="utf-8"))
    job_spec = the_job(docs)["spec"]
    pod_spec = job_spec["template"]["spec"]
    container = the_container(docs)

    assert pod_spec["restartPolicy"] == "Never"
    if job_spec.get("completionMode") == "Indexed":
        assert job_spec["backoffLimitPerIndex"] >= 1
        failing = "FailIndex"
    else:
        assert job_spec["backoffLimit"] == 3
        failing = "FailJob"
    # A configuration error (exit 2) is not retried; a disruption is not counted.
    rules = job_spec["podFailurePolicy"]["rules"]
    assert {
        "action": failing,
        "onExitCodes": {"containerName": container["name"], "operator": "In", "values": [2]},
    } in rules
    assert any(
        rule["action"] == "Ignore" and rule["onPodConditions"][0]["type"] == "DisruptionTarget" for rule in rules
    )

    assert container["image"] == IMAGE
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container.get("terminationMessagePath", "/dev/termination-log") == "/dev/termination-log"

    # Pod Security Standards "restricted", and the image's numeric user.
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] == 65532
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    resources = container["resources"]
    assert resources["requests"]["memory"] == "256Mi"
    assert resources["limits"]["memory"] == "512Mi"
    assert resources["requests"]["cpu"]
    assert resources["limits"]["cpu"]
    assert "measured peak RSS: see README performance" in path.read_text(encoding="utf-8")

    # The job id survives pod retries: the Job's controller uid, through the downward API.
    [job_id] = [entry for entry in container["env"] if entry["name"] == "MODEL_SYNC_JOB_ID"]
    assert job_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/controller-uid']"

    # Read-only root: /tmp is an emptyDir; credentials and metadata are mounted read-only.
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    for mount in mounts.values():
        volume = volumes[mount["name"]]
        if not {"secret", "configMap", "projected", "persistentVolumeClaim"}.isdisjoint(volume):
            assert mount.get("readOnly") is True, mount["name"]

    # Names the settings do not know are silently ignored by a process: catch typos here.
    for entry in container["env"]:
        assert entry["name"] in KNOWN_ENV | OTHER_ENV, f"unknown env var {entry['name']}"
    for arg in container.get("args", []):
        if arg.startswith("--"):
            assert arg.partition("=")[0] in KNOWN_ARGS, f"unknown arg {arg}"


# ---------------------------------------------------------------------------------------------
# (b) Each Job's settings, through our config


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {INDEXED}))
def test_sample_job_plans(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = fake_pod(sample_docs(name), tmp_path)
    config = plan(pod, monkeypatch, tmp_path)

    source_type, destination_type = SOURCE_TYPES[name]
    assert type(config.source) is source_type
    assert type(config.destination) is destination_type
    assert config.registry.base_url == REGISTRY_URL
    assert config.registry.token is not None
    assert config.registry.token.get_secret_value() == FAKE_SA_TOKEN
    assert config.job_id == FAKE_UID
    assert_config(config, EXPECTED[name])
    for location in (config.source, config.destination):
        if isinstance(location, S3Location):
            assert location.access_key_id is not None
            assert location.secret_access_key is not None
        if isinstance(location, OciLocation):
            assert location.password is not None


def test_pvc_sample_reads_the_mounted_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = fake_pod(sample_docs("pvc-to-oci.yaml"), tmp_path)
    config = plan(pod, monkeypatch, tmp_path)
    assert isinstance(config.source, PvcLocation)
    assert config.source.path == pod.mounts["/mnt/training-output"] / "fraud-detector" / "run-42"


def test_hf_sample_sends_the_token_to_the_hub_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = fake_pod(sample_docs("hf-to-oci-create-version.yaml"), tmp_path)
    config = plan(pod, monkeypatch, tmp_path)
    assert isinstance(config.source, UriLocation)
    assert config.source.hf_token is not None
    assert config.source.hf_token.get_secret_value() == "hf_CHANGE-ME"
    assert pod.service_account_token is None  # the registry token is the projected one
    assert config.registry.token is not None
    assert config.registry.token.get_secret_value() == FAKE_SA_TOKEN


def test_indexed_job_lists_one_model_per_completion() -> None:
    docs = sample_docs(INDEXED)
    job_spec = the_job(docs)["spec"]
    [models] = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    assert job_spec["completionMode"] == "Indexed"
    assert sorted(models["data"], key=int) == [str(i) for i in range(job_spec["completions"])]
    assert 1 <= job_spec["parallelism"] <= job_spec["completions"]


@pytest.mark.parametrize("index", sorted(INDEXED_EXPECTED))
def test_indexed_job_wrapper_plans_each_model(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = fake_pod(sample_docs(INDEXED), tmp_path)
    done = run_wrapper(pod, index, tmp_path)
    assert done.returncode == 0, done.stderr
    execed = json.loads(done.stdout)
    assert execed["argv"] == []
    exported = {k: v for k, v in execed["env"].items() if k.startswith("MODEL_SYNC_")}
    assert exported["MODEL_SYNC_JOB_ID"] == f"{FAKE_UID}-{index}"

    config = plan(
        FakePod(env=exported, args=[], command=[], mounts=pod.mounts, service_account_token=pod.service_account_token),
        monkeypatch,
        tmp_path,
    )
    assert type(config.source) is S3Location
    assert type(config.destination) is OciLocation
    assert config.job_id == f"{FAKE_UID}-{index}"
    assert config.registry.base_url == REGISTRY_URL
    assert_config(config, {**EXPECTED[INDEXED], **INDEXED_EXPECTED[index]})


def test_indexed_job_wrapper_refuses_a_missing_index_and_a_bad_line(tmp_path: Path) -> None:
    pod = fake_pod(sample_docs(INDEXED), tmp_path)
    missing = run_wrapper(pod, 99, tmp_path)
    assert missing.returncode == 2
    assert "no model for index 99" in missing.stderr

    models_dir = pod.mounts["/etc/model-sync/models"]
    (models_dir / "0").write_text("MODEL_SYNC_SOURCE_AWS_KEY=x/\nAWS_ACCESS_KEY_ID=not-a-model-sync-setting\n")
    bad = run_wrapper(pod, 0, tmp_path)
    assert bad.returncode == 2
    assert "expected MODEL_SYNC_NAME=value" in bad.stderr
    assert bad.stdout == ""  # model-sync never ran


def test_indexed_job_wrapper_never_evaluates_the_configmap(tmp_path: Path) -> None:
    pod = fake_pod(sample_docs(INDEXED), tmp_path)
    marker = tmp_path / "evaluated"
    value = f"models/$(touch {marker})/`touch {marker}` $HOME *"
    (pod.mounts["/etc/model-sync/models"] / "1").write_text(f"MODEL_SYNC_SOURCE_AWS_KEY={value}\n")
    done = run_wrapper(pod, 1, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["env"]["MODEL_SYNC_SOURCE_AWS_KEY"] == value  # literally
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# (c) Manifests an upstream user already has run unchanged
#
# Written the way the upstream async-upload job's README and samples write them: its env names, its
# value styles ("True", "false", ports as strings, a .dockerconfigjson *file* path, separate
# `--flag value` args) and its README's ConfigMap, verbatim.

UPSTREAM_SECRETS = """
apiVersion: v1
kind: Secret
metadata:
  name: my-s3-credentials
stringData:
  AWS_ACCESS_KEY_ID: minioadmin
  AWS_SECRET_ACCESS_KEY: minioadmin
  AWS_BUCKET: default
  AWS_REGION: us-east-1
  AWS_ENDPOINT_URL: http://minio.minio.svc.cluster.local:9000
---
apiVersion: v1
kind: Secret
metadata:
  name: my-oci-credentials
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{"auths": {"registry.example.com": {"auth": "AUTH","email": "user@example.com"}}}'
  ACCESS_TYPE: '["Push,Pull"]'
  OCI_HOST: registry.example.com
""".replace("AUTH", base64.b64encode(b"robot:hunter2").decode())

# The upstream README's "ConfigMap Usage" sample, verbatim.
UPSTREAM_CONFIGMAP = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: model-metadata
data:
  # RegisteredModel fields (create_model only)
  RegisteredModel.name: "my-model"
  RegisteredModel.description: "Model description"
  RegisteredModel.owner: "data-science-team"
  RegisteredModel.custom_properties: |
    {"project": "sentiment-analysis", "team": "nlp"}

  # ModelVersion fields
  ModelVersion.name: "1.0.0"
  ModelVersion.description: "Initial release"
  ModelVersion.author: "Jane Doe"
  ModelVersion.custom_properties: |
    {"accuracy": 0.95, "f1_score": 0.93}

  # ModelArtifact fields
  ModelArtifact.name: "sentiment-analyzer"
  ModelArtifact.model_format_name: "tensorflow"
  ModelArtifact.model_format_version: "2.8"
  ModelArtifact.storage_key: "s3-connection"
  ModelArtifact.custom_properties: |
    {"model_size_mb": 438, "inference_time_ms": 120}
"""

UPSTREAM_JOB = """
apiVersion: batch/v1
kind: Job
metadata:
  name: my-async-upload-job
spec:
  template:
    spec:
      restartPolicy: Never
      volumes:
        - name: source-credentials
          secret:
            secretName: my-s3-credentials
        - name: destination-credentials
          secret:
            secretName: my-oci-credentials
            items:
              - key: .dockerconfigjson
                path: .dockerconfigjson
        - name: metadata
          configMap:
            name: model-metadata
      containers:
        - name: async-upload
          image: ghcr.io/kubeflow/model-registry/job/async-upload:latest
          volumeMounts:
            - name: source-credentials
              readOnly: true
              mountPath: "/opt/creds/source"
            - name: destination-credentials
              readOnly: true
              mountPath: "/opt/creds/destination"
            - name: metadata
              mountPath: /etc/model-metadata
              readOnly: true
"""

UPSTREAM_UPDATE_ARTIFACT_ENV = """
- name: HTTP_PROXY
  value: ""
- name: NO_PROXY
  value: "minio.minio.svc.cluster.local,*.svc.cluster.local"
# ---- Source ----------
- name: MODEL_SYNC_SOURCE_TYPE
  value: "s3"
- name: MODEL_SYNC_SOURCE_AWS_KEY
  value: "my-model"
- name: MODEL_SYNC_SOURCE_S3_CREDENTIALS_PATH
  value: "/opt/creds/source"
# ---- Destination -----
- name: MODEL_SYNC_DESTINATION_TYPE
  value: "oci"
- name: MODEL_SYNC_DESTINATION_OCI_URI
  value: "registry.example.com/models/my-model:latest"
- name: MODEL_SYNC_DESTINATION_OCI_REGISTRY
  value: "registry.example.com"
- name: MODEL_SYNC_DESTINATION_OCI_CREDENTIALS_PATH
  value: "/opt/creds/destination/.dockerconfigjson"
- name: MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE
  value: "busybox:latest"
- name: MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY
  value: "false"
# ---- Model Params ----
- name: MODEL_SYNC_MODEL_UPLOAD_INTENT
  value: "update_artifact"
- name: MODEL_SYNC_MODEL_ID
  value: "1"
- name: MODEL_SYNC_MODEL_VERSION_ID
  value: "3"
- name: MODEL_SYNC_MODEL_ARTIFACT_ID
  value: "6"
- name: MODEL_SYNC_STORAGE_PATH
  value: "/tmp/model-sync"
# ---- Model Registry Client Params ----
- name: MODEL_SYNC_REGISTRY_SERVER_ADDRESS
  value: "https://model-registry-service.kubeflow.svc.cluster.local"
- name: MODEL_SYNC_REGISTRY_PORT
  value: "443"
- name: MODEL_SYNC_REGISTRY_IS_SECURE
  value: "True"
- name: MODEL_SYNC_REGISTRY_AUTHOR
  value: "Alice Bob"
- name: MODEL_SYNC_REGISTRY_USER_TOKEN
  value: "super-secret"
- name: MODEL_SYNC_REGISTRY_LOG_LEVEL
  value: "DEBUG"
"""

UPSTREAM_CREATE_MODEL_ENV = """
# Intent specification
- name: MODEL_SYNC_MODEL_UPLOAD_INTENT
  value: "create_model"
# ConfigMap metadata path
- name: MODEL_SYNC_METADATA_CONFIGMAP_PATH
  value: "/etc/model-metadata"
# Source configuration (e.g., S3)
- name: MODEL_SYNC_SOURCE_TYPE
  value: "s3"
- name: MODEL_SYNC_SOURCE_AWS_BUCKET
  value: "my-models-bucket"
- name: MODEL_SYNC_SOURCE_AWS_KEY
  value: "models/sentiment-analyzer/v1.0.0/"
- name: MODEL_SYNC_SOURCE_S3_CREDENTIALS_PATH
  value: "/opt/creds/source"
# Destination configuration (e.g., OCI)
- name: MODEL_SYNC_DESTINATION_TYPE
  value: "oci"
- name: MODEL_SYNC_DESTINATION_OCI_REGISTRY
  value: "registry.example.com"
- name: MODEL_SYNC_DESTINATION_OCI_URI
  value: "registry.example.com/models/sentiment-analyzer:1.0.0"
- name: MODEL_SYNC_DESTINATION_OCI_CREDENTIALS_PATH
  value: "/opt/creds/destination"
# Model Registry configuration
- name: MODEL_SYNC_REGISTRY_SERVER_ADDRESS
  value: "model-registry-service.default.svc.cluster.local"
- name: MODEL_SYNC_REGISTRY_PORT
  value: "8080"
- name: MODEL_SYNC_REGISTRY_IS_SECURE
  value: "false"
- name: MODEL_SYNC_REGISTRY_AUTHOR
  value: "data-science-team"
"""

# The upstream "kitchen sink" style: registry settings as separate `--flag value` args, the rest env.
UPSTREAM_ARGS = """
- --registry-server-address
- http://model-registry-service.kubeflow.svc.cluster.local
- --registry-port
- "8080"
- --registry-author
- Alice Bob
- --registry-user-token
- super-secret
- --registry-is-secure
- "false"
- --registry-log-level
- "DEBUG"
"""
UPSTREAM_ARGS_ENV = """
- name: MODEL_SYNC_SOURCE_TYPE
  value: "s3"
- name: MODEL_SYNC_SOURCE_AWS_KEY
  value: "my-model"
- name: MODEL_SYNC_SOURCE_S3_CREDENTIALS_PATH
  value: "/opt/creds/source"
- name: MODEL_SYNC_DESTINATION_TYPE
  value: "oci"
- name: MODEL_SYNC_DESTINATION_OCI_URI
  value: "registry.example.com/models/my-model:1.0.0"
- name: MODEL_SYNC_DESTINATION_OCI_CREDENTIALS_PATH
  value: "/opt/creds/destination"
- name: MODEL_SYNC_MODEL_ID
  value: "1"
- name: MODEL_SYNC_MODEL_VERSION_ID
  value: "3"
- name: MODEL_SYNC_MODEL_ARTIFACT_ID
  value: "4"
"""


def upstream_docs(env_yaml: str, args_yaml: str = "[]") -> list[dict[str, Any]]:
    docs = load_docs(UPSTREAM_SECRETS + "\n---\n" + UPSTREAM_CONFIGMAP + "\n---\n" + UPSTREAM_JOB)
    container = the_container(docs)
    container["env"] = yaml.safe_load(env_yaml)
    container["args"] = yaml.safe_load(args_yaml)
    return docs


def test_upstream_update_artifact_env_runs_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = fake_pod(upstream_docs(UPSTREAM_UPDATE_ARTIFACT_ENV), tmp_path)
    config = plan(pod, monkeypatch, tmp_path)
    assert isinstance(config.source, S3Location)
    assert isinstance(config.destination, OciLocation)
    assert config.intent == "update_artifact"
    assert (config.model_id, config.model_version_id, config.model_artifact_id) == ("1", "3", "6")
    # Bucket, region and endpoint from the mounted Secret; keys too.
    assert (config.source.bucket, config.source.key, config.source.region) == ("default", "my-model", "us-east-1")
    assert config.source.endpoint == "http://minio.minio.svc.cluster.local:9000"
    # "false" turns TLS verification off; the login comes from the .dockerconfigjson *file*.
    assert config.destination.tls_verify is False
    assert config.destination.registry == "registry.example.com"
    assert config.destination.username == "robot"
    assert config.destination.password is not None
    assert config.destination.password.get_secret_value() == "hunter2"
    assert config.destination.base_image == "busybox:latest"
    # "True" and "443" as upstream writes them; the explicit token wins over the service account's.
    assert config.registry.base_url == "https://model-registry-service.kubeflow.svc.cluster.local:443"
    assert config.registry.verify is True
    assert config.registry.token is not None
    assert config.registry.token.get_secret_value() == "super-secret"
    assert config.registry.author == "Alice Bob"
    assert config.registry.log_level == "DEBUG"
    assert config.storage_path == Path("/tmp/model-sync")


def test_upstream_create_model_env_and_configmap_run_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = fake_pod(upstream_docs(UPSTREAM_CREATE_MODEL_ENV), tmp_path)
    config = plan(pod, monkeypatch, tmp_path)
    assert config.intent == "create_model"
    assert isinstance(config.source, S3Location)
    assert config.source.bucket == "my-models-bucket"  # the env var wins over the Secret's AWS_BUCKET
    assert isinstance(config.destination, OciLocation)
    assert config.destination.username == "robot"  # a Secret *directory* holding .dockerconfigjson
    assert config.registry.base_url == "http://model-registry-service.default.svc.cluster.local:8080"
    assert config.registry.verify is False
    assert config.metadata_path == pod.mounts["/etc/model-metadata"]


def test_upstream_readme_configmap_loads_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from job.settings.metadata import load_metadata

    pod = fake_pod(upstream_docs(UPSTREAM_CREATE_MODEL_ENV), tmp_path)
    meta = load_metadata(pod.mounts["/etc/model-metadata"])
    assert meta.registered_model.name == "my-model"
    assert meta.registered_model.owner == "data-science-team"
    assert meta.model_version.name == "1.0.0"
    assert meta.model_version.author == "Jane Doe"
    assert meta.model_artifact.model_format_name == "tensorflow"
    assert meta.model_artifact.model_format_version == "2.8"
    assert meta.model_artifact.storage_key == "s3-connection"
    assert set(meta.registered_model.custom_properties) == {"project", "team"}
    assert set(meta.model_version.custom_properties) == {"accuracy", "f1_score"}
    assert set(meta.model_artifact.custom_properties) == {"model_size_mb", "inference_time_ms"}


def test_upstream_args_style_runs_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = fake_pod(upstream_docs(UPSTREAM_ARGS_ENV, UPSTREAM_ARGS), tmp_path)
    config = plan(pod, monkeypatch, tmp_path)
    assert config.intent == "update_artifact"  # upstream's default intent
    assert config.model_artifact_id == "4"
    assert config.registry.base_url == "http://model-registry-service.kubeflow.svc.cluster.local:8080"
    assert config.registry.token is not None
    assert config.registry.token.get_secret_value() == "super-secret"
    assert config.registry.log_level == "DEBUG"
    assert isinstance(config.destination, OciLocation)
    assert config.destination.username == "robot"  # registry from the image reference's host


def test_upstream_anonymous_registry_entry_runs_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = upstream_docs(UPSTREAM_UPDATE_ARTIFACT_ENV)
    [oci_secret] = [d for d in docs if d["metadata"]["name"] == "my-oci-credentials"]
    oci_secret["stringData"][".dockerconfigjson"] = (
        '{"auths": {"registry.example.com": {"auth": "","email": "user@example.com"}}}'
    )
    config = plan(fake_pod(docs, tmp_path), monkeypatch, tmp_path)
    assert isinstance(config.destination, OciLocation)
    assert config.destination.username is None
