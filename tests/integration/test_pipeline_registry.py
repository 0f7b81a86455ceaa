"""The pipeline seam: settings -> plan -> sync, with in-memory backends and the real registry stand-in.

What the intents do on their own is covered in test_intents_registry.py; here the whole job path is
exercised as ``python -m job`` runs it, except that the bytes go through the fakes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from job.config import JobConfig, build_job_config
from job.engine.transfer import TransferSettings
from job.errors import SourceError, Terminated
from job.intents import MARKER_JOB_ID
from job.pipeline import Plan, plan_job, run_until_terminated, sync
from job.settings.chain import load_settings
from tests.fakes import MemoryDestination, MemorySource
from tests.integration.jobs import new_artifact
from tests.standin.model_registry import ModelRegistryStandin

MODEL = {"config.json": b'{"a": 1}', "sub/config.json": b'{"b": 2}', "weights.bin": b"w" * 100_000, "empty": b""}


def metadata(tmp_path: Path, **files: str) -> Path:
    d = tmp_path / "metadata"
    d.mkdir()
    for key, value in files.items():
        (d / key).write_text(value)
    return d


def config(registry: ModelRegistryStandin, tmp_path: Path, *extra: str) -> JobConfig:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    argv = [
        "--registry-server-address", registry.url, "--registry-user-token", "pipeline-token",
        "--source-type", "pvc", "--source-path", str(src),
        "--destination-type", "s3", "--destination-aws-bucket", "bkt", "--destination-aws-key", "m",
        "--destination-aws-access-key-id", "AK", "--destination-aws-secret-access-key", "SK",
        *extra,
    ]  # fmt: skip
    return build_job_config(load_settings(argv), {})


def plan(cfg: JobConfig) -> Plan:
    """plan_job, but with TransferSettings small enough to exercise concurrency on the fakes."""
    planned = plan_job(cfg)
    return Plan(config=planned.config, spec=planned.spec, transfer_settings=TransferSettings(parallel_files=2))


async def run(p: Plan, source: MemorySource, destination: MemoryDestination) -> Any:
    return await sync(p, source_factory=lambda _: source, destination_factory=lambda _: destination)


async def api(registry: ModelRegistryStandin, path: str) -> Any:
    async with httpx.AsyncClient() as client:
        return (await client.get(registry.api_url + path)).json()


@pytest.fixture
def registry(registry_standin: ModelRegistryStandin) -> ModelRegistryStandin:
    registry_standin.reset()
    return registry_standin


async def test_create_model_moves_bytes_then_registers(registry: ModelRegistryStandin, tmp_path: Path) -> None:
    md = metadata(
        tmp_path,
        **{"RegisteredModel.name": "sentiment", "ModelVersion.name": "1.0.0",
           "ModelVersion.custom_properties": '{"accuracy": 0.95, "epochs": 3, "tags": ["nlp"], "ok": true}',
           "ModelArtifact.model_format_name": "onnx", "ModelArtifact.model_format_version": "1"},
    )  # fmt: skip
    cfg = config(registry, tmp_path, "--model-upload-intent", "create_model", "--metadata-configmap-path", str(md),
                 "--job-id", "job-1")  # fmt: skip
    source, destination = MemorySource(MODEL, chunk_size=4096), MemoryDestination(uri="s3://b/m")
    result = await run(plan(cfg), source, destination)
    job_requests = list(registry.requests)

    assert destination.stored == MODEL
    assert destination.calls.count("commit") == 1
    assert result.uri == "s3://b/m"
    artifact = await api(registry, f"/model_artifacts/{result.model_artifact_id}")
    assert artifact["state"] == "LIVE" and artifact["uri"] == "s3://b/m"
    assert artifact["modelFormatName"] == "onnx"
    version = await api(registry, f"/model_versions/{result.model_version_id}")
    assert version["customProperties"]["epochs"] == {"metadataType": "MetadataIntValue", "int_value": "3"}
    assert version["customProperties"][MARKER_JOB_ID]["string_value"] == "job-1"
    # Every call carried the token; the transfer ran after the preflight finds and before the creates.
    calls = [(r.method, r.path) for r in job_requests]
    assert all(r.headers.get("authorization") == "Bearer pipeline-token" for r in job_requests)
    assert calls[0][0] == "GET" and any(m == "POST" for m, _ in calls)


async def test_update_artifact_pending_during_transfer_then_live(
    registry: ModelRegistryStandin, tmp_path: Path
) -> None:
    artifact_id = new_artifact(registry.api_url)
    cfg = config(registry, tmp_path, "--model-artifact-id", artifact_id)
    seen: list[str] = []
    hold = asyncio.Event()
    destination = MemoryDestination(hold=hold, uri="s3://b/m")

    async def watch() -> None:
        await destination.wait_in_flight(1)
        seen.append((await api(registry, f"/model_artifacts/{artifact_id}"))["state"])
        hold.set()

    watcher = asyncio.create_task(watch())
    result = await run(plan(cfg), MemorySource(MODEL), destination)
    await watcher
    assert seen == ["PENDING"]
    after = await api(registry, f"/model_artifacts/{artifact_id}")
    assert (after["state"], after["uri"]) == ("LIVE", "s3://b/m")
    assert result.to_termination_message()["ModelArtifact"]["id"] == artifact_id


async def test_failed_transfer_leaves_no_pending_artifact(registry: ModelRegistryStandin, tmp_path: Path) -> None:
    artifact_id = new_artifact(registry.api_url)
    cfg = config(registry, tmp_path, "--model-artifact-id", artifact_id)
    source = MemorySource(MODEL, fail_after={"weights.bin": 1000})
    destination = MemoryDestination()
    with pytest.raises(SourceError, match="weights.bin"):
        await run(plan(cfg), source, destination)
    assert destination.abort_calls == 1
    assert (await api(registry, f"/model_artifacts/{artifact_id}"))["state"] == "ABANDONED"


async def test_rerun_with_same_job_id_converges(registry: ModelRegistryStandin, tmp_path: Path) -> None:
    md = metadata(tmp_path, **{"RegisteredModel.name": "rerun", "ModelVersion.name": "1"})
    cfg = config(registry, tmp_path, "--model-upload-intent", "create_model", "--metadata-configmap-path", str(md),
                 "--job-id", "uid-42")  # fmt: skip
    first = await run(plan(cfg), MemorySource(MODEL), MemoryDestination(uri="s3://b/m"))
    second = await run(plan(cfg), MemorySource(MODEL), MemoryDestination(uri="s3://b/m"))
    assert (first.registered_model_id, first.model_version_id, first.model_artifact_id) == (
        second.registered_model_id, second.model_version_id, second.model_artifact_id,
    )  # fmt: skip
    models = await api(registry, "/registered_models")
    assert [m["name"] for m in models["items"]] == ["rerun"]


async def test_sigterm_cancels_the_transfer_and_cleans_up(registry: ModelRegistryStandin, tmp_path: Path) -> None:
    import os
    import signal

    artifact_id = new_artifact(registry.api_url, uri="s3://old/m", state="LIVE")
    cfg = config(registry, tmp_path, "--model-artifact-id", artifact_id)
    destination = MemoryDestination(hold=asyncio.Event())  # never released: only SIGTERM ends it
    planned = plan(cfg)

    import job.pipeline as pipeline

    original = pipeline.sync

    async def fake_sync(p: Plan, **_: Any) -> Any:
        return await original(
            p, source_factory=lambda _: MemorySource(MODEL), destination_factory=lambda _: destination
        )

    async def terminate_when_moving() -> None:
        await destination.wait_in_flight(1)
        os.kill(os.getpid(), signal.SIGTERM)

    pipeline.sync = fake_sync  # type: ignore[assignment]
    try:
        killer = asyncio.create_task(terminate_when_moving())
        with pytest.raises(Terminated, match="SIGTERM"):
            await run_until_terminated(planned)
        await killer
    finally:
        pipeline.sync = original
    assert destination.abort_calls == 1
    after = await api(registry, f"/model_artifacts/{artifact_id}")
    assert (after["state"], after["uri"]) == ("LIVE", "s3://old/m")  # the previous state is back
