"""KServe storage-initializer mode: ``model-sync <storage-uri> <dest-dir>``.

KServe runs a storage initializer as the serving pod's init container with two arguments, the
InferenceService's ``storageUri`` and the directory to fill (``/mnt/models``). In this mode model-sync
writes nothing to the Model Registry; it streams the model's files into the directory (the ``pvc``
destination: ``<name>.part`` files renamed once complete and checked), so a pod starts with exactly the
model, and a restarted init container skips the files already in place.

* ``model-registry://...`` is resolved first (``job.serving.resolve``): the registry's token and CA come
  from the ``MODEL_SYNC_REGISTRY_*`` settings (default token: the pod's service account), which upstream's
  initializer cannot use; then the artifact's uri is served like a direct one.
* ``s3://bucket/prefix`` reads the env KServe's own initializer reads (``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``S3_VERIFY_SSL``,
  ``awsAnonymousCredential``; ``AWS_CA_BUNDLE`` is botocore's own), where the ``MODEL_SYNC_SOURCE_AWS_*``
  setting is not set; ``oci://`` uses the ``MODEL_SYNC_SOURCE_OCI_*`` settings and certs.d CAs;
  ``hf://`` and ``http(s)://`` the uri source's.

The arguments and settings are checked before any connection (a bad one exits 2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from job.backends import check_available, make_destination, make_source
from job.config import JobConfig, build_job_config, retry_settings
from job.engine.progress import ProgressReporter
from job.engine.transfer import TransferResult, transfer
from job.errors import ConfigError, SourceError
from job.model_registry.client import ModelRegistryClient
from job.pipeline import check_references, transfer_settings
from job.serving.resolve import configured_registry, registry_for, servable_artifact
from job.serving.storage_uri import REGISTRY_SCHEME, WHAT, RegistryUri, parse_registry_uri, source_settings
from job.settings.chain import Settings
from job.settings.registry import RegistryConfig, registry_config

__all__ = ["WHAT", "Served", "ServingPlan", "plan_serving", "serve"]

log = logging.getLogger(__name__)

KSERVE_S3_ENV: dict[str, str] = {
    "AWS_ENDPOINT_URL": "source_aws_endpoint",
    "AWS_ACCESS_KEY_ID": "source_aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "source_aws_secret_access_key",
    "AWS_DEFAULT_REGION": "source_aws_region",
}
"""KServe's storage-initializer env -> the source setting it fills when that setting is not set."""


@dataclass(frozen=True, slots=True)
class ServingPlan:
    """The checked arguments: a direct uri's whole config, or the registry to ask first."""

    storage_uri: str
    directory: Path
    settings: Settings
    environ: Mapping[str, str]
    config: JobConfig | None
    """For a direct uri: everything the transfer needs."""
    registry_uri: RegistryUri | None
    registry: RegistryConfig | None
    """For ``model-registry://``: how to reach the configured registry (token, CA)."""


@dataclass(frozen=True, slots=True)
class Served:
    """What the initializer did: the storage uri it read, and the transfer."""

    source_uri: str
    transfer: TransferResult
    artifact: Mapping[str, Any] | None = None

    def to_termination_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "uri": self.source_uri,
            "path": self.transfer.committed.uri,
            "files": self.transfer.files,
            "bytes": self.transfer.bytes,
        }
        if self.artifact is not None:
            message["ModelArtifact"] = {"id": self.artifact.get("id")}
        return message


def _with_source(settings: Settings, uri: str, directory: Path, environ: Mapping[str, str]) -> Settings:
    update: dict[str, Any] = {**source_settings(uri), "destination_type": "pvc", "destination_path": directory}
    if update["source_type"] == "s3":
        for name, field in KSERVE_S3_ENV.items():
            value = environ.get(name)
            if value and getattr(settings, field) is None:
                update[field] = SecretStr(value) if "key" in field else value
        verify = environ.get("S3_VERIFY_SSL")
        if verify and "source_aws_verify_ssl" not in settings.model_fields_set:
            update["source_aws_verify_ssl"] = verify.strip().lower() not in ("0", "false")
        anonymous = environ.get("awsAnonymousCredential")
        if anonymous and "source_aws_anonymous" not in settings.model_fields_set:
            update["source_aws_anonymous"] = anonymous.strip().lower() == "true"
    if not settings.registry_server_address:
        update["registry_server_address"] = configured_registry(None, environ)  # never asked for a direct uri
    return settings.model_copy(update=update)


def _config(settings: Settings, uri: str, directory: Path, environ: Mapping[str, str]) -> JobConfig:
    config = build_job_config(_with_source(settings, uri, directory, environ), environ)
    check_available(config)
    check_references(config)
    return config


def plan_serving(settings: Settings, storage_uri: str, directory: str, environ: Mapping[str, str]) -> ServingPlan:
    """Check the arguments and settings without the network. ConfigError only."""
    if not directory.strip():
        raise ConfigError("invalid destination directory (the initializer's second argument): it is empty")
    target = Path(directory)
    if storage_uri.startswith(REGISTRY_SCHEME):
        parsed = parse_registry_uri(storage_uri)
        address = configured_registry(settings.registry_server_address, environ)
        registry = registry_config(settings.model_copy(update={"registry_server_address": address}), environ)
        return ServingPlan(storage_uri, target, settings, environ, None, parsed, registry)
    config = _config(settings, storage_uri, target, environ)
    return ServingPlan(storage_uri, target, settings, environ, config, None, None)


async def _resolve(plan: ServingPlan, on_config: Callable[[JobConfig], None]) -> tuple[JobConfig, Mapping[str, Any]]:
    assert plan.registry_uri is not None and plan.registry is not None
    address, model, version = await registry_for(
        plan.registry_uri, plan.registry.base_url, plan.environ, verify=plan.registry.verify
    )
    settings = plan.settings.model_copy(update={"registry_server_address": address})
    registry = registry_config(settings, plan.environ)
    retry = retry_settings(settings)
    where = f"{plan.storage_uri} (registry {registry.base_url})"
    async with ModelRegistryClient.for_registry(registry, retry) as client:
        artifact = await servable_artifact(
            client, model, version, states=_states(settings.serve_artifact_states), where=where
        )
    uri = str(artifact["uri"])
    if uri.startswith(REGISTRY_SCHEME):
        raise SourceError(f"{where}: the artifact's uri {uri!r} points at a registry again", uri=where)
    try:
        config = _config(settings, uri, plan.directory, plan.environ)
    except ConfigError as exc:
        raise ConfigError(f"serving {uri} (the artifact of {plan.storage_uri}): {exc}") from None
    on_config(config)
    return config, artifact


def _states(value: str) -> tuple[str, ...]:
    return tuple(s.strip().upper() for s in value.split(",") if s.strip())


async def serve(plan: ServingPlan, *, on_config: Callable[[JobConfig], None] = lambda _: None) -> Served:
    """Resolve the uri (``model-registry://``) and stream the model into the directory."""
    artifact: Mapping[str, Any] | None = None
    if plan.config is not None:
        config = plan.config
    else:
        config, artifact = await _resolve(plan, on_config)
    settings = transfer_settings(config)
    result = await transfer(make_source(config), make_destination(config), settings, progress=ProgressReporter())
    source_uri = str(artifact["uri"]) if artifact is not None else plan.storage_uri
    log.info("served %s: %d files, %d bytes into %s", source_uri, result.files, result.bytes, plan.directory)
    return Served(source_uri=source_uri, transfer=result, artifact=artifact)
