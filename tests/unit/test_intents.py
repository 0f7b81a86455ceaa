"""The three intents against respx: exact request order, cleanup on failure and cancellation, reruns."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from job.errors import ConfigError, ModelRegistryError, SourceError
from job.intents import (
    MARKER_DIGEST,
    MARKER_JOB_ID,
    MARKER_PREVIOUS_STATE,
    Intent,
    IntentResult,
    IntentSpec,
    run_intent,
    validate_spec,
)
from job.model import Committed
from job.model_registry.client import ModelRegistryClient
from job.settings.metadata import ModelArtifactMeta, ModelMetadata, ModelVersionMeta, RegisteredModelMeta

BASE = "http://registry.test"
PREFIX = "/api/model_registry/v1"
JOB = "job-uid-1"
DIGEST = "sha256:" + "ab" * 32
NEW = Committed(uri="oci://quay.io/org/model:1", digest=DIGEST)


def s(value: str) -> dict[str, Any]:
    return {"metadataType": "MetadataStringValue", "string_value": value}


def not_found(what: str = "x") -> httpx.Response:
    return httpx.Response(404, json={"code": "Not Found", "message": f"no {what} found: not found"})


def calls(router: respx.MockRouter) -> list[tuple[str, str]]:
    return [(c.request.method, c.request.url.path.removeprefix(PREFIX)) for c in router.calls]


def bodies(route: respx.Route) -> list[Any]:
    return [json.loads(c.request.content) for c in route.calls]


class Transfer:
    """A transfer() that records which requests had happened when it was called."""

    def __init__(self, router: respx.MockRouter, error: BaseException | None = None, block: bool = False) -> None:
        self.router, self.error, self.block = router, error, block
        self.calls_before: list[tuple[str, str]] | None = None
        self.count = 0
        self.started = asyncio.Event()

    async def __call__(self) -> Committed:
        self.count += 1
        self.calls_before = calls(self.router)
        self.started.set()
        if self.block:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return NEW


META = ModelMetadata(
    registered_model=RegisteredModelMeta(name="m", description="d", custom_properties={"team": s("nlp")}),
    model_version=ModelVersionMeta(name="v1", custom_properties={"acc": s("0.9")}),
    model_artifact=ModelArtifactMeta(model_format_name="onnx", model_format_version="1"),
)


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE + PREFIX, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def registry() -> AsyncIterator[ModelRegistryClient]:
    async with ModelRegistryClient(BASE, token="test-token-123", retry_attempts=2, retry_initial_wait=0) as client:
        yield client


# -- validate_spec -------------------------------------------------------------------------------------

NO_RM_NAME = ModelMetadata(model_version=ModelVersionMeta(name="v"))
NO_MV_NAME = ModelMetadata(registered_model=RegisteredModelMeta(name="m"))


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        (IntentSpec(Intent.UPDATE_ARTIFACT), ["MODEL_SYNC_MODEL_ARTIFACT_ID", "--model-artifact-id"]),
        (IntentSpec(Intent.CREATE_MODEL), ["MODEL_SYNC_METADATA_CONFIGMAP_PATH", "--metadata-configmap-path"]),
        (
            IntentSpec(Intent.CREATE_MODEL, metadata=NO_RM_NAME),
            ["RegisteredModel.name", "MODEL_SYNC_METADATA_CONFIGMAP_PATH"],
        ),
        (IntentSpec(Intent.CREATE_MODEL, metadata=NO_MV_NAME), ["ModelVersion.name", "--metadata-configmap-path"]),
        (IntentSpec(Intent.CREATE_VERSION, metadata=META), ["MODEL_SYNC_MODEL_ID", "--model-id"]),
        (IntentSpec(Intent.CREATE_VERSION, model_id="1"), ["MODEL_SYNC_METADATA_CONFIGMAP_PATH"]),
        (IntentSpec(Intent.CREATE_VERSION, model_id="1", metadata=NO_MV_NAME), ["ModelVersion.name"]),
        (IntentSpec(Intent.UPDATE_ARTIFACT, model_artifact_id="x7"), ["model artifact id 'x7'"]),
        (
            IntentSpec(
                Intent.CREATE_VERSION,
                model_id="1",
                metadata=ModelMetadata(
                    registered_model=RegisteredModelMeta(id="2"), model_version=ModelVersionMeta(name="v")
                ),
            ),
            ["MODEL_SYNC_MODEL_ID / --model-id is 1", "RegisteredModel.id is 2"],
        ),
    ],
)
async def test_validate_spec_names_the_missing_setting(
    api: respx.MockRouter, spec: IntentSpec, names: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        validate_spec(spec)
    for name in names:
        assert name in str(info.value)
    # run_intent validates too, before any request or transfer
    transfer = Transfer(api)
    async with ModelRegistryClient(BASE, token=None) as registry:
        with pytest.raises(ConfigError):
            await run_intent(spec, registry, transfer)
    assert not api.calls and transfer.count == 0


@pytest.mark.parametrize(
    "spec",
    [
        IntentSpec(Intent.UPDATE_ARTIFACT, model_artifact_id="7"),
        IntentSpec(Intent.UPDATE_ARTIFACT, metadata=ModelMetadata(model_artifact=ModelArtifactMeta(id="7"))),
        IntentSpec(Intent.CREATE_MODEL, metadata=META),
        IntentSpec(Intent.CREATE_VERSION, model_id="1", metadata=META),
        IntentSpec(
            Intent.CREATE_VERSION,
            metadata=ModelMetadata(
                registered_model=RegisteredModelMeta(id="1"), model_version=ModelVersionMeta(name="v")
            ),
        ),
    ],
)
def test_validate_spec_accepts_complete_specs(spec: IntentSpec) -> None:
    validate_spec(spec)


def test_termination_message() -> None:
    """Upstream's nested shape, which the Kubeflow UI backend parses (tests/consumers run its Go struct)."""
    result = IntentResult(Intent.CREATE_MODEL, "1", "2", "3", "s3://b/k/", None)
    assert result.to_termination_message() == {
        "intent": "create_model",
        "RegisteredModel": {"id": "1"},
        "ModelVersion": {"id": "2"},
        "ModelArtifact": {"id": "3"},
        "uri": "s3://b/k/",
    }
    with_digest = IntentResult(Intent.UPDATE_ARTIFACT, None, None, "3", NEW.uri, NEW.digest)
    assert with_digest.to_termination_message() == {
        "intent": "update_artifact",
        "ModelArtifact": {"id": "3"},  # each entity only when its id is known
        "uri": NEW.uri,
        "digest": NEW.digest,
    }


# -- update_artifact -----------------------------------------------------------------------------------


def artifact(
    state: str | None = "LIVE", uri: str | None = "s3://old/model", props: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "7", "name": "a", "artifactType": "model-artifact", "customProperties": props or {}}
    if state is not None:
        body["state"] = state
    if uri is not None:
        body["uri"] = uri
    return body


UPDATE = IntentSpec(Intent.UPDATE_ARTIFACT, model_id="1", model_version_id="2", model_artifact_id="7", job_id=JOB)


async def test_update_artifact_pending_transfer_live(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    struct_read = {"metadataType": "MetadataStructValue", "struct_value": '{"k":1}'}
    api.get("/model_artifacts/7").respond(
        json=artifact(props={"keep": s("me"), "st": struct_read, MARKER_DIGEST: s("sha256:old")})
    )
    patch = api.patch("/model_artifacts/7").respond(json={"id": "7"})
    transfer = Transfer(api)

    result = await run_intent(UPDATE, registry, transfer)

    assert calls(api) == [
        ("GET", "/model_artifacts/7"),
        ("PATCH", "/model_artifacts/7"),
        ("PATCH", "/model_artifacts/7"),
    ]
    assert transfer.calls_before == calls(api)[:2]  # PENDING before any byte moved
    pending, live = bodies(patch)
    struct_sent = {"metadataType": "MetadataStructValue", "struct_value": "eyJrIjoxfQ=="}  # base64 again (§6)
    assert pending == {
        "state": "PENDING",
        "customProperties": {
            "keep": s("me"),
            "st": struct_sent,
            MARKER_DIGEST: s("sha256:old"),
            MARKER_JOB_ID: s(JOB),
            MARKER_PREVIOUS_STATE: s("LIVE"),
        },
    }
    assert live == {
        "state": "LIVE",
        "uri": NEW.uri,
        "customProperties": {"keep": s("me"), "st": struct_sent, MARKER_JOB_ID: s(JOB), MARKER_DIGEST: s(DIGEST)},
    }
    assert result == IntentResult(Intent.UPDATE_ARTIFACT, "1", "2", "7", NEW.uri, NEW.digest)


async def test_update_artifact_without_digest_drops_a_stale_one(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    api.get("/model_artifacts/7").respond(json=artifact(props={MARKER_DIGEST: s("sha256:old")}))
    patch = api.patch("/model_artifacts/7").respond(json={"id": "7"})

    async def to_s3() -> Committed:
        return Committed("s3://bucket/models/m/", storage_path="models/m/")

    result = await run_intent(IntentSpec(Intent.UPDATE_ARTIFACT, model_artifact_id="7"), registry, to_s3)
    live = bodies(patch)[-1]
    assert live == {
        "state": "LIVE",
        "uri": "s3://bucket/models/m/",
        "storagePath": "models/m/",  # the previous one named the old location
        "customProperties": {},
    }
    assert result.digest is None and result.registered_model_id is None


async def test_update_artifact_failure_restores_the_storage_path(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    api.get("/model_artifacts/7").respond(json=artifact() | {"storagePath": "old/"})
    patch = api.patch("/model_artifacts/7").mock(side_effect=[httpx.Response(200, json={"id": "7"})] * 3)

    async def lost_answer() -> Committed:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await run_intent(IntentSpec(Intent.UPDATE_ARTIFACT, model_artifact_id="7"), registry, lost_answer)
    restore = bodies(patch)[-1]
    assert restore["state"] == "LIVE" and restore["storagePath"] == "old/" and restore["uri"] == "s3://old/model"


async def test_create_records_the_storage_path_unless_the_configmap_set_one(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    async def to_s3() -> Committed:
        return Committed("s3://bucket/models/m/", storage_path="models/m/")

    for given, recorded in ((None, "models/m/"), ("custom/", "custom/")):
        api.reset()
        api.get("/registered_model").mock(return_value=not_found())
        _, _, ma = create_routes(api)
        meta = ModelMetadata(
            registered_model=RegisteredModelMeta(name="m"),
            model_version=ModelVersionMeta(name="v1"),
            model_artifact=ModelArtifactMeta(storage_key="s3-conn", storage_path=given),
        )
        await run_intent(IntentSpec(Intent.CREATE_MODEL, metadata=meta), registry, to_s3)
        body = bodies(ma)[-1]
        assert (body["storageKey"], body["storagePath"], body["uri"]) == ("s3-conn", recorded, "s3://bucket/models/m/")


async def test_update_artifact_missing_artifact(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    api.get("/model_artifacts/7").mock(return_value=not_found("artifact"))
    transfer = Transfer(api)
    with pytest.raises(ModelRegistryError, match=r"^getting model artifact 7: 404 Not Found"):
        await run_intent(UPDATE, registry, transfer)
    assert transfer.count == 0
    assert calls(api) == [("GET", "/model_artifacts/7")]


async def test_transfer_failure_abandons_an_artifact_that_had_no_uri(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    api.get("/model_artifacts/7").respond(json=artifact(state="UNKNOWN", uri=None, props={"keep": s("x")}))
    patch = api.patch("/model_artifacts/7").respond(json={"id": "7"})
    boom = RuntimeError("source went away")
    with pytest.raises(RuntimeError) as info:
        await run_intent(UPDATE, registry, Transfer(api, error=boom))
    assert info.value is boom
    assert [b["state"] for b in bodies(patch)] == ["PENDING", "ABANDONED"]
    assert bodies(patch)[-1] == {"state": "ABANDONED", "customProperties": {"keep": s("x")}}


async def test_transfer_failure_restores_the_previous_state_of_an_artifact_with_a_uri(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    api.get("/model_artifacts/7").respond(json=artifact(state="LIVE", uri="s3://old/model"))
    patch = api.patch("/model_artifacts/7").respond(json={"id": "7"})
    with pytest.raises(RuntimeError):
        await run_intent(UPDATE, registry, Transfer(api, error=RuntimeError("x")))
    assert bodies(patch)[-1] == {"state": "LIVE", "uri": "s3://old/model", "customProperties": {}}


async def test_registry_failure_on_live_patch_restores_and_re_raises(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    api.get("/model_artifacts/7").respond(json=artifact(state="UNKNOWN", uri=None))
    patch = api.patch("/model_artifacts/7").mock(
        side_effect=[
            httpx.Response(200, json={"id": "7"}),
            httpx.Response(400, json={"code": "Bad Request", "message": "json: unknown field"}),
            httpx.Response(200, json={"id": "7"}),
        ]
    )
    with pytest.raises(ModelRegistryError, match="updating model artifact 7: 400 Bad Request"):
        await run_intent(UPDATE, registry, Transfer(api))
    assert [b["state"] for b in bodies(patch)] == ["PENDING", "LIVE", "ABANDONED"]


async def test_cleanup_failure_is_logged_not_raised_over_the_original(
    api: respx.MockRouter, registry: ModelRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    api.get("/model_artifacts/7").respond(json=artifact(state="UNKNOWN", uri=None))
    api.patch("/model_artifacts/7").mock(
        side_effect=[httpx.Response(200, json={"id": "7"}), httpx.Response(503), httpx.Response(503)]
    )
    boom = RuntimeError("disk full")
    with pytest.raises(RuntimeError) as info:
        await run_intent(UPDATE, registry, Transfer(api, error=boom))
    assert info.value is boom
    assert "model artifact 7: the restore after the failure did not complete" in caplog.text


async def test_an_artifact_left_pending_is_named_in_the_error_itself(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    """The registry refuses every write after PENDING: the one-line error (and so the termination message) says
    the artifact is still PENDING and that a rerun of the same Job restores it, not only a log line."""
    api.get("/model_artifacts/7").respond(json=artifact(state="UNKNOWN", uri=None))
    api.patch("/model_artifacts/7").mock(
        side_effect=[httpx.Response(200, json={"id": "7"})] + [httpx.Response(503)] * 10
    )
    with pytest.raises(SourceError) as info:
        await run_intent(UPDATE, registry, Transfer(api, error=SourceError("reading w.bin: connection reset")))
    assert str(info.value) == (
        "reading w.bin: connection reset; model artifact 7 is still PENDING: rerun the same Job "
        "(same MODEL_SYNC_JOB_ID) to restore it"
    )


async def test_cancellation_restores_the_artifact_then_propagates(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    api.get("/model_artifacts/7").respond(json=artifact(state="UNKNOWN", uri=None))
    patch = api.patch("/model_artifacts/7").respond(json={"id": "7"})
    transfer = Transfer(api, block=True)
    task = asyncio.create_task(run_intent(UPDATE, registry, transfer))
    await asyncio.wait_for(transfer.started.wait(), 5)
    task.cancel()  # what SIGTERM does
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [b["state"] for b in bodies(patch)] == ["PENDING", "ABANDONED"]


async def test_a_second_cancellation_does_not_cut_the_cleanup_short(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    api.get("/model_artifacts/7").respond(json=artifact(state="UNKNOWN", uri=None))
    restoring = asyncio.Event()
    states: list[str] = []

    async def patch(request: httpx.Request) -> httpx.Response:
        states.append(json.loads(request.content)["state"])
        if states[-1] == "ABANDONED":
            restoring.set()
            await asyncio.sleep(0.1)  # a slow registry while the second SIGTERM arrives
            states.append("restored")
        return httpx.Response(200, json={"id": "7"})

    api.patch("/model_artifacts/7").mock(side_effect=patch)
    transfer = Transfer(api, block=True)
    task = asyncio.create_task(run_intent(UPDATE, registry, transfer))
    await asyncio.wait_for(transfer.started.wait(), 5)
    task.cancel()
    await asyncio.wait_for(restoring.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert states == ["PENDING", "ABANDONED", "restored"]


async def test_cleanup_is_bounded_in_time(
    api: respx.MockRouter, registry: ModelRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    api.get("/model_artifacts/7").respond(json=artifact(state="UNKNOWN", uri=None))

    async def patch(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["state"] == "ABANDONED":
            await asyncio.sleep(30)  # a registry that hangs
        return httpx.Response(200, json={"id": "7"})

    api.patch("/model_artifacts/7").mock(side_effect=patch)
    boom = RuntimeError("x")
    with pytest.raises(RuntimeError) as info:
        await run_intent(UPDATE, registry, Transfer(api, error=boom), cleanup_timeout=0.1)
    assert info.value is boom
    assert "the restore after the failure did not complete: timed out after 0 s" in caplog.text


async def test_rerun_finds_pending_artifact_and_converges(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    # The dead pod left it PENDING, with the state it had before recorded.
    api.get("/model_artifacts/7").respond(
        json=artifact(
            state="PENDING", uri="s3://old/model", props={MARKER_JOB_ID: s(JOB), MARKER_PREVIOUS_STATE: s("LIVE")}
        )
    )
    patch = api.patch("/model_artifacts/7").respond(json={"id": "7"})
    await run_intent(UPDATE, registry, Transfer(api))
    pending, live = bodies(patch)
    assert pending["customProperties"][MARKER_PREVIOUS_STATE] == s("LIVE")
    assert live["state"] == "LIVE" and MARKER_PREVIOUS_STATE not in live["customProperties"]


async def test_rerun_failure_restores_the_recorded_state(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    api.get("/model_artifacts/7").respond(
        json=artifact(state="PENDING", uri="s3://old/model", props={MARKER_PREVIOUS_STATE: s("LIVE")})
    )
    patch = api.patch("/model_artifacts/7").respond(json={"id": "7"})
    with pytest.raises(RuntimeError):
        await run_intent(UPDATE, registry, Transfer(api, error=RuntimeError("x")))
    assert bodies(patch)[-1] == {"state": "LIVE", "uri": "s3://old/model", "customProperties": {}}


async def test_pending_with_nothing_recorded_is_abandoned_on_failure(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    api.get("/model_artifacts/7").respond(json=artifact(state="PENDING", uri="s3://old/model"))
    patch = api.patch("/model_artifacts/7").respond(json={"id": "7"})
    with pytest.raises(RuntimeError):
        await run_intent(UPDATE, registry, Transfer(api, error=RuntimeError("x")))
    assert bodies(patch)[-1]["state"] == "ABANDONED"


# -- create_model / create_version ---------------------------------------------------------------------

CREATE = IntentSpec(Intent.CREATE_MODEL, metadata=META, job_id=JOB, author="spec-author")


def mine(entity_id: str, name: str, job: str | None = JOB, **extra: Any) -> dict[str, Any]:
    props = {MARKER_JOB_ID: s(job)} if job else {}
    return {"id": entity_id, "name": name, "customProperties": props, **extra}


def create_routes(api: respx.MockRouter) -> tuple[respx.Route, respx.Route, respx.Route]:
    rm = api.post("/registered_models").respond(201, json={"id": "1", "name": "m"})
    mv = api.post("/registered_models/1/versions").respond(201, json={"id": "2", "name": "v1"})
    ma = api.post("/model_versions/2/artifacts").respond(201, json={"id": "3", "name": "m"})
    return rm, mv, ma


async def test_create_model_request_sequence(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    api.get("/registered_model").mock(return_value=not_found("registered models"))
    rm, mv, ma = create_routes(api)
    transfer = Transfer(api)

    result = await run_intent(CREATE, registry, transfer)

    assert calls(api) == [
        ("GET", "/registered_model"),
        ("POST", "/registered_models"),
        ("POST", "/registered_models/1/versions"),
        ("POST", "/model_versions/2/artifacts"),
    ]
    assert transfer.calls_before == [("GET", "/registered_model")]
    marker = {MARKER_JOB_ID: s(JOB)}
    assert bodies(rm) == [{"name": "m", "description": "d", "customProperties": {"team": s("nlp"), **marker}}]
    assert bodies(mv) == [
        {
            "name": "v1",
            "author": "spec-author",
            "customProperties": {"acc": s("0.9"), **marker},
            "registeredModelId": "1",
        }
    ]
    assert bodies(ma) == [
        {
            "modelFormatName": "onnx",
            "modelFormatVersion": "1",
            "name": "m",  # upstream's fallback: the registered model's name
            "uri": NEW.uri,
            "customProperties": {**marker, MARKER_DIGEST: s(DIGEST)},
            "state": "LIVE",
            "artifactType": "model-artifact",
        }
    ]
    assert result == IntentResult(Intent.CREATE_MODEL, "1", "2", "3", NEW.uri, NEW.digest)


async def test_metadata_author_wins_over_spec_author(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    api.get("/registered_model").mock(return_value=not_found())
    _, mv, _ = create_routes(api)
    meta = ModelMetadata(
        registered_model=RegisteredModelMeta(name="m"), model_version=ModelVersionMeta(name="v1", author="jane")
    )
    await run_intent(IntentSpec(Intent.CREATE_MODEL, metadata=meta, author="bot"), registry, Transfer(api))
    assert bodies(mv)[0]["author"] == "jane"
    assert "customProperties" not in bodies(mv)[0] or bodies(mv)[0]["customProperties"] == {}  # no job id, no marker


@pytest.mark.parametrize(
    ("existing", "why"),
    [
        (mine("7", "m", job=None), "it was not created by model-sync"),
        (mine("7", "m", job="other-job"), "created by another model-sync job (other-job)"),
    ],
)
async def test_create_model_fails_fast_when_the_name_is_taken(
    api: respx.MockRouter, registry: ModelRegistryClient, existing: dict[str, Any], why: str
) -> None:
    api.get("/registered_model").respond(json=existing)
    transfer = Transfer(api)
    with pytest.raises(ModelRegistryError) as info:
        await run_intent(CREATE, registry, transfer)
    assert str(info.value).startswith("registered model 'm' already exists (id 7); ")
    assert why in str(info.value)
    assert "MODEL_SYNC_MODEL_ID=7" in str(info.value)
    assert transfer.count == 0
    assert calls(api) == [("GET", "/registered_model")]


async def test_create_model_without_job_id_cannot_reuse(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    api.get("/registered_model").respond(json=mine("7", "m"))
    transfer = Transfer(api)
    with pytest.raises(ModelRegistryError, match="without a job id"):
        await run_intent(IntentSpec(Intent.CREATE_MODEL, metadata=META), registry, transfer)
    assert transfer.count == 0


async def test_rerun_after_full_success_reuses_everything(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    api.get("/registered_model").respond(json=mine("1", "m"))
    api.get("/model_version", params={"name": "v1", "parentResourceId": "1"}).respond(json=mine("2", "v1"))
    api.get("/model_artifact", params={"name": "m", "parentResourceId": "2"}).respond(
        json=mine("3", "m", state="LIVE", uri=NEW.uri)
    )
    patch = api.patch("/model_artifacts/3").respond(json={"id": "3"})
    transfer = Transfer(api)

    result = await run_intent(CREATE, registry, transfer)

    assert calls(api) == [
        ("GET", "/registered_model"),
        ("GET", "/model_version"),
        ("GET", "/model_artifact"),
        ("PATCH", "/model_artifacts/3"),
    ]
    assert transfer.calls_before == calls(api)[:3]
    (body,) = bodies(patch)
    assert body["state"] == "LIVE" and body["uri"] == NEW.uri and "name" not in body
    assert body["customProperties"][MARKER_JOB_ID] == s(JOB)
    assert result == IntentResult(Intent.CREATE_MODEL, "1", "2", "3", NEW.uri, NEW.digest)


async def test_rerun_after_model_was_created_continues(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    api.get("/registered_model").respond(json=mine("1", "m"))
    api.get("/model_version").mock(return_value=not_found("model version"))
    rm, _, _ = create_routes(api)
    result = await run_intent(CREATE, registry, Transfer(api))
    assert not rm.called
    assert calls(api) == [
        ("GET", "/registered_model"),
        ("GET", "/model_version"),
        ("POST", "/registered_models/1/versions"),
        ("POST", "/model_versions/2/artifacts"),
    ]
    assert (result.registered_model_id, result.model_version_id, result.model_artifact_id) == ("1", "2", "3")


async def test_rerun_with_a_foreign_artifact_in_our_version_fails_before_transfer(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    api.get("/registered_model").respond(json=mine("1", "m"))
    api.get("/model_version").respond(json=mine("2", "v1"))
    api.get("/model_artifact").respond(json=mine("3", "m", job=None))
    transfer = Transfer(api)
    with pytest.raises(ModelRegistryError, match=r"model artifact 'm' of model version 2 already exists \(id 3\)"):
        await run_intent(CREATE, registry, transfer)
    assert transfer.count == 0


async def test_conflict_while_creating_is_reported(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    # Someone took the name between our preflight and our create.
    api.get("/registered_model").mock(return_value=not_found())
    api.post("/registered_models").respond(
        409, json={"code": "Conflict", "message": "registered model with name m already exists: conflict"}
    )
    transfer = Transfer(api)
    with pytest.raises(ModelRegistryError) as info:
        await run_intent(CREATE, registry, transfer)
    assert info.value.status == 409
    assert "creating registered model 'm': 409 Conflict: registered model with name m already exists" in str(info.value)
    assert transfer.count == 1


async def test_transfer_failure_in_create_model_writes_nothing(
    api: respx.MockRouter, registry: ModelRegistryClient
) -> None:
    api.get("/registered_model").mock(return_value=not_found())
    with pytest.raises(RuntimeError):
        await run_intent(CREATE, registry, Transfer(api, error=RuntimeError("x")))
    assert calls(api) == [("GET", "/registered_model")]


VERSION = IntentSpec(Intent.CREATE_VERSION, model_id="1", metadata=META, job_id=JOB)


async def test_create_version_request_sequence(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    api.get("/registered_models/1").respond(json={"id": "1", "name": "someone's model", "customProperties": {}})
    api.get("/model_version").mock(return_value=not_found())
    _, mv, ma = create_routes(api)
    transfer = Transfer(api)
    result = await run_intent(VERSION, registry, transfer)
    assert calls(api) == [
        ("GET", "/registered_models/1"),
        ("GET", "/model_version"),
        ("POST", "/registered_models/1/versions"),
        ("POST", "/model_versions/2/artifacts"),
    ]
    assert transfer.calls_before == calls(api)[:2]
    assert bodies(mv)[0]["customProperties"][MARKER_JOB_ID] == s(JOB)
    assert bodies(ma)[0]["state"] == "LIVE"
    assert bodies(ma)[0]["name"] == "someone's model"  # no ModelArtifact.name: the registered model's name
    assert result == IntentResult(Intent.CREATE_VERSION, "1", "2", "3", NEW.uri, NEW.digest)


async def test_create_version_of_a_missing_model(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    api.get("/registered_models/1").mock(return_value=not_found("registered model"))
    transfer = Transfer(api)
    with pytest.raises(ModelRegistryError, match=r"^getting registered model 1: 404"):
        await run_intent(VERSION, registry, transfer)
    assert transfer.count == 0


async def test_create_version_name_taken_fails_fast(api: respx.MockRouter, registry: ModelRegistryClient) -> None:
    api.get("/registered_models/1").respond(json={"id": "1", "name": "m"})
    api.get("/model_version").respond(json=mine("4", "v1", job="other-job"))
    transfer = Transfer(api)
    with pytest.raises(ModelRegistryError, match=r"^model version 'v1' of registered model 1 already exists \(id 4\)"):
        await run_intent(VERSION, registry, transfer)
    assert transfer.count == 0
