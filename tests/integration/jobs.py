"""Helpers for tests that run the job as Kubernetes runs it: ``python -m job`` in a child process, env vars only.

Used by the fault matrix, the kill/SIGTERM tests, the bad-input table and the secrets test. A run returns its
exit code, stdout, stderr and termination message (:class:`Run`); :meth:`Run.assert_one_line_failure` checks
what every failure must look like. Readers get the model back from the destination with clients that are not
model-sync's (boto3; raw registry HTTP and ``tarfile`` for a modelcar, plain-http registries only).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.servers.s3 import S3Server

REPO = Path(__file__).parents[2]
FAST = {
    # Short waits and timeouts, so that faults cost little time. Retry-After still wins over these.
    "MODEL_SYNC_RETRY_INITIAL_WAIT": "0.05",
    "MODEL_SYNC_RETRY_MAX_WAIT": "0.2",
    "MODEL_SYNC_READ_TIMEOUT": "2",
    "MODEL_SYNC_CONNECT_TIMEOUT": "2",
    "MODEL_SYNC_PART_SIZE_MIB": "5",
    "MODEL_SYNC_LOG_LEVEL": "INFO",
}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass
class Run:
    """How one run of the job ended."""

    code: int
    stdout: str
    stderr: str
    message: str

    @property
    def output(self) -> str:
        """Everything the job wrote that a person or a log pipeline may see."""
        return self.stdout + self.stderr + self.message

    def result(self) -> dict[str, Any]:
        """The success termination message, parsed."""
        assert self.code == 0, self.stderr[-4000:]
        doc: dict[str, Any] = json.loads(self.message)
        return doc

    def assert_one_line_failure(self, *, code: int | None = None) -> None:
        """Non-zero exit, one line in the termination message, the same line in the log, no traceback."""
        assert self.code != 0, self.stderr[-3000:]
        if code is not None:
            assert self.code == code, (self.code, self.stderr[-3000:])
        line = self.message.strip()
        assert line and "\n" not in line, repr(self.message)
        assert line in self.stderr, (line, self.stderr[-3000:])
        assert "Traceback" not in self.stderr, self.stderr[-3000:]


def job_env(env: Mapping[str, str], termination: Path) -> dict[str, str]:
    """The child's environment: this one without model-sync, AWS or HF variables, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_SYNC_", "AWS_", "HF_", "KF_PIPELINES"))}
    return {**clean, "TERMINATION_MESSAGE_PATH": str(termination), "NO_PROXY": "*", **env}


def start_job(env: Mapping[str, str], tmp: Path, args: list[str] | None = None) -> tuple[subprocess.Popen[str], Path]:
    """Start ``python -m job`` (stdout and stderr to pipes); returns the process and its termination path."""
    termination = tmp / f"termination-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", *(args or [])],
        env=job_env(env, termination), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, termination


def finish(proc: subprocess.Popen[str], termination: Path, *, timeout: float = 120) -> Run:
    """Wait for a started job (killing it if it outlives ``timeout``) and collect how it ended."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate(timeout=10)
        raise AssertionError(f"the job ran longer than {timeout} s; stderr tail:\n{stderr[-3000:]}") from None
    message = termination.read_text() if termination.exists() else ""
    return Run(proc.returncode, stdout, stderr, message)


def run_job(env: Mapping[str, str], tmp: Path, *, args: list[str] | None = None, timeout: float = 120) -> Run:
    """Run the job to its end."""
    proc, termination = start_job(env, tmp, args)
    return finish(proc, termination, timeout=timeout)


def kill(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    """Send ``sig`` to our own child, by its pid."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)


# --- env builders --------------------------------------------------------------------------------


def s3_env(side: str, s3: S3Server, bucket: str, key: str, *, endpoint: str | None = None) -> dict[str, str]:
    """``side`` (SOURCE or DESTINATION) reads or writes ``bucket``/``key`` on ``s3`` (through ``endpoint``)."""
    return {
        f"MODEL_SYNC_{side}_TYPE": "s3",
        f"MODEL_SYNC_{side}_AWS_BUCKET": bucket,
        f"MODEL_SYNC_{side}_AWS_KEY": key,
        f"MODEL_SYNC_{side}_AWS_ENDPOINT": endpoint or s3.endpoint_url,
        f"MODEL_SYNC_{side}_AWS_REGION": "us-east-1",
        f"MODEL_SYNC_{side}_AWS_ACCESS_KEY_ID": s3.access_key,
        f"MODEL_SYNC_{side}_AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }


def oci_env(side: str, reference: str, *, base: str | None = None) -> dict[str, str]:
    """``side`` reads or pushes ``reference`` on a plain-http registry without login."""
    env = {f"MODEL_SYNC_{side}_TYPE": "oci", f"MODEL_SYNC_{side}_OCI_URI": reference,
           f"MODEL_SYNC_{side}_OCI_ENABLE_TLS_VERIFY": "false"}  # fmt: skip
    if base:
        env["MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE"] = base
    return env


def pvc_env(root: Path) -> dict[str, str]:
    return {"MODEL_SYNC_SOURCE_TYPE": "pvc", "MODEL_SYNC_SOURCE_PATH": str(root)}


def registry_env(address: str, **extra: str) -> dict[str, str]:
    """The Model Registry at ``address`` and a fresh job id."""
    return {"MODEL_SYNC_REGISTRY_SERVER_ADDRESS": address, "MODEL_SYNC_JOB_ID": f"job-{uuid.uuid4().hex[:8]}", **extra}


# --- the Model Registry ---------------------------------------------------------------------------


def new_artifact(api_url: str, **fields: str) -> str:
    """A registered model, a version and an artifact with no uri (state UNKNOWN, or ``fields``); returns its id."""
    api = httpx.Client(base_url=api_url, timeout=30)
    rm = api.post("/registered_models", json={"name": f"m-{uuid.uuid4().hex[:10]}"}).json()
    mv = api.post(f"/registered_models/{rm['id']}/versions", json={"name": "v1", "registeredModelId": rm["id"]}).json()
    body = {"artifactType": "model-artifact", "name": "a", "state": "UNKNOWN", **fields}
    return str(api.post(f"/model_versions/{mv['id']}/artifacts", json=body).json()["id"])


def update_artifact_env(api_url: str) -> dict[str, str]:
    return {"MODEL_SYNC_MODEL_UPLOAD_INTENT": "update_artifact", "MODEL_SYNC_MODEL_ARTIFACT_ID": new_artifact(api_url)}


def get_artifact(api_url: str, artifact_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{api_url}/model_artifacts/{artifact_id}", timeout=30).json()
    return doc


# --- models and readers ---------------------------------------------------------------------------


def write_tree(root: Path, files: Mapping[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def put_tree(s3: S3Server, bucket: str, prefix: str, files: Mapping[str, bytes]) -> None:
    client = s3.client()
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}{name}", Body=data)


def read_s3(s3: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix/``, keyed by its path below it."""
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]
    return {k.removeprefix(prefix + "/"): client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def open_uploads(s3: S3Server, bucket: str) -> list[str]:
    """Keys with a multipart upload still open."""
    return [u["Key"] for u in s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def read_modelcar(host: str, repository: str, tag: str) -> dict[str, bytes]:
    """The files under ``models/`` of a modelcar on a plain-http registry, read with httpx and ``tarfile``."""
    accept = f"{OCI_MANIFEST}, {OCI_INDEX}"
    with httpx.Client(base_url=f"http://{host}/v2/{repository}", timeout=30) as api:
        manifest = api.get(f"/manifests/{tag}", headers={"Accept": accept}).raise_for_status().json()
        if manifest.get("mediaType") == OCI_INDEX:
            digest = manifest["manifests"][0]["digest"]
            manifest = api.get(f"/manifests/{digest}", headers={"Accept": accept}).raise_for_status().json()
        files: dict[str, bytes] = {}
        for layer in manifest["layers"]:
            if not layer["mediaType"].endswith(".tar"):
                continue  # the base image's gzip layers
            blob = api.get(f"/blobs/{layer['digest']}").raise_for_status().content
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.startswith("models/"):
                        extracted = tar.extractfile(member)
                        assert extracted is not None
                        files[member.name.removeprefix("models/")] = extracted.read()
    return files
