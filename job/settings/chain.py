"""Settings: one flat interface (upstream's names), merged from an ordered chain.

The interface is the upstream async-upload job's: every ``MODEL_SYNC_*`` env var has a matching
``--kebab-case`` arg, so existing Job manifests run unchanged. Precedence is the one upstream
documents (and its own code gets wrong, letting credential files win):

    CLI args  >  env vars  >  credential files (*_CREDENTIALS_PATH)  >  defaults

:class:`Settings` is that flat surface, built by pydantic-settings from the chain
(:func:`load_settings`). :func:`build_job_config` then checks what depends on several settings
(the source type needs its bucket, the intent needs its ids, ...) and maps the flat names onto the
typed models the rest of the job uses (:class:`JobConfig`). Both steps raise only ``ConfigError``,
whose one-line message names the env var and the arg, and neither touches the network.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from job.errors import ConfigError
from job.oci.certs import DEFAULT_CERTS_DIR
from job.settings.checks import path_problem
from job.settings.cli import cli_values
from job.settings.credentials import header_value, secret_value
from job.settings.layers import CredentialFilesSource, PlainEnvSource
from job.settings.names import (
    DEFAULT_METADATA_PATH,
    ENV_PREFIX,
    DestinationType,
    Intent,
    SourceType,
    setting_name,
)

__all__ = ["Settings", "load_settings"]


class Settings(BaseSettings):
    """The job's flat settings, named as upstream names them. See the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        cli_kebab_case=True,
        validate_default=True,
        hide_input_in_errors=True,
    )

    # --- source ---
    source_type: SourceType = Field("s3", description="Where the model comes from: s3, uri, oci or pvc.")
    source_s3_credentials_path: Path | None = Field(
        None, description="Mounted S3 Secret dir (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, ...)."
    )
    source_oci_credentials_path: Path | None = Field(
        None, description="Mounted .dockerconfigjson (file, or a Secret dir holding it) for the source registry."
    )
    source_uri_credentials_path: Path | None = Field(None, description="Mounted Secret dir with a file URI.")
    source_uri: str | None = Field(None, description="source-type uri: http(s) URL, archive URL or hf://org/model.")
    source_aws_bucket: str | None = Field(None, description="source-type s3: bucket.")
    source_aws_key: str | None = Field(None, description="source-type s3: object key, or a prefix ending in /.")
    source_aws_region: str | None = Field(None, description="source-type s3: region.")
    source_aws_access_key_id: SecretStr | None = Field(None, description="source-type s3: access key id.")
    source_aws_secret_access_key: SecretStr | None = Field(None, description="source-type s3: secret key.")
    source_aws_endpoint: str | None = Field(None, description="source-type s3: endpoint URL (non-AWS S3).")
    source_aws_anonymous: bool = Field(False, description="source-type s3: unsigned requests, for a public bucket.")
    source_aws_verify_ssl: bool = Field(True, description="source-type s3: verify the endpoint's TLS certificate.")
    source_oci_uri: str | None = Field(None, description="source-type oci: image reference to pull.")
    source_oci_registry: str | None = Field(
        None, description="source-type oci: registry the credentials belong to (default: the image's host)."
    )
    source_oci_username: str | None = Field(None, description="source-type oci: registry username.")
    source_oci_password: SecretStr | None = Field(None, description="source-type oci: registry password.")
    source_oci_enable_tls_verify: bool = Field(
        True, description="source-type oci: verify TLS; false also allows plain http, as skopeo does."
    )
    source_oci_ca_bundle: Path | None = Field(None, description="source-type oci: CA bundle to verify the registry.")
    source_path: Path | None = Field(None, description="source-type pvc: a mounted file or directory.")
    source_include: str | None = Field(
        None, description="Comma-separated globs: copy only matching files (any source type; '*' spans folders)."
    )
    source_exclude: str | None = Field(
        None, description="Comma-separated globs: skip matching files (any source type), applied after include."
    )

    # --- destination ---
    destination_type: DestinationType = Field(
        "oci", description="Where the model goes: oci (modelcar), s3, or pvc (a mounted directory)."
    )
    destination_path: Path | None = Field(
        None, description="destination-type pvc: the directory to write the model into (created if missing)."
    )
    destination_pvc_claim: str | None = Field(
        None,
        description="destination-type pvc: the PersistentVolumeClaim mounted there; the registry then records "
        "pvc://<claim>/<path inside the claim> (KServe's storageUri), else the local path.",
    )
    destination_pvc_mount_path: Path | None = Field(
        None,
        description="destination-type pvc: where the claim's root is mounted (default: read from "
        "/proc/self/mountinfo, subPath mounts included).",
    )
    destination_s3_credentials_path: Path | None = Field(None, description="Mounted S3 Secret dir.")
    destination_oci_credentials_path: Path | None = Field(None, description="Mounted .dockerconfigjson.")
    destination_aws_bucket: str | None = Field(None, description="destination-type s3: bucket.")
    destination_aws_key: str | None = Field(None, description="destination-type s3: key prefix to write under.")
    destination_aws_region: str | None = Field(None, description="destination-type s3: region.")
    destination_aws_access_key_id: SecretStr | None = Field(None, description="destination-type s3: access key id.")
    destination_aws_secret_access_key: SecretStr | None = Field(None, description="destination-type s3: secret key.")
    destination_aws_endpoint: str | None = Field(None, description="destination-type s3: endpoint URL.")
    destination_oci_uri: str | None = Field(None, description="destination-type oci: image reference to push.")
    destination_oci_registry: str | None = Field(
        None, description="destination-type oci: registry the credentials belong to (default: the image's host)."
    )
    destination_oci_username: str | None = Field(None, description="destination-type oci: registry username.")
    destination_oci_password: SecretStr | None = Field(None, description="destination-type oci: registry password.")
    destination_oci_base_image: str = Field(
        "busybox:latest", description="destination-type oci: base image of the modelcar (needs sh, ln, sleep)."
    )
    destination_oci_enable_tls_verify: bool = Field(
        True, description="destination-type oci: verify TLS; false also allows plain http, as skopeo does."
    )

    destination_oci_ca_bundle: Path | None = Field(
        None, description="destination-type oci: CA bundle to verify the registry."
    )
    destination_oci_chunk_size_mib: int = Field(
        0,
        ge=0,
        le=1024,
        description="destination-type oci: 0 sends each blob in one streamed PATCH; N sends N MiB chunked PATCHes.",
    )
    destination_oci_max_layers: int = Field(
        64,
        ge=2,
        le=127,
        description="destination-type oci: most layers of the image, base included; past it, files share "
        "layers (127 is what podman and CRI-O mount; image volumes fail near 70).",
    )
    oci_platform: str | None = Field(
        None, description="Platform to pick from a multi-arch image when reading one (default: linux/<this machine>)."
    )
    oci_cert_dir: Path = Field(
        DEFAULT_CERTS_DIR,
        description="containers-certs.d directory for every OCI registry (source, destination, base image): "
        "<dir>/<host[:port]>/*.crt are trusted CAs, *.cert/*.key client certificates.",
    )

    # --- model registry entities and intent ---
    model_upload_intent: Intent = Field(
        Intent.UPDATE_ARTIFACT, description="create_model, create_version or update_artifact."
    )
    model_id: str | None = Field(None, description="RegisteredModel.id (create_version).")
    model_version_id: str | None = Field(None, description="ModelVersion.id.")
    model_artifact_id: str | None = Field(None, description="ModelArtifact.id (update_artifact).")
    metadata_configmap_path: Path | None = Field(
        None, description=f"Mounted metadata ConfigMap (default {DEFAULT_METADATA_PATH} when it exists)."
    )
    job_id: str | None = Field(
        None, description="One id for a Kubernetes Job across its pod retries (the Job's controller-uid)."
    )

    # --- storage ---
    storage_path: Path = Field(
        Path("/tmp/model-sync"),  # noqa: S108 - upstream's default; we spool only a zip without ranges
        description="Scratch dir; model-sync streams and uses it only to spool a zip the server cannot range.",
    )

    # --- model registry client ---
    serve_artifact_states: str = Field(
        "LIVE,UNKNOWN",
        pattern=r"^\s*[A-Za-z_]+(\s*,\s*[A-Za-z_]+)*\s*$",
        description="Initializer mode (model-registry://): artifact states that may be served, newest first "
        "(UNKNOWN is what Kubeflow's clients and UI register; PENDING is a sync not finished).",
    )
    registry_server_address: str | None = Field(None, description="Model Registry address (with or without scheme).")
    registry_port: int = Field(
        443, ge=1, le=65535, description="Model Registry port (a port in the address wins if unset)."
    )
    registry_is_secure: bool = Field(True, description="Use https for the Model Registry.")
    registry_author: str | None = Field(None, description="Author recorded on created versions.")
    registry_user_token: SecretStr | None = Field(None, description="Bearer token for the Model Registry.")
    registry_user_token_envvar: str | None = Field(
        None, description="Name of an env var holding the token file's path (or the token)."
    )
    registry_custom_ca: Path | None = Field(None, description="CA bundle to verify the Model Registry with.")
    registry_custom_ca_envvar: str | None = Field(None, description="Name of an env var holding the CA path.")
    registry_log_level: str = Field("WARNING", description="Log level of the Model Registry client.")
    registry_api_version: Literal["auto", "v1", "v1alpha3"] = Field(
        "auto",
        description="Model Registry REST API: v1 (current servers), v1alpha3 (older ones), or auto: the first "
        "answer tells.",
    )

    # --- transfer: memory ceiling. An S3 destination holds at most part_memory_mib of parts, all files together
    # (24 MiB by default: three 8 MiB parts, the size a file up to about 78 GiB gets; a larger part is sent alone,
    # job.s3.budget), each file at most parallel_parts of them, plus about one 1 MiB chunk in flight per file.
    # OCI streams: chunks only. ---
    parallel_files: int = Field(4, ge=1, le=64, description="Files moved at once.")
    max_files: int = Field(
        100_000, ge=1, description="Files a source may list (links expanded included); more is an error."
    )
    parallel_parts: int = Field(2, ge=1, le=64, description="Parts in flight per multipart upload.")
    part_size_mib: int | None = Field(
        None, ge=5, le=5120, description="Multipart part size in MiB (default: chosen from the file size)."
    )
    part_memory_mib: int = Field(
        24,
        ge=5,
        le=65536,
        description="MiB of multipart parts held in memory at once, all files together: the S3 destination's "
        "memory ceiling (a part larger than this is sent alone).",
    )
    parallel_reads: int = Field(
        4,
        ge=1,
        le=16,
        description="Ranged reads in flight per file or layer of an oci, http(s) or hf:// source once one connection "
        "proves slow (under 64 MB/s), 8 MiB each (1: one GET each): for servers and CDNs that cap each connection.",
    )
    read_ahead_mib: int = Field(
        32,
        ge=0,
        le=65536,
        description="MiB those reads hold ahead of the streams, all files together: the source's memory ceiling "
        "(none left: a stream reads on alone).",
    )

    # --- retries and timeouts (job.retry.RetrySettings): smallest unit first, a request, a part, a file ---
    retry_attempts: int = Field(
        5,
        ge=1,
        le=100,
        description="Tries per request, the first included: transport errors, 408, 429, 5xx and S3 SlowDown are "
        "retried, honouring Retry-After; auth, not-found and integrity errors never are.",
    )
    retry_file_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="Tries per file: a file whose transfer still fails that way is sent again from its start "
        "(a broken read is first resumed at its offset where the source has ranges).",
    )
    retry_initial_wait: float = Field(
        0.5, ge=0, le=60, description="Seconds the first retry waits at most; doubled for each further try (jitter)."
    )
    retry_max_wait: float = Field(
        10.0, ge=0, le=600, description="Seconds: the longest wait between two tries when the server names none."
    )
    retry_after_max: float = Field(
        60.0, ge=0, le=3600, description="Seconds: the longest Retry-After honoured; a longer one is cut to this."
    )
    connect_timeout: float = Field(
        10.0, gt=0, le=600, description="Seconds to open a connection (TCP and TLS), for every network call."
    )
    read_timeout: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds without a byte on an open connection before the call fails (and is retried); "
        "no total timeout, so a large body may take as long as bytes keep moving.",
    )
    stop_timeout: float = Field(
        8.0,
        ge=1,
        le=300,
        description="Seconds from SIGTERM to exit: uploads are aborted and the registry restored within it "
        "(keep it under the pod's terminationGracePeriodSeconds).",
    )

    # --- signing (OpenSSF model signing: job.signing) ---
    sign: bool | None = Field(None, description="Sign the model (model.sig); unset: on when a signing key is set, "
                              "or when SIGSTORE_TUF_URL, SIGSTORE_FULCIO_URL and SIGSTORE_REKOR_URL all are.")  # fmt: skip
    signing_key_path: Path | None = Field(None, description="PEM elliptic-curve private key: sign with it.")
    signing_certificate_path: Path | None = Field(None, description="With the key: its signing certificate.")
    signing_certificate_chain_path: Path | None = Field(None, description="With the certificate: its chain (PEM).")
    signing_identity_token_path: Path | None = Field(None, description="Keyless: the OIDC token (default: the pod's "
                                                     "service-account token).")  # fmt: skip
    sigstore_tuf_url: str | None = Field(None, description="Keyless: the private Sigstore's TUF repository.")
    sigstore_fulcio_url: str | None = Field(None, description="Keyless: its Fulcio (certificates).")
    sigstore_rekor_url: str | None = Field(None, description="Keyless: its Rekor (transparency log).")
    sigstore_tsa_url: str | None = Field(None, description="Keyless: its timestamp authority (optional).")

    # --- logs and Kubernetes ---
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    log_format: Literal["text", "json"] = Field("text", description="text for people, json for log pipelines.")
    termination_message_path: Path = Field(
        Path("/dev/termination-log"), description="Where Kubernetes reads the termination message."
    )

    @field_validator(
        "source_aws_access_key_id",
        "source_aws_secret_access_key",
        "source_oci_password",
        "destination_aws_access_key_id",
        "destination_aws_secret_access_key",
        "destination_oci_password",
        "registry_user_token",
        mode="before",
    )
    @classmethod
    def _secret(cls, value: object, info: ValidationInfo) -> object:
        # Stripped and checked as they are read, whichever layer gave them (see credentials.secret_value).
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            return value
        check = header_value if info.field_name == "registry_user_token" else secret_value
        try:
            return check(value, "value")
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("value: ")) from None

    @field_validator(
        "source_uri",
        "source_aws_bucket",
        "source_aws_endpoint",
        "source_oci_uri",
        "source_oci_registry",
        "destination_aws_bucket",
        "destination_aws_endpoint",
        "destination_oci_uri",
        "destination_oci_registry",
        "destination_oci_base_image",
        "registry_server_address",
        mode="before",
    )
    @classmethod
    def _strip(cls, value: object) -> object:
        # Addresses, like secrets, lose the line break `echo` or a YAML block scalar leaves around them.
        return value.strip() if isinstance(value, str) else value

    @field_validator("*", mode="after")
    @classmethod
    def _path(cls, value: object) -> object:
        # Path.exists() raises, rather than answers False, for a name the file system cannot hold.
        if isinstance(value, Path) and (problem := path_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("log_level", "registry_log_level", mode="before")
    @classmethod
    def _log_level_name(cls, value: object) -> str:
        # Upstream's default for the registry log level is logging.WARNING, i.e. the number 30.
        text = str(value).strip().upper()
        if text.isdigit():
            text = logging.getLevelName(int(text))
        if text not in ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"):
            raise ValueError(f"{value!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return "WARNING" if text == "WARN" else text

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The CLI arrives as init kwargs (see load_settings), so init_settings *is* the CLI layer.
        assert isinstance(init_settings, InitSettingsSource)
        return (
            init_settings,
            PlainEnvSource(settings_cls),
            CredentialFilesSource(settings_cls, higher=(init_settings, env_settings)),
        )


def load_settings(argv: Sequence[str]) -> Settings:
    """Build the flat settings from the CLI (``argv``), the env, and the credential files.

    Raises ConfigError naming the first setting that is invalid.
    """
    given = cli_values(Settings, argv)
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise _config_error(exc) from None


def _config_error(exc: ValidationError) -> ConfigError:
    first = exc.errors(include_input=False, include_url=False)[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    what = setting_name(field) if field in Settings.model_fields else (field or "settings")
    return ConfigError(f"invalid setting {what}: {first['msg'].removeprefix('Value error, ')}")
