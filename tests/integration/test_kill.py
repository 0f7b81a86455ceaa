"""Pods die: SIGKILL at chosen points then a rerun with the same job id converges; SIGTERM exits within 10 s.

The job runs as a process (``python -m job``), with one server behind the fault proxy, which *holds* a chosen
request (swallows it, answers nothing) so the job is caught at a known point: the test waits for that request,
bounded, then signals the process.

* SIGKILL, then the same env again (same ``MODEL_SYNC_JOB_ID``): exactly one RegisteredModel, ModelVersion
  and ModelArtifact, LIVE, and the model byte for byte at the destination. S3 objects the killed try finished
  are not sent again, and the multipart upload it left open is aborted; OCI layers of a manifest the killed
  try pushed are not sent again either.
* SIGTERM: exit 143 within 10 s with the termination message written, uploads aborted, the artifact restored
  (not PENDING), also while a registry call or an S3 part is in flight, and within 10 s even when the registry
  hangs during the restore.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.jobs import (
    FAST,
    Run,
    finish,
    get_artifact,
    kill,
    oci_env,
    open_uploads,
    pvc_env,
    read_modelcar,
    read_s3,
    registry_env,
    run_job,
    s3_env,
    start_job,
    update_artifact_env,
    write_tree,
)
from tests.servers.faultproxy import FaultProxy, Rule, hold
from tests.servers.http import HttpTestServer, tar_bytes
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
_rng = random.Random(7)
MODEL = {  # listed a, b, c and sent one at a time (MODEL_SYNC_PARALLEL_FILES=1): a kill point is a known file
    "a.bin": _rng.randbytes(6 * MiB + 1),
    "b.json": b'{"b": true}',
    "c.bin": _rng.randbytes(6 * MiB + 2),
}
ONE_AT_A_TIME = {**FAST, "MODEL_SYNC_PARALLEL_FILES": "1", "MODEL_SYNC_READ_TIMEOUT": "30"}
EXIT_BOUND = 10.0
"""Seconds from SIGTERM to exit (the issue's bound; Kubernetes' default grace period is 30 s)."""


@dataclass
class Stack:
    registry: ModelRegistryStandin
    s3: S3Server
    oci: Registry
    s3_proxy: FaultProxy
    oci_proxy: FaultProxy
    registry_proxy: FaultProxy
    tmp: Path


@pytest.fixture
def stack(
    registry_standin: ModelRegistryStandin,
    seaweedfs_s3: S3Server,
    registry_plain: Registry,
    s3_proxy: FaultProxy,
    oci_proxy: FaultProxy,
    registry_proxy: FaultProxy,
    tmp_path: Path,
) -> Iterator[Stack]:
    for proxy in (s3_proxy, oci_proxy, registry_proxy):
        proxy.clear()
    yield Stack(registry_standin, seaweedfs_s3, registry_plain, s3_proxy, oci_proxy, registry_proxy, tmp_path)
    for proxy in (s3_proxy, oci_proxy, registry_proxy):
        proxy.clear()


def create_model_env(stack: Stack) -> tuple[dict[str, str], str]:
    """The create_model intent with a fresh name; returns env and the name."""
    name = f"kill-{uuid.uuid4().hex[:8]}"
    folder = stack.tmp / f"metadata-{uuid.uuid4().hex[:6]}"
    write_tree(folder, {"RegisteredModel.name": name.encode(), "ModelVersion.name": b"1.0"})
    return {"MODEL_SYNC_MODEL_UPLOAD_INTENT": "create_model", "MODEL_SYNC_METADATA_CONFIGMAP_PATH": str(folder)}, name


def entities(stack: Stack, name: str) -> tuple[list[Any], list[Any], list[Any]]:
    """Every RegisteredModel named ``name``, the versions of each, and the artifacts of each version."""
    api = httpx.Client(base_url=stack.registry.api_url, timeout=30)
    models = [
        m for m in api.get("/registered_models", params={"pageSize": "1000"}).json()["items"] if m["name"] == name
    ]
    versions = [v for m in models for v in api.get(f"/registered_models/{m['id']}/versions").json().get("items", [])]
    artifacts = [a for v in versions for a in api.get(f"/model_versions/{v['id']}/artifacts").json().get("items", [])]
    return models, versions, artifacts


def assert_converged(stack: Stack, name: str, run: Run) -> None:
    """Exactly one model, version and artifact, LIVE, at the uri the rerun reported."""
    models, versions, artifacts = entities(stack, name)
    assert (len(models), len(versions), len(artifacts)) == (1, 1, 1), (models, versions, artifacts)
    assert versions[0]["state"] == "LIVE" and artifacts[0]["state"] == "LIVE"
    assert artifacts[0]["uri"] == run.result()["uri"]
    assert run.result()["ModelArtifact"]["id"] == artifacts[0]["id"]


def kill_when(rule: Rule, proc: subprocess.Popen[str], sig: signal.Signals) -> float:
    """Wait (bounded) until the held request arrives, then send ``sig``; returns the time it was sent."""
    fired = rule.event.wait(timeout=90)
    if not fired:
        kill(proc, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
        raise AssertionError(f"the job never reached the held request; stderr tail:\n{stderr[-3000:]}")
    sent = time.monotonic()
    kill(proc, sig)
    return sent


# --- SIGKILL, rerun, converge -----------------------------------------------------------------------


def test_sigkill_mid_transfer_to_s3_then_rerun_converges(stack: Stack) -> None:
    bucket = fresh_bucket(stack.s3, "kill")
    intent, name = create_model_env(stack)
    env = {**ONE_AT_A_TIME, **registry_env(stack.registry.url), **intent, **pvc_env(write_tree(stack.tmp / "m", MODEL)),
           **s3_env("DESTINATION", stack.s3, bucket, "out/m", endpoint=stack.s3_proxy.url)}  # fmt: skip
    # a.bin and b.json are written; c.bin's multipart upload exists and its second part is in flight.
    rule = stack.s3_proxy.add(hold(30), method="PUT", path=rf"^/{bucket}/out/m/c\.bin\?.*partNumber=2")
    proc, termination = start_job(env, stack.tmp)
    kill_when(rule, proc, signal.SIGKILL)
    killed = finish(proc, termination)
    assert killed.code == -signal.SIGKILL
    assert open_uploads(stack.s3, bucket) == ["out/m/c.bin"]  # SIGKILL leaves it: nothing can abort it
    assert entities(stack, name) == ([], [], [])  # create_model writes to the registry after the bytes

    rerun = run_job(env, stack.tmp)
    assert_converged(stack, name, rerun)
    assert read_s3(stack.s3, bucket, "out/m") == MODEL
    assert "skipped a.bin" in rerun.stderr and "skipped b.json" in rerun.stderr  # not sent again
    assert "skipped c.bin" not in rerun.stderr
    assert "left open by an earlier try" in rerun.stderr
    assert open_uploads(stack.s3, bucket) == []
    sent = [s.target for s in stack.s3_proxy.seen("PUT") if "/out/m/a.bin" in s.target]
    assert sent and all("partNumber" in t for t in sent)  # a.bin went up once, in the killed try only


def test_sigkill_of_update_artifact_leaves_it_pending_and_the_rerun_makes_it_live(stack: Stack) -> None:
    bucket = fresh_bucket(stack.s3, "kill")
    intent = update_artifact_env(stack.registry.api_url)
    artifact_id = intent["MODEL_SYNC_MODEL_ARTIFACT_ID"]
    env = {**ONE_AT_A_TIME, **registry_env(stack.registry.url), **intent, **pvc_env(write_tree(stack.tmp / "m", MODEL)),
           **s3_env("DESTINATION", stack.s3, bucket, "out/m", endpoint=stack.s3_proxy.url)}  # fmt: skip
    rule = stack.s3_proxy.add(hold(30), method="PUT", path=rf"^/{bucket}/out/m/c\.bin\?.*partNumber=2")
    proc, termination = start_job(env, stack.tmp)
    kill_when(rule, proc, signal.SIGKILL)
    finish(proc, termination)
    assert get_artifact(stack.registry.api_url, artifact_id)["state"] == "PENDING"  # nothing could restore it

    rerun = run_job(env, stack.tmp)
    artifact = get_artifact(stack.registry.api_url, artifact_id)
    assert artifact["state"] == "LIVE" and artifact["uri"] == rerun.result()["uri"] == f"s3://{bucket}/out/m/"
    assert "model_sync.previous_state" not in artifact["customProperties"]
    assert read_s3(stack.s3, bucket, "out/m") == MODEL
    assert open_uploads(stack.s3, bucket) == []


def test_sigkill_between_registry_writes_then_rerun_converges(stack: Stack) -> None:
    """Killed after the model and version were created, before the artifact: the rerun reuses them."""
    bucket = fresh_bucket(stack.s3, "kill")
    intent, name = create_model_env(stack)
    env = {**ONE_AT_A_TIME, **registry_env(stack.registry_proxy.url), **intent,
           **pvc_env(write_tree(stack.tmp / "m", MODEL)), **s3_env("DESTINATION", stack.s3, bucket, "out/m")}  # fmt: skip
    rule = stack.registry_proxy.add(hold(30), method="POST", path=r"/model_versions/\d+/artifacts$")
    proc, termination = start_job(env, stack.tmp)
    kill_when(rule, proc, signal.SIGKILL)
    finish(proc, termination)
    models, versions, artifacts = entities(stack, name)
    assert (len(models), len(versions), len(artifacts)) == (1, 1, 0)

    rerun = run_job(env, stack.tmp)
    assert_converged(stack, name, rerun)
    assert "created by this job in an earlier attempt: reusing it" in rerun.stderr
    assert all(f"skipped {f}" in rerun.stderr for f in MODEL)  # every object was complete: nothing re-sent
    assert read_s3(stack.s3, bucket, "out/m") == MODEL


def test_sigkill_mid_transfer_to_oci_then_rerun_converges(stack: Stack) -> None:
    intent, name = create_model_env(stack)
    repo = f"kill/m{uuid.uuid4().hex[:6]}"
    proxy = stack.oci_proxy
    env = {**ONE_AT_A_TIME, **registry_env(stack.registry.url), **intent, **pvc_env(write_tree(stack.tmp / "m", MODEL)),
           **oci_env("DESTINATION", f"{proxy.host}/{repo}:1", base=f"{proxy.host}/base/busybox:latest")}  # fmt: skip
    # a.bin's and b.json's layers are pushed; c.bin's PATCH is held.
    rule = proxy.add(hold(30), method="PATCH", path=rf"^/v2/{repo}/blobs/uploads/", skip=2)
    proc, termination = start_job(env, stack.tmp)
    kill_when(rule, proc, signal.SIGKILL)
    finish(proc, termination)

    rerun = run_job(env, stack.tmp)
    assert_converged(stack, name, rerun)
    assert read_modelcar(stack.oci.host, repo, "1") == MODEL


def test_sigkill_after_the_oci_push_then_rerun_sends_no_layer_again(stack: Stack) -> None:
    """Killed after the manifest was pushed, before the registry recorded it: the rerun finds every layer
    in the tag's manifest (by path, size and source identity), sends none, and pushes the same digest."""
    intent, name = create_model_env(stack)
    repo = f"kill/m{uuid.uuid4().hex[:6]}"
    env = {**ONE_AT_A_TIME, **registry_env(stack.registry_proxy.url), **intent,
           **pvc_env(write_tree(stack.tmp / "m", MODEL)),
           **oci_env("DESTINATION", f"{stack.oci_proxy.host}/{repo}:1", base=f"{stack.oci_proxy.host}/base/busybox:latest")}  # fmt: skip
    rule = stack.registry_proxy.add(hold(30), method="POST", path=r"/registered_models$")
    proc, termination = start_job(env, stack.tmp)
    kill_when(rule, proc, signal.SIGKILL)
    finish(proc, termination)
    pushed = httpx.head(
        f"http://{stack.oci.host}/v2/{repo}/manifests/1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).headers["Docker-Content-Digest"]

    patches_before = len(stack.oci_proxy.seen("PATCH", rf"^/v2/{repo}/"))
    rerun = run_job(env, stack.tmp)
    assert_converged(stack, name, rerun)
    assert rerun.result()["digest"] == pushed
    assert all(f"skipped {f}" in rerun.stderr for f in MODEL)
    assert len(stack.oci_proxy.seen("PATCH", rf"^/v2/{repo}/")) == patches_before  # no layer sent again
    assert read_modelcar(stack.oci.host, repo, "1") == MODEL


# --- SIGTERM: clean up and exit within 10 s ---------------------------------------------------------


def sigterm_at(rule: Rule, env: dict[str, str], tmp: Path) -> tuple[Run, float]:
    """Start the job, SIGTERM it when ``rule`` fires; returns how it ended and the seconds it took to exit."""
    proc, termination = start_job(env, tmp)
    sent = kill_when(rule, proc, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    finally:
        took = time.monotonic() - sent
    return finish(proc, termination), took


def assert_terminated(run: Run, took: float) -> None:
    assert took < EXIT_BOUND, f"exited {took:.1f} s after SIGTERM"
    run.assert_one_line_failure(code=143)
    assert "SIGTERM" in run.message


def test_sigterm_during_an_s3_part_upload(stack: Stack) -> None:
    bucket = fresh_bucket(stack.s3, "term")
    intent = update_artifact_env(stack.registry.api_url)
    env = {**ONE_AT_A_TIME, **registry_env(stack.registry.url), **intent, **pvc_env(write_tree(stack.tmp / "m", MODEL)),
           **s3_env("DESTINATION", stack.s3, bucket, "out/m", endpoint=stack.s3_proxy.url)}  # fmt: skip
    rule = stack.s3_proxy.add(hold(30), method="PUT", path=rf"^/{bucket}/out/m/a\.bin\?.*partNumber=2")
    run, took = sigterm_at(rule, env, stack.tmp)
    assert_terminated(run, took)
    assert open_uploads(stack.s3, bucket) == []  # the multipart upload was aborted
    assert get_artifact(stack.registry.api_url, intent["MODEL_SYNC_MODEL_ARTIFACT_ID"])["state"] == "ABANDONED"


def test_sigterm_during_a_tar_gz_read_once(stack: Stack, http_server: HttpTestServer) -> None:
    # A one-pass source: the listing is still open (its pass paused in a.bin's bytes) when SIGTERM arrives.
    bucket = fresh_bucket(stack.s3, "term")
    intent = update_artifact_env(stack.registry.api_url)
    archive = http_server.write(f"kill/{uuid.uuid4().hex[:8]}.tar.gz", tar_bytes(MODEL, gz=True))
    env = {**ONE_AT_A_TIME, **registry_env(stack.registry.url), **intent, "MODEL_SYNC_SOURCE_TYPE": "uri",
           "MODEL_SYNC_SOURCE_URI": http_server.url(archive),
           **s3_env("DESTINATION", stack.s3, bucket, "out/m", endpoint=stack.s3_proxy.url)}  # fmt: skip
    rule = stack.s3_proxy.add(hold(30), method="PUT", path=rf"^/{bucket}/out/m/a\.bin\?.*partNumber=2")
    run, took = sigterm_at(rule, env, stack.tmp)
    assert_terminated(run, took)
    assert open_uploads(stack.s3, bucket) == []
    assert get_artifact(stack.registry.api_url, intent["MODEL_SYNC_MODEL_ARTIFACT_ID"])["state"] == "ABANDONED"


def test_sigterm_during_an_oci_layer_upload(stack: Stack) -> None:
    intent = update_artifact_env(stack.registry.api_url)
    repo = f"term/m{uuid.uuid4().hex[:6]}"
    proxy = stack.oci_proxy
    env = {**ONE_AT_A_TIME, **registry_env(stack.registry.url), **intent, **pvc_env(write_tree(stack.tmp / "m", MODEL)),
           **oci_env("DESTINATION", f"{proxy.host}/{repo}:1", base=f"{proxy.host}/base/busybox:latest")}  # fmt: skip
    rule = proxy.add(hold(30), method="PATCH", path=rf"^/v2/{repo}/blobs/uploads/")
    run, took = sigterm_at(rule, env, stack.tmp)
    assert_terminated(run, took)
    assert proxy.seen("DELETE", rf"^/v2/{repo}/blobs/uploads/")  # the upload session was cancelled
    assert get_artifact(stack.registry.api_url, intent["MODEL_SYNC_MODEL_ARTIFACT_ID"])["state"] == "ABANDONED"


def test_sigterm_while_a_registry_call_is_in_flight(stack: Stack) -> None:
    """The LIVE update is held: SIGTERM cancels it, and the restore (not held) still lands."""
    bucket = fresh_bucket(stack.s3, "term")
    intent = update_artifact_env(stack.registry.api_url)
    env = {**ONE_AT_A_TIME, **registry_env(stack.registry_proxy.url), **intent,
           **pvc_env(write_tree(stack.tmp / "m", MODEL)), **s3_env("DESTINATION", stack.s3, bucket, "out/m")}  # fmt: skip
    rule = stack.registry_proxy.add(hold(30), method="PATCH", path=r"/model_artifacts/\d+$", skip=1)
    run, took = sigterm_at(rule, env, stack.tmp)
    assert_terminated(run, took)
    assert get_artifact(stack.registry.api_url, intent["MODEL_SYNC_MODEL_ARTIFACT_ID"])["state"] == "ABANDONED"


def test_sigterm_exits_within_bounds_even_when_the_restore_hangs(stack: Stack) -> None:
    """Every PATCH after the PENDING one hangs, the restore too: the job still exits in time, and says so."""
    bucket = fresh_bucket(stack.s3, "term")
    intent = update_artifact_env(stack.registry.api_url)
    env = {**ONE_AT_A_TIME, **registry_env(stack.registry_proxy.url), **intent,
           **pvc_env(write_tree(stack.tmp / "m", MODEL)), **s3_env("DESTINATION", stack.s3, bucket, "out/m")}  # fmt: skip
    rule = stack.registry_proxy.add(hold(30), method="PATCH", path=r"/model_artifacts/\d+$", skip=1, times=20)
    run, took = sigterm_at(rule, env, stack.tmp)
    assert_terminated(run, took)
    assert "may be left PENDING" in run.stderr or "did not complete" in run.stderr
