"""The three upload intents (``create_model``, ``create_version``, ``update_artifact``), each safe to rerun.

Order of work, for every intent: :func:`validate_spec` (no network) -> preflight reads -> ``transfer()`` ->
registry writes. No byte moves before the preflight has shown the registry will accept the result.

update_artifact
    GET the artifact, PATCH it to PENDING (before any byte moves), ``transfer()``, PATCH it to LIVE with the
    new ``uri``. If anything fails or the job is cancelled, the artifact is not left PENDING: one that had
    a ``uri`` gets its previous state back, one that had none becomes ABANDONED. The previous state is also
    kept in the ``model_sync.previous_state`` custom property while PENDING, so a rerun after a killed pod
    (which finds the artifact PENDING) still knows what to restore.
create_model / create_version
    Preflight: the registered model name (create_model) and the version name under the model must be free.
    Then ``transfer()``, then create the RegisteredModel (create_model), the ModelVersion and the
    ModelArtifact (``uri``, state LIVE, the ConfigMap's metadata). Nothing is PENDING in these flows, so a
    failure needs no registry cleanup.

Reruns. Kubernetes retries a failed pod of a Job with the same job id (``MODEL_SYNC_JOB_ID``, the Job's
controller uid). Everything this job creates carries the custom property ``model_sync.job_id``; a rerun that
finds its name taken by an entity with *its own* job id reuses it and carries on, so a rerun converges on
exactly one RegisteredModel/ModelVersion/ModelArtifact, whatever step the dead pod reached. A name taken by
anything else fails the preflight. **Without a job id there is no reuse**: a rerun of create_model or
create_version after its entities were created fails with "already exists" (update_artifact converges
regardless).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from job.cleanup import run_to_end
from job.errors import ConfigError, ModelRegistryError, ModelSyncError
from job.model import Committed
from job.model_registry.client import Entity, ModelRegistryClient, checked_id
from job.settings.metadata import CustomProperties, ModelMetadata, writable_custom_properties
from job.settings.names import Intent

__all__ = [
    "MARKER_DIGEST",
    "MARKER_JOB_ID",
    "MARKER_PREVIOUS_STATE",
    "Intent",
    "IntentResult",
    "IntentSpec",
    "run_intent",
    "validate_spec",
]

logger = logging.getLogger(__name__)

MARKER_JOB_ID = "model_sync.job_id"
"""Custom property on every entity a job creates (and on artifacts it updates): the job id."""
MARKER_DIGEST = "model_sync.digest"
"""Custom property on the artifact: the OCI manifest digest of what was pushed (absent for S3)."""
MARKER_SIGNATURE = "model_sync.signature"
"""Custom property on the artifact: ``sha256:`` of the model's ``model.sig`` when the run signed it."""
MARKER_PREVIOUS_STATE = "model_sync.previous_state"
"""Custom property on an artifact while it is PENDING: the state to restore if the job fails."""

CLEANUP_TIMEOUT = 20.0
"""Seconds the restore of an artifact may take after a failure; it must fit a pod's termination grace."""

_SETTINGS = {
    "model_id": "MODEL_SYNC_MODEL_ID / --model-id",
    "model_artifact_id": "MODEL_SYNC_MODEL_ARTIFACT_ID / --model-artifact-id",
    "model_version_id": "MODEL_SYNC_MODEL_VERSION_ID / --model-version-id",
    "metadata": "MODEL_SYNC_METADATA_CONFIGMAP_PATH / --metadata-configmap-path",
}


@dataclass(frozen=True)
class IntentSpec:
    """Everything an intent needs besides the registry client and the transfer.

    Ids may also come from the ConfigMap (``RegisteredModel.id``, ``ModelVersion.id``, ``ModelArtifact.id``,
    which the Kubeflow UI writes); a setting and a ConfigMap id that disagree are a ``ConfigError``.
    """

    intent: Intent
    model_id: str | None = None
    model_version_id: str | None = None
    model_artifact_id: str | None = None
    metadata: ModelMetadata | None = None
    job_id: str | None = None
    author: str | None = None


@dataclass(frozen=True)
class IntentResult:
    """What the job recorded. update_artifact cannot learn an artifact's parents (GET /model_artifacts/{id}
    has none, §1), so there the model and version ids are the ones the spec gave, possibly None."""

    intent: Intent
    registered_model_id: str | None
    model_version_id: str | None
    model_artifact_id: str | None
    uri: str
    digest: str | None = None

    def to_termination_message(self) -> dict[str, Any]:
        """Upstream's termination-message JSON, plus ``uri`` and (when set) ``digest``.

        Upstream's shape is nested, ``{"intent": ..., "RegisteredModel": {"id": "1"}, "ModelVersion": {"id":
        "2"}, "ModelArtifact": {"id": "3"}}``, with each entity only when its id is known: the Kubeflow UI
        backend reads it with Go's ``json.Unmarshal`` into ``RegisteredModel *struct{ID string}`` and the like
        (kubeflow/hub ``clients/ui/bff/internal/repositories/model_transfer_jobs.go``).
        """
        message: dict[str, Any] = {"intent": str(self.intent)}
        for key, entity_id in (
            ("RegisteredModel", self.registered_model_id),
            ("ModelVersion", self.model_version_id),
            ("ModelArtifact", self.model_artifact_id),
        ):
            if entity_id:
                message[key] = {"id": entity_id}
        message["uri"] = self.uri
        if self.digest:
            message["digest"] = self.digest
        return message


def _result_properties(committed: Committed) -> dict[str, Any]:
    """The custom properties that describe what was written: the OCI digest, the signature's sha256."""
    properties = {}
    if committed.digest:
        properties[MARKER_DIGEST] = _string(committed.digest)
    if committed.signature:
        properties[MARKER_SIGNATURE] = _string(committed.signature)
    return properties


def _pick(given: str | None, from_map: str | None, setting: str, key: str) -> str | None:
    """The id from the setting, else from the ConfigMap; both set and different is a ConfigError."""
    if given and from_map and given != from_map:
        raise ConfigError(
            f"{_SETTINGS[setting]} is {given} but the metadata ConfigMap's {key} is {from_map}; "
            "set one or make them agree"
        )
    return given or from_map or None


def _ids(spec: IntentSpec) -> tuple[str | None, str | None, str | None]:
    """(registered model, model version, model artifact) ids from the settings or the ConfigMap."""
    meta = spec.metadata
    return (
        _pick(spec.model_id, meta.registered_model.id if meta else None, "model_id", "RegisteredModel.id"),
        _pick(spec.model_version_id, meta.model_version.id if meta else None, "model_version_id", "ModelVersion.id"),
        _pick(
            spec.model_artifact_id, meta.model_artifact.id if meta else None, "model_artifact_id", "ModelArtifact.id"
        ),
    )


def validate_spec(spec: IntentSpec) -> None:
    """Check that the intent has what it needs, before any network call. Raises ``ConfigError`` naming the
    env var and the arg to set."""
    intent = Intent(spec.intent)
    model_id, version_id, artifact_id = _ids(spec)
    for value, what in ((model_id, "registered model"), (version_id, "model version"), (artifact_id, "model artifact")):
        if value is not None:
            checked_id(value, what)
    if intent is Intent.UPDATE_ARTIFACT:
        if artifact_id is None:
            raise ConfigError(f"update_artifact needs the model artifact id: set {_SETTINGS['model_artifact_id']}")
        return
    if intent is Intent.CREATE_VERSION and model_id is None:
        raise ConfigError(f"create_version needs the registered model id: set {_SETTINGS['model_id']}")
    meta = spec.metadata
    if meta is None:
        raise ConfigError(f"{intent} needs model metadata: set {_SETTINGS['metadata']} to the mounted ConfigMap")
    if intent is Intent.CREATE_MODEL and not meta.registered_model.name:
        raise ConfigError(
            f"create_model needs RegisteredModel.name in the metadata ConfigMap ({_SETTINGS['metadata']})"
        )
    if not meta.model_version.name:
        raise ConfigError(f"{intent} needs ModelVersion.name in the metadata ConfigMap ({_SETTINGS['metadata']})")


async def run_intent(
    spec: IntentSpec,
    registry: ModelRegistryClient,
    transfer: Callable[[], Awaitable[Committed]],
    *,
    cleanup_timeout: float = CLEANUP_TIMEOUT,
    stop_cleanup_timeout: float | None = None,
) -> IntentResult:
    """Run the intent: preflight reads, then ``transfer()`` (called at most once), then the registry writes.

    Errors propagate unchanged, after the cleanup described in the module docstring; cancellation
    (SIGTERM) runs that cleanup too, shielded and bounded by ``stop_cleanup_timeout`` (default
    ``cleanup_timeout``), then propagates.
    """
    validate_spec(spec)
    limits = (cleanup_timeout, cleanup_timeout if stop_cleanup_timeout is None else stop_cleanup_timeout)
    if Intent(spec.intent) is Intent.UPDATE_ARTIFACT:
        return await _update_artifact(spec, registry, transfer, limits)
    return await _create(spec, registry, transfer)


# -- custom-property helpers -------------------------------------------------------------------------


def _string(value: str) -> dict[str, Any]:
    return {"metadataType": "MetadataStringValue", "string_value": value}


def _string_prop(props: Mapping[str, Any] | None, key: str) -> str | None:
    value = (props or {}).get(key)
    if isinstance(value, dict) and value.get("metadataType") == "MetadataStringValue":
        text = value.get("string_value")
        return text if isinstance(text, str) else None
    return None


def _job_marker(job_id: str | None) -> CustomProperties:
    return {MARKER_JOB_ID: _string(job_id)} if job_id else {}


# -- update_artifact ---------------------------------------------------------------------------------


async def _update_artifact(
    spec: IntentSpec,
    registry: ModelRegistryClient,
    transfer: Callable[[], Awaitable[Committed]],
    limits: tuple[float, float],
) -> IntentResult:
    """``limits``: seconds the restore may take after a failure, and after a cancellation (SIGTERM)."""
    model_id, version_id, artifact_id = _ids(spec)
    assert artifact_id is not None  # validate_spec
    artifact = await registry.get_model_artifact(artifact_id)
    # Re-sent with every PATCH (a PATCH replaces the whole set, §7), in the form the server accepts (§6).
    props = writable_custom_properties(artifact.get("customProperties"))
    previous_uri: str | None = artifact.get("uri") or None
    previous_state: str | None = artifact.get("state")
    previous_storage_path: str | None = artifact.get("storagePath") or None
    recorded = _string_prop(props, MARKER_PREVIOUS_STATE)
    if previous_state == "PENDING" and recorded:
        previous_state = recorded  # a pod of a job died mid-transfer: the state before it is recorded
    props.pop(MARKER_PREVIOUS_STATE, None)
    # No artifact stays PENDING: back to its old state if it had a uri, ABANDONED if it had none (or if
    # it was already PENDING with nothing recorded: then we cannot know what it was).
    keep = previous_uri and previous_state and previous_state != "PENDING"
    restore_state = previous_state if keep and previous_state else "ABANDONED"

    async def restore() -> None:
        changes: dict[str, Any] = {"customProperties": props}
        if previous_uri:
            changes["uri"] = previous_uri  # in case the LIVE PATCH landed but its answer was lost
        if previous_storage_path:
            changes["storagePath"] = previous_storage_path
        await registry.update_model_artifact(artifact_id, changes, state=restore_state)
        logger.info("model artifact %s restored to %s", artifact_id, restore_state)

    pending = {**props, **_job_marker(spec.job_id), MARKER_PREVIOUS_STATE: _string(previous_state or "UNKNOWN")}
    try:
        await registry.update_model_artifact(artifact_id, {"customProperties": pending}, state="PENDING")
        committed = await transfer()
        live = {**props, **_job_marker(spec.job_id)}
        live.pop(MARKER_DIGEST, None)  # a digest from an earlier push would now be wrong
        live.pop(MARKER_SIGNATURE, None)
        live.update(_result_properties(committed))
        update: dict[str, Any] = {"uri": committed.uri, "customProperties": live}
        if committed.storage_path:
            update["storagePath"] = committed.storage_path  # the old one named the previous location
        await registry.update_model_artifact(artifact_id, update, state="LIVE")
    except BaseException as exc:
        limit = limits[1] if isinstance(exc, asyncio.CancelledError) else limits[0]
        what = f"model artifact {artifact_id}: the restore after the failure"
        cleanup = await run_to_end(restore, what, limit, log=logger, level=logging.ERROR)
        if not cleanup.done and isinstance(exc, ModelSyncError):
            # The termination message says it too, not only a log line: a rerun is what restores it.
            exc.consequence = (
                f"model artifact {artifact_id} is still PENDING: rerun the same Job (same MODEL_SYNC_JOB_ID) "
                "to restore it"
            )
        if cleanup.interrupted:
            raise asyncio.CancelledError from exc
        raise
    logger.info("model artifact %s is LIVE at %s", artifact_id, committed.uri)
    return IntentResult(Intent.UPDATE_ARTIFACT, model_id, version_id, artifact_id, committed.uri, committed.digest)


# -- create_model / create_version -------------------------------------------------------------------


def _claim(entity: Entity, job_id: str | None, what: str, hint: str) -> Entity:
    """``entity`` if this job created it (rerun: reuse it); otherwise the "already exists" error."""
    owner = _string_prop(entity.get("customProperties"), MARKER_JOB_ID)
    if job_id and owner == job_id:
        logger.info("%s (id %s) was created by this job in an earlier attempt: reusing it", what, entity.get("id"))
        return entity
    who = f"{'another' if job_id else 'a'} model-sync job ({owner})"
    why = f"it was created by {who}" if owner else "it was not created by model-sync"
    if not job_id:
        why += "; without a job id (MODEL_SYNC_JOB_ID) a rerun cannot recognise its own entities"
    raise ModelRegistryError(
        f"{what} already exists (id {entity.get('id')}); {why}; {hint}", status=409, code="Conflict"
    )


async def _create(
    spec: IntentSpec, registry: ModelRegistryClient, transfer: Callable[[], Awaitable[Committed]]
) -> IntentResult:
    intent = Intent(spec.intent)
    meta = spec.metadata
    assert meta is not None  # validate_spec
    version_name = meta.model_version.name
    assert version_name is not None
    marker = _job_marker(spec.job_id)

    # Preflight: every name we are about to take is free, or ours from an earlier attempt.
    model: Entity | None
    if intent is Intent.CREATE_MODEL:
        model_name = meta.registered_model.name
        model = await registry.find_registered_model(str(model_name))
        if model is not None:
            model = _claim(
                model,
                spec.job_id,
                f"registered model {model_name!r}",
                f"choose another RegisteredModel.name, or use create_version with MODEL_SYNC_MODEL_ID={model.get('id')}",
            )
    else:
        model_id = _ids(spec)[0]
        assert model_id is not None  # validate_spec
        model = await registry.get_registered_model(model_id)
        model_name = model.get("name")
    # Upstream's fallback: the artifact is named after the registered model, which is what Kubeflow's
    # Python client looks it up by (``ModelRegistry.get_model_artifact(model_name, version)``).
    artifact_name = meta.model_artifact.name or str(model_name or version_name)
    version: Entity | None = None
    artifact: Entity | None = None
    if model is not None:
        version = await registry.find_model_version(version_name, model["id"])
        if version is not None:
            version = _claim(
                version,
                spec.job_id,
                f"model version {version_name!r} of registered model {model['id']}",
                "choose another ModelVersion.name",
            )
            artifact = await registry.find_model_artifact(artifact_name, version["id"])
            if artifact is not None:
                artifact = _claim(
                    artifact,
                    spec.job_id,
                    f"model artifact {artifact_name!r} of model version {version['id']}",
                    "choose another ModelArtifact.name",
                )

    committed = await transfer()

    if model is None:
        body = meta.registered_model.create_body()
        body["customProperties"] = {**body.get("customProperties", {}), **marker}
        model = await registry.create_registered_model(body)
    if version is None:
        body = meta.model_version.create_body()
        if not body.get("author") and spec.author:
            body["author"] = spec.author
        body["customProperties"] = {**body.get("customProperties", {}), **marker}
        version = await registry.create_model_version(model["id"], body)
    body = meta.model_artifact.create_body()
    body.update(name=artifact_name, uri=committed.uri)
    if committed.storage_path and not body.get("storagePath"):
        body["storagePath"] = committed.storage_path
    body["customProperties"] = {**body.get("customProperties", {}), **marker, **_result_properties(committed)}
    if artifact is None:
        artifact = await registry.create_model_artifact(version["id"], {**body, "state": "LIVE"})
    else:  # ours, from an earlier attempt: bring it up to date (the client drops the name from the PATCH)
        artifact = await registry.update_model_artifact(artifact["id"], body, state="LIVE")
    logger.info(
        "registered model %s, version %s, artifact %s is LIVE at %s",
        model["id"],
        version["id"],
        artifact["id"],
        committed.uri,
    )
    return IntentResult(intent, model["id"], version["id"], artifact["id"], committed.uri, committed.digest)
