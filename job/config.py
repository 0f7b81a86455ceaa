"""The typed view of the settings the rest of the job uses: locations, the Model Registry, the engine's sizes.

:func:`build_job_config` checks what depends on several settings (the source type needs its bucket, the intent
needs its ids, ...) and maps the flat :class:`~job.settings.chain.Settings` onto the typed models here
(:class:`JobConfig`). It raises only ``ConfigError``, whose one-line message names the env var and the arg, and
it never touches the network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from job.errors import ConfigError
from job.retry import RetrySettings
from job.settings.chain import Settings
from job.settings.checks import check_bucket, check_url, safe_is_dir, safe_is_file
from job.settings.credentials import DockerConfig, header_value, read_docker_config, read_uri_headers
from job.settings.layers import registry_host
from job.settings.names import DEFAULT_METADATA_PATH, Intent, setting_name
from job.settings.registry import RegistryConfig, registry_config
from job.settings.signing import SigningConfig, signing_config

# ---------------------------------------------------------------------------------------------
# The typed view the rest of the job uses


@dataclass(frozen=True, slots=True)
class S3Location:
    """An S3 bucket and key (or prefix), with the endpoint and keys to reach it."""

    bucket: str
    key: str
    region: str | None
    endpoint: str | None
    access_key_id: SecretStr | None
    secret_access_key: SecretStr | None
    verify: bool = True
    """False: do not verify the endpoint's TLS certificate (KServe's ``S3_VERIFY_SSL=0``)."""
    anonymous: bool = False
    """Unsigned requests, for a public bucket (KServe's ``awsAnonymousCredential``)."""

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True, slots=True)
class OciLocation:
    """An image reference with the login and TLS mode for its registry."""

    reference: str
    registry: str
    username: str | None
    password: SecretStr | None
    tls_verify: bool
    base_image: str | None = None
    ca_bundle: Path | None = None
    chunk_size: int = 0
    """0: one streamed PATCH per blob; otherwise the bytes of each chunked PATCH."""
    max_layers: int = 64
    """Layers of the pushed image, base included (``job.oci.layout``)."""
    platform: str | None = None
    docker_config: DockerConfig | None = None
    """All logins of the mounted docker config, for a base image on another registry."""
    cert_dir: Path | None = None
    """The containers-certs.d directory: CAs and client certificates per registry (``job.oci.certs``)."""


@dataclass(frozen=True, slots=True)
class UriLocation:
    """An http(s) URL, archive URL, or ``hf://org/model[:revision]``."""

    uri: str
    headers: dict[str, SecretStr] = field(default_factory=dict)
    """Extra request headers from the URI Secret's ``HEADERS`` file."""
    hf_endpoint: str = "https://huggingface.co"
    """``HF_ENDPOINT``: the Hub (or a mirror) that ``hf://`` resolves against."""
    hf_token: SecretStr | None = None
    """``HF_TOKEN``: sent to the Hub endpoint only."""


@dataclass(frozen=True, slots=True)
class PvcLocation:
    """A mounted file or directory."""

    path: Path
    claim: str | None = None
    """The PersistentVolumeClaim mounted there (a destination's recorded uri is then ``pvc://claim/...``)."""
    mount_path: Path | None = None
    """Where the claim's root is mounted, when the setting gives it (else read from mountinfo)."""


@dataclass(frozen=True, slots=True)
class JobConfig:
    """Everything the job needs, checked and typed."""

    source: S3Location | UriLocation | OciLocation | PvcLocation
    destination: S3Location | OciLocation | PvcLocation
    registry: RegistryConfig
    intent: Intent
    model_id: str | None
    model_version_id: str | None
    model_artifact_id: str | None
    metadata_path: Path | None
    job_id: str | None
    storage_path: Path
    parallel_files: int
    max_files: int
    parallel_parts: int
    part_size: int | None
    part_memory: int
    termination_message_path: Path
    include: tuple[str, ...] = ()
    """Globs a file must match to be copied (empty: every file)."""
    exclude: tuple[str, ...] = ()
    """Globs that drop a file, after ``include``."""
    retry: RetrySettings = field(default_factory=RetrySettings)
    """Retry budget and network timeouts, for every client."""
    parallel_reads: int = 4
    """Reads in flight per long read of an oci or http(s) source on a slow link (``job.readahead``); 1: one each."""
    read_ahead: int = 32 * 1024 * 1024
    """Bytes those reads hold ahead of the streams, all files together."""
    stop_timeout: float = 8.0
    """Seconds from SIGTERM to exit."""
    signing: SigningConfig | None = None
    """How to sign the model (``job.signing``); None: not signed."""


def _globs(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _require(settings: Settings, field: str, why: str) -> Any:
    value = getattr(settings, field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(f"missing setting {setting_name(field)}: {why}")
    return value


def _ambient_aws_identity(environ: Mapping[str, str]) -> bool:
    # IRSA and EKS Pod Identity inject these; boto's default chain then needs no keys.
    return any(
        name in environ
        for name in (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        )
    )


def _s3_location(settings: Settings, side: str, environ: Mapping[str, str]) -> S3Location:
    why = f"{side}-type is s3 (set it, or mount it with {setting_name(side + '_s3_credentials_path')})"
    bucket = check_bucket(_require(settings, f"{side}_aws_bucket", why), setting_name(f"{side}_aws_bucket"))
    endpoint = getattr(settings, f"{side}_aws_endpoint") or None
    if endpoint:
        check_url(endpoint, setting_name(f"{side}_aws_endpoint"), ("http", "https"))
    key = getattr(settings, f"{side}_aws_key") or ""
    if side == "source" and not key:
        _require(settings, "source_aws_key", "source-type is s3: name the object or the prefix to copy")
    key_id = getattr(settings, f"{side}_aws_access_key_id")
    secret = getattr(settings, f"{side}_aws_secret_access_key")
    anonymous = side == "source" and settings.source_aws_anonymous
    if key_id is None and secret is None and not anonymous and not _ambient_aws_identity(environ):
        _require(settings, f"{side}_aws_access_key_id", why)
    if (key_id is None) != (secret is None):
        missing = f"{side}_aws_secret_access_key" if secret is None else f"{side}_aws_access_key_id"
        _require(settings, missing, "an S3 access key needs both its id and its secret")
    return S3Location(
        bucket=bucket,
        key=key.lstrip("/"),
        region=getattr(settings, f"{side}_aws_region"),
        endpoint=endpoint,
        access_key_id=key_id,
        secret_access_key=secret,
        verify=settings.source_aws_verify_ssl if side == "source" else True,
        anonymous=anonymous,
    )


def _existing(settings: Settings, field: str) -> Path | None:
    path: Path | None = getattr(settings, field)
    if path is not None and not safe_is_file(path):
        raise ConfigError(f"invalid setting {setting_name(field)}: {path} does not exist")
    return path


def _oci_location(settings: Settings, side: str) -> OciLocation:
    reference = _require(settings, f"{side}_oci_uri", f"{side}-type is oci: the image reference")
    reference = reference.removeprefix("oci://").removeprefix("docker://")
    registry = getattr(settings, f"{side}_oci_registry") or registry_host(reference) or "docker.io"
    username = getattr(settings, f"{side}_oci_username")
    password = getattr(settings, f"{side}_oci_password")
    if (username is None) != (password is None):
        missing = f"{side}_oci_password" if password is None else f"{side}_oci_username"
        _require(settings, missing, "a registry login needs both a username and a password")
    docker_config = None
    creds_path = getattr(settings, f"{side}_oci_credentials_path")
    if creds_path:
        docker_config = read_docker_config(creds_path, setting=setting_name(f"{side}_oci_credentials_path"))
    return OciLocation(
        reference=reference,
        registry=registry,
        username=username,
        password=password,
        tls_verify=getattr(settings, f"{side}_oci_enable_tls_verify"),
        base_image=settings.destination_oci_base_image if side == "destination" else None,
        ca_bundle=_existing(settings, f"{side}_oci_ca_bundle"),
        chunk_size=settings.destination_oci_chunk_size_mib * 1024 * 1024 if side == "destination" else 0,
        max_layers=settings.destination_oci_max_layers,
        platform=settings.oci_platform,
        docker_config=docker_config,
        cert_dir=settings.oci_cert_dir,
    )


def _source(settings: Settings, environ: Mapping[str, str]) -> S3Location | UriLocation | OciLocation | PvcLocation:
    match settings.source_type:
        case "s3":
            return _s3_location(settings, "source", environ)
        case "oci":
            return _oci_location(settings, "source")
        case "uri":
            uri = _require(settings, "source_uri", "source-type is uri (or mount a Secret with a file URI)")
            check_url(uri, setting_name("source_uri"), ("http", "https", "hf"))
            hf_endpoint = (environ.get("HF_ENDPOINT") or "https://huggingface.co").strip().rstrip("/")
            check_url(hf_endpoint, "env var HF_ENDPOINT", ("http", "https"))
            headers_dir = settings.source_uri_credentials_path
            headers = (
                read_uri_headers(headers_dir, setting=setting_name("source_uri_credentials_path"))
                if headers_dir
                else {}
            )
            hf_name = "HF_TOKEN" if environ.get("HF_TOKEN") else "HUGGING_FACE_HUB_TOKEN"
            hf_token = environ.get(hf_name, "").strip()
            return UriLocation(
                uri,
                headers=headers,
                hf_endpoint=hf_endpoint,
                hf_token=header_value(hf_token, f"env var {hf_name}") if hf_token else None,
            )
        case "pvc":
            path = _require(settings, "source_path", "source-type is pvc: the mounted file or directory")
            if not (safe_is_dir(path) or safe_is_file(path)):
                raise ConfigError(
                    f"invalid setting {setting_name('source_path')}: {path} does not exist (is the PVC mounted?)"
                )
            return PvcLocation(path)
    raise AssertionError(settings.source_type)  # pragma: no cover - Literal is exhaustive


def _metadata_path(settings: Settings) -> Path | None:
    path = settings.metadata_configmap_path
    if path is None:
        return DEFAULT_METADATA_PATH if DEFAULT_METADATA_PATH.is_dir() else None
    if not safe_is_dir(path):
        raise ConfigError(
            f"invalid setting {setting_name('metadata_configmap_path')}: {path} is not a directory (is the ConfigMap mounted?)"
        )
    return path


def retry_settings(settings: Settings) -> RetrySettings:
    """The retry budget and network timeouts, for every client."""
    return RetrySettings(
        attempts=settings.retry_attempts,
        file_attempts=settings.retry_file_attempts,
        initial_wait=settings.retry_initial_wait,
        max_wait=settings.retry_max_wait,
        retry_after_cap=settings.retry_after_max,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
    )


def build_job_config(settings: Settings, environ: Mapping[str, str] | None = None) -> JobConfig:
    """Check the settings that depend on each other and type them. Raises ConfigError; no network."""
    env = os.environ if environ is None else environ
    destination: S3Location | OciLocation | PvcLocation
    if settings.destination_type == "s3":
        destination = _s3_location(settings, "destination", env)
    elif settings.destination_type == "pvc":
        path = _require(settings, "destination_path", "destination-type is pvc: the directory to write into")
        destination = PvcLocation(
            path=path, claim=settings.destination_pvc_claim, mount_path=settings.destination_pvc_mount_path
        )
    else:
        destination = _oci_location(settings, "destination")
    return JobConfig(
        source=_source(settings, env),
        destination=destination,
        registry=registry_config(settings, env),
        intent=settings.model_upload_intent,
        model_id=settings.model_id,
        model_version_id=settings.model_version_id,
        model_artifact_id=settings.model_artifact_id,
        metadata_path=_metadata_path(settings),
        job_id=settings.job_id,
        storage_path=settings.storage_path,
        parallel_files=settings.parallel_files,
        max_files=settings.max_files,
        parallel_parts=settings.parallel_parts,
        part_size=settings.part_size_mib * 1024 * 1024 if settings.part_size_mib else None,
        part_memory=settings.part_memory_mib * 1024 * 1024,
        termination_message_path=settings.termination_message_path,
        include=_globs(settings.source_include),
        exclude=_globs(settings.source_exclude),
        retry=retry_settings(settings),
        parallel_reads=settings.parallel_reads,
        read_ahead=settings.read_ahead_mib * 1024 * 1024,
        stop_timeout=settings.stop_timeout,
        signing=signing_config(settings),
    )
