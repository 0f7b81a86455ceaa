"""The three intents against the Model Registry stand-in served for real on 127.0.0.1 (tests/standin/).

The transfer is a stub returning a ``Committed``: what is under test is what ends up in the registry, read back
over HTTP (types, states, ids, counts), including failures, reruns of the same Kubernetes Job and a second job
that wants a name already taken.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from job.errors import ModelRegistryError
from job.intents import MARKER_DIGEST, MARKER_JOB_ID, MARKER_PREVIOUS_STATE, Intent, IntentSpec, run_intent
from job.model import Committed
from job.model_registry.client import ModelRegistryClient
from job.settings.metadata import ModelMetadata, load_metadata, to_custom_properties
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

TOKEN = "integration-token-0042"
DIGEST = "sha256:" + "cd" * 32
PUSHED = Committed("oci://127.0.0.1:5000/models/sentiment:1.0.0", DIGEST)


def s(value: str) -> dict[str, Any]:
    return {"metadataType": "MetadataStringValue", "string_value": value}


@pytest.fixture
def mr(registry_standin: ModelRegistryStandin) -> Iterator[ModelRegistryStandin]:
    """The shared stand-in, emptied, behind a token check like kube-rbac-proxy; restored afterwards."""
    registry_standin.reset()
    registry_standin.require_token = TOKEN
    yield registry_standin
    registry_standin.require_token = None
    registry_standin.clear_faults()


@pytest.fixture
async def registry(mr: ModelRegistryStandin) -> AsyncIterator[ModelRegistryClient]:
    async with ModelRegistryClient(mr.url, token=TOKEN, retry_attempts=3, retry_initial_wait=0, timeout=10) as c:
        yield c


@pytest.fixture
def metadata(tmp_path: Path) -> ModelMetadata:
    """The README's ConfigMap, mounted the kubelet way, with every custom-property value type."""
    stamp = tmp_path / "..2024_05_01_10_00_00.1"
    stamp.mkdir()
    data = {
        "RegisteredModel.name": "sentiment",
        "RegisteredModel.description": "Model description",
        "RegisteredModel.owner": "data-science-team",
        "RegisteredModel.custom_properties": json.dumps(
            {"team": "nlp", "size_mb": 438, "accuracy": 0.95, "public": False, "labels": {"lang": ["en", "de"]}}
        ),
        "ModelVersion.name": "1.0.0",
        "ModelVersion.description": "Initial release",
        "ModelVersion.customProperties": json.dumps({"f1_score": 0.93, "tags": ["a", "b"]}),
        "ModelArtifact.modelFormatName": "onnx",
        "ModelArtifact.model_format_version": "1.0",
        "ModelArtifact.storage_key": "s3-connection",
        "ModelArtifact.custom_properties": '{"validated": true}\n',
    }
    for key, value in data.items():
        (stamp / key).write_text(value)
        (tmp_path / key).symlink_to(f"..data/{key}")
    (tmp_path / "..data").symlink_to(stamp.name)
    return load_metadata(tmp_path)


class Transfer:
    """Stub transfer: counts calls and notes how many requests the registry had seen by then."""

    def __init__(self, mr: ModelRegistryStandin, result: Committed = PUSHED, error: Exception | None = None) -> None:
        self.mr, self.result, self.error = mr, result, error
        self.count = 0
        self.requests_before = -1

    async def __call__(self) -> Committed:
        self.count += 1
        self.requests_before = len(self.mr.requests)
        if self.error is not None:
            raise self.error
        return self.result


def counts(mr: ModelRegistryStandin) -> tuple[int, int, int]:
    return (
        len(mr.store.snapshot("registered-model")),
        len(mr.store.snapshot("model-version")),
        len(mr.store.snapshot("model-artifact")),
    )


async def test_create_model_end_to_end(
    mr: ModelRegistryStandin, registry: ModelRegistryClient, metadata: ModelMetadata
) -> None:
    transfer = Transfer(mr)
    spec = IntentSpec(Intent.CREATE_MODEL, metadata=metadata, job_id="job-a", author="ci-bot")
    result = await run_intent(spec, registry, transfer)

    assert transfer.count == 1 and transfer.requests_before == 1  # only the name lookup came first
    assert counts(mr) == (1, 1, 1)
    rm = await registry.get_registered_model(str(result.registered_model_id))
    mv = await registry.get_model_version(str(result.model_version_id))
    ma = await registry.get_model_artifact(str(result.model_artifact_id))

    assert (rm["name"], rm["description"], rm["owner"], rm["state"]) == (
        "sentiment",
        "Model description",
        "data-science-team",
        "LIVE",
    )
    assert rm["customProperties"] == {
        "team": s("nlp"),
        "size_mb": {"metadataType": "MetadataIntValue", "int_value": "438"},
        "accuracy": {"metadataType": "MetadataDoubleValue", "double_value": 0.95},
        "public": {"metadataType": "MetadataBoolValue", "bool_value": False},
        # sent as base64, answered as plain JSON text (§6)
        "labels": {"metadataType": "MetadataStructValue", "struct_value": '{"lang":["en","de"]}'},
        MARKER_JOB_ID: s("job-a"),
    }
    assert (mv["name"], mv["author"], mv["registeredModelId"], mv["state"]) == ("1.0.0", "ci-bot", rm["id"], "LIVE")
    assert mv["customProperties"]["tags"] == {
        "metadataType": "MetadataStructValue",
        "struct_value": '{"items":["a","b"]}',
    }
    assert ma["state"] == "LIVE" and ma["uri"] == PUSHED.uri
    assert (ma["name"], ma["modelFormatName"], ma["modelFormatVersion"], ma["storageKey"]) == (
        rm["name"],  # no ModelArtifact.name: upstream's fallback, the registered model's name
        "onnx",
        "1.0",
        "s3-connection",
    )
    assert ma["customProperties"] == {
        "validated": {"metadataType": "MetadataBoolValue", "bool_value": True},
        MARKER_JOB_ID: s("job-a"),
        MARKER_DIGEST: s(DIGEST),
    }
    assert [a["id"] for a in await registry.list_model_artifacts(mv["id"])] == [ma["id"]]
    assert result.to_termination_message() == {
        "intent": "create_model",
        "RegisteredModel": {"id": rm["id"]},
        "ModelVersion": {"id": mv["id"]},
        "ModelArtifact": {"id": ma["id"]},
        "uri": PUSHED.uri,
        "digest": DIGEST,
    }
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in mr.requests)


async def test_create_version_under_an_existing_model(
    mr: ModelRegistryStandin, registry: ModelRegistryClient, metadata: ModelMetadata
) -> None:
    model = await registry.create_registered_model({"name": "made-in-the-ui"})
    mr.clear_requests()
    transfer = Transfer(mr, Committed("s3://models/sentiment/1.0.0"))
    spec = IntentSpec(Intent.CREATE_VERSION, model_id=model["id"], metadata=metadata, job_id="job-b")

    result = await run_intent(spec, registry, transfer)

    assert transfer.requests_before == 2  # GET the model, look the version name up
    assert [(r.method, r.status) for r in mr.requests] == [("GET", 200), ("GET", 404), ("POST", 201), ("POST", 201)]
    versions = await registry.list_model_versions(model["id"])
    assert [v["id"] for v in versions] == [result.model_version_id]
    ma = await registry.get_model_artifact(str(result.model_artifact_id))
    assert (ma["state"], ma["uri"]) == ("LIVE", "s3://models/sentiment/1.0.0")
    assert MARKER_DIGEST not in ma["customProperties"]
    assert result.registered_model_id == model["id"] and result.digest is None
    assert (await registry.get_registered_model(model["id"]))["customProperties"] == {}  # not ours: untouched


async def _model_with_artifact(registry: ModelRegistryClient, **artifact: Any) -> tuple[str, str, str]:
    model = await registry.create_registered_model({"name": "m"})
    version = await registry.create_model_version(model["id"], {"name": "v1"})
    created = await registry.create_model_artifact(version["id"], {"name": "a", **artifact})
    return model["id"], version["id"], created["id"]


async def test_update_artifact(mr: ModelRegistryStandin, registry: ModelRegistryClient) -> None:
    props = to_custom_properties({"origin": {"run": 7}, "note": "keep me"})
    model_id, version_id, artifact_id = await _model_with_artifact(registry, customProperties=props)
    mr.clear_requests()
    transfer = Transfer(mr)
    spec = IntentSpec(
        Intent.UPDATE_ARTIFACT, model_id=model_id, model_version_id=version_id, model_artifact_id=artifact_id
    )

    result = await run_intent(spec, registry, transfer)

    patches = mr.calls("PATCH")
    assert transfer.requests_before == 2 and patches[0].json["state"] == "PENDING"  # GET, PATCH, then bytes
    assert [p.json["state"] for p in patches] == ["PENDING", "LIVE"]
    ma = await registry.get_model_artifact(artifact_id)
    assert (ma["state"], ma["uri"]) == ("LIVE", PUSHED.uri)
    assert ma["customProperties"] == {  # the struct survived being read and written back (§6)
        "origin": {"metadataType": "MetadataStructValue", "struct_value": '{"run":7}'},
        "note": s("keep me"),
        MARKER_DIGEST: s(DIGEST),
    }
    assert (result.registered_model_id, result.model_version_id, result.model_artifact_id) == (
        model_id,
        version_id,
        artifact_id,
    )


async def test_failed_transfer_leaves_no_pending_artifact(
    mr: ModelRegistryStandin, registry: ModelRegistryClient
) -> None:
    _, _, fresh = await _model_with_artifact(registry)
    boom = RuntimeError("source vanished")
    with pytest.raises(RuntimeError):
        await run_intent(
            IntentSpec(Intent.UPDATE_ARTIFACT, model_artifact_id=fresh), registry, Transfer(mr, error=boom)
        )
    ma = await registry.get_model_artifact(fresh)
    assert ma["state"] == "ABANDONED" and "uri" not in ma
    assert MARKER_PREVIOUS_STATE not in ma["customProperties"]

    version = await registry.find_model_version("v1", "1")
    assert version is not None
    live = await registry.create_model_artifact(version["id"], {"name": "b", "uri": "s3://old/b", "state": "LIVE"})
    with pytest.raises(RuntimeError):
        await run_intent(
            IntentSpec(Intent.UPDATE_ARTIFACT, model_artifact_id=live["id"]), registry, Transfer(mr, error=boom)
        )
    ma = await registry.get_model_artifact(live["id"])
    assert (ma["state"], ma["uri"]) == ("LIVE", "s3://old/b")


async def test_update_artifact_rerun_after_a_pod_died_while_pending(
    mr: ModelRegistryStandin, registry: ModelRegistryClient
) -> None:
    _, _, artifact_id = await _model_with_artifact(registry, uri="s3://old/a", state="LIVE")
    spec = IntentSpec(Intent.UPDATE_ARTIFACT, model_artifact_id=artifact_id, job_id="job-c")
    # First pod: the transfer fails and the registry is unreachable for the cleanup, as if the pod had died.

    async def transfer_then_outage() -> Committed:
        mr.fail_next("PATCH", rf"/model_artifacts/{artifact_id}$", 503, times=3)  # every restore attempt
        raise RuntimeError("pod killed")

    with pytest.raises(RuntimeError):
        await run_intent(spec, registry, transfer_then_outage)
    stuck = await registry.get_model_artifact(artifact_id)
    assert stuck["state"] == "PENDING"
    assert stuck["customProperties"][MARKER_PREVIOUS_STATE] == s("LIVE")

    # The retried pod converges: LIVE, new uri, recorded state consumed.
    result = await run_intent(spec, registry, Transfer(mr))
    ma = await registry.get_model_artifact(artifact_id)
    assert (ma["state"], ma["uri"]) == ("LIVE", PUSHED.uri)
    assert MARKER_PREVIOUS_STATE not in ma["customProperties"]
    assert ma["customProperties"][MARKER_JOB_ID] == s("job-c")
    assert result.model_artifact_id == artifact_id


async def test_create_model_rerun_with_the_same_job_id_converges(
    mr: ModelRegistryStandin, registry: ModelRegistryClient, metadata: ModelMetadata
) -> None:
    spec = IntentSpec(Intent.CREATE_MODEL, metadata=metadata, job_id="job-d")
    # First pod: model and version created, then the registry fails on the artifact (all retries).
    mr.fail_next("POST", r"/model_versions/\d+/artifacts$", 500, times=3)
    with pytest.raises(ModelRegistryError, match="500"):
        await run_intent(spec, registry, Transfer(mr))
    assert counts(mr) == (1, 1, 0)

    second = await run_intent(spec, registry, Transfer(mr))
    assert counts(mr) == (1, 1, 1)
    third = await run_intent(spec, registry, Transfer(mr))  # a rerun after full success
    assert counts(mr) == (1, 1, 1)
    assert second == third
    ma = await registry.get_model_artifact(str(third.model_artifact_id))
    assert (ma["state"], ma["uri"]) == ("LIVE", PUSHED.uri)


async def test_another_job_cannot_take_a_used_name_and_moves_no_byte(
    mr: ModelRegistryStandin, registry: ModelRegistryClient, metadata: ModelMetadata
) -> None:
    await run_intent(IntentSpec(Intent.CREATE_MODEL, metadata=metadata, job_id="job-e"), registry, Transfer(mr))
    before = mr.store.snapshot()
    transfer = Transfer(mr)
    with pytest.raises(ModelRegistryError) as info:
        await run_intent(IntentSpec(Intent.CREATE_MODEL, metadata=metadata, job_id="job-f"), registry, transfer)
    assert str(info.value).startswith("registered model 'sentiment' already exists (id 1); ")
    assert "another model-sync job (job-e)" in str(info.value)
    assert transfer.count == 0
    assert mr.store.snapshot() == before

    model_id = str(before[0]["id"])
    spec = IntentSpec(Intent.CREATE_VERSION, model_id=model_id, metadata=metadata, job_id="job-f")
    with pytest.raises(ModelRegistryError, match=r"model version '1.0.0' of registered model 1 already exists"):
        await run_intent(spec, registry, transfer)
    assert transfer.count == 0


async def test_transient_registry_errors_are_retried_without_duplicates(
    mr: ModelRegistryStandin, registry: ModelRegistryClient, metadata: ModelMetadata
) -> None:
    mr.fail_next("POST", r"/registered_models$", 503, headers={"Retry-After": "0"})
    mr.fail_next("GET", r"/registered_model$", 502, body="bad gateway")
    await run_intent(IntentSpec(Intent.CREATE_MODEL, metadata=metadata, job_id="job-g"), registry, Transfer(mr))
    assert counts(mr) == (1, 1, 1)
    assert [r.status for r in mr.calls("POST", r"/registered_models$")] == [503, 201]


async def test_wrong_token_is_reported_without_the_token(mr: ModelRegistryStandin) -> None:
    async with ModelRegistryClient(mr.url, token="wrong-token-123456", retry_initial_wait=0) as client:
        with pytest.raises(ModelRegistryError) as info:
            await client.get_model_artifact("1")
    assert str(info.value) == "getting model artifact 1: 401 Unauthorized: Unauthorized"
    assert "wrong-token" not in str(info.value)
