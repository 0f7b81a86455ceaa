"""Settings: one flat interface (upstream's names), merged from an ordered chain, then typed.

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

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from job.errors import ConfigError
from job.oci.certs import DEFAULT_CERTS_DIR
from job.retry import RetrySettings
from job.settings.credentials import (
    DockerConfig,
    header_value,
    read_docker_config,
    read_s3_secret,
    read_uri_headers,
    read_uri_secret,
    secret_value,
)

ENV_PREFIX = "MODEL_SYNC_"
DEFAULT_METADATA_PATH = Path("/etc/model-metadata")
DEFAULT_SA_TOKEN_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# Kubeflow's Python client reads the token *path* from this env var when no other is named.
DEFAULT_USER_TOKEN_ENVVAR = "KF_PIPELINES_SA_TOKEN_PATH"  # noqa: S105 - a name, not a token

# Fields whose env var does not carry the MODEL_SYNC_ prefix (Kubernetes' own names).
_UNPREFIXED_ENV = {"termination_message_path": "TERMINATION_MESSAGE_PATH"}


def env_name(field: str) -> str:
    """The env var of a setting: ``source_aws_bucket`` -> ``MODEL_SYNC_SOURCE_AWS_BUCKET``."""
    return _UNPREFIXED_ENV.get(field, ENV_PREFIX + field.upper())


def arg_name(field: str) -> str:
    """The CLI arg of a setting: ``source_aws_bucket`` -> ``--source-aws-bucket``."""
    return "--" + field.replace("_", "-")


def setting_name(field: str) -> str:
    """How a message names a setting: ``MODEL_SYNC_SOURCE_AWS_BUCKET (--source-aws-bucket)``."""
    return f"{env_name(field)} ({arg_name(field)})"


SourceType = Literal["s3", "uri", "oci", "pvc"]
DestinationType = Literal["s3", "oci"]


class Intent(StrEnum):
    """What the job does in the Model Registry once the bytes have moved."""

    CREATE_MODEL = "create_model"
    CREATE_VERSION = "create_version"
    UPDATE_ARTIFACT = "update_artifact"


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
    destination_type: DestinationType = Field("oci", description="Where the model goes: oci (modelcar) or s3.")
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
    registry_server_address: str | None = Field(None, description="Model Registry address (with or without scheme).")
    registry_port: int = Field(443, description="Model Registry port (a port in the address wins if unset).")
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

    # --- transfer engine: part buffers are bounded by parallel_files x (parallel_parts + 1) x part size,
    # 4 x 3 x 8 MiB = 96 MiB with the defaults (see job.engine.transfer.TransferSettings) ---
    parallel_files: int = Field(4, ge=1, le=64, description="Files moved at once.")
    parallel_parts: int = Field(2, ge=1, le=64, description="Parts in flight per multipart upload.")
    part_size_mib: int | None = Field(
        None, ge=5, le=5120, description="Multipart part size in MiB (default: chosen from the file size)."
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
            _PlainEnvSource(settings_cls),
            CredentialFilesSource(settings_cls, higher=(init_settings, env_settings)),
        )


class _PlainEnvSource(EnvSettingsSource):
    """The env layer, with ``TERMINATION_MESSAGE_PATH`` read under its Kubernetes name."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in _UNPREFIXED_ENV:
            name = _UNPREFIXED_ENV[field_name]
            return self.env_vars.get(name.lower()), name, False
        return super().get_field_value(field, field_name)


class CredentialFilesSource(PydanticBaseSettingsSource):
    """Settings read from mounted Secrets named by the ``*_CREDENTIALS_PATH`` settings.

    Ranks below the CLI and env layers, so it asks them for the paths (and for the registry host
    a ``.dockerconfigjson`` entry is looked up by) before it reads anything.
    """

    def __init__(self, settings_cls: type[BaseSettings], *, higher: Sequence[PydanticBaseSettingsSource]) -> None:
        super().__init__(settings_cls)
        self._higher = higher

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # everything is read at once in __call__

    def _above(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for source in reversed(self._higher):  # lowest first, so higher layers overwrite
            merged.update(source())
        return merged

    def __call__(self) -> dict[str, Any]:
        above = self._above()
        values: dict[str, Any] = {}
        for side in ("source", "destination"):
            s3_path = above.get(f"{side}_s3_credentials_path")
            if s3_path:
                setting = setting_name(f"{side}_s3_credentials_path")
                for suffix, value in read_s3_secret(Path(s3_path), setting=setting).items():
                    values[f"{side}_{suffix}"] = value
            oci_path = above.get(f"{side}_oci_credentials_path")
            if oci_path:
                setting = setting_name(f"{side}_oci_credentials_path")
                docker_config = read_docker_config(Path(oci_path), setting=setting)
                values.update(_oci_login_values(side, docker_config, above, setting))
        uri_path = above.get("source_uri_credentials_path")
        if uri_path:
            uri_values = read_uri_secret(Path(uri_path), setting=setting_name("source_uri_credentials_path"))
            if "uri" in uri_values:
                values["source_uri"] = uri_values["uri"]
        return values


def _oci_login_values(side: str, config: DockerConfig, above: Mapping[str, Any], setting: str) -> dict[str, Any]:
    registry = above.get(f"{side}_oci_registry") or _registry_host(above.get(f"{side}_oci_uri"))
    if not registry:
        if len(config.registries) == 1:  # one login, one registry: no need to say which
            registry = config.registries[0]
        else:
            raise ConfigError(
                f"{setting}: the docker config holds logins for {', '.join(config.registries) or 'no registry'}; "
                f"set {setting_name(side + '_oci_registry')} or {setting_name(side + '_oci_uri')} to pick one"
            )
    login = config.lookup(registry)
    if login is None and config.has(registry):
        return {f"{side}_oci_registry": registry}  # an anonymous entry: no login to send
    if login is None:
        raise ConfigError(
            f"{setting}: no login for registry {registry} in the docker config "
            f"(it has {', '.join(config.registries) or 'none'})"
        )
    return {
        f"{side}_oci_registry": registry,
        f"{side}_oci_username": login.username,
        f"{side}_oci_password": login.password,
    }


def _registry_host(reference: str | None) -> str | None:
    """The registry host of an image reference, or None if it names none (``busybox`` -> docker.io)."""
    if not reference:
        return None
    ref = reference.removeprefix("oci://").removeprefix("docker://")
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"command line: {message} (see model-sync --help)")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each arg's env var, and a plain metavar instead of pydantic's type names."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=44, width=120)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.dest != "help":
            text += f" [env: {env_name(action.dest)}]"
        return text

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if action.choices:
            return "{" + ",".join(str(c) for c in action.choices) + "}"
        return "VALUE"


def _cli_values(argv: Sequence[str]) -> dict[str, Any]:
    parser = _ArgumentParser(
        prog="model-sync",
        usage="model-sync [options]   (every option also reads its env var, shown in brackets)",
        description="Stream an ML model from a source to a destination and record it in Kubeflow Model Registry. "
        "Precedence: CLI args > env vars > credential files > defaults.",
        formatter_class=_HelpFormatter,
    )
    cli: CliSettingsSource[argparse.ArgumentParser] = CliSettingsSource(
        Settings, root_parser=parser, cli_parse_args=list(argv), cli_kebab_case=True, cli_implicit_flags=False
    )
    return {k: v for k, v in cli().items() if v is not None}


def load_settings(argv: Sequence[str]) -> Settings:
    """Build the flat settings from the CLI (``argv``), the env, and the credential files.

    Raises ConfigError naming the first setting that is invalid.
    """
    cli_values = _cli_values(argv)
    try:
        return Settings(**cli_values)
    except ValidationError as exc:
        raise _config_error(exc) from None


def unknown_env_settings(environ: Mapping[str, str]) -> list[str]:
    """``MODEL_SYNC_*`` env vars that name no setting (typos), each with a suggestion when one is close."""
    import difflib

    known = {env_name(f) for f in Settings.model_fields}
    notes = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            notes.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return notes


def _config_error(exc: ValidationError) -> ConfigError:
    first = exc.errors(include_input=False, include_url=False)[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    what = setting_name(field) if field in Settings.model_fields else (field or "settings")
    return ConfigError(f"invalid setting {what}: {first['msg'].removeprefix('Value error, ')}")


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


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """How to reach the Model Registry."""

    base_url: str
    """``scheme://host:port``, without the API path."""
    token: SecretStr | None
    token_file: Path | None
    """The file ``token`` was read from, when it was (a projected service-account token, which the kubelet
    rotates): the client reads it again when it changes, so a sync that outlives the token still records
    its result."""
    verify: bool | str
    """True, False (plain http), or a CA bundle path."""
    author: str | None
    log_level: str
    api_version: str = "auto"
    """``v1``, ``v1alpha3``, or ``auto`` (the first answer tells)."""


@dataclass(frozen=True, slots=True)
class JobConfig:
    """Everything the job needs, checked and typed."""

    source: S3Location | UriLocation | OciLocation | PvcLocation
    destination: S3Location | OciLocation
    registry: RegistryConfig
    intent: Intent
    model_id: str | None
    model_version_id: str | None
    model_artifact_id: str | None
    metadata_path: Path | None
    job_id: str | None
    storage_path: Path
    parallel_files: int
    parallel_parts: int
    part_size: int | None
    termination_message_path: Path
    include: tuple[str, ...] = ()
    """Globs a file must match to be copied (empty: every file)."""
    exclude: tuple[str, ...] = ()
    """Globs that drop a file, after ``include``."""
    retry: RetrySettings = field(default_factory=RetrySettings)
    """Retry budget and network timeouts, for every client."""
    stop_timeout: float = 8.0
    """Seconds from SIGTERM to exit."""


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
    bucket = _require(settings, f"{side}_aws_bucket", why)
    key = getattr(settings, f"{side}_aws_key") or ""
    if side == "source" and not key:
        _require(settings, "source_aws_key", "source-type is s3: name the object or the prefix to copy")
    key_id = getattr(settings, f"{side}_aws_access_key_id")
    secret = getattr(settings, f"{side}_aws_secret_access_key")
    if key_id is None and secret is None and not _ambient_aws_identity(environ):
        _require(settings, f"{side}_aws_access_key_id", why)
    if (key_id is None) != (secret is None):
        missing = f"{side}_aws_secret_access_key" if secret is None else f"{side}_aws_access_key_id"
        _require(settings, missing, "an S3 access key needs both its id and its secret")
    return S3Location(
        bucket=bucket,
        key=key.lstrip("/"),
        region=getattr(settings, f"{side}_aws_region"),
        endpoint=getattr(settings, f"{side}_aws_endpoint"),
        access_key_id=key_id,
        secret_access_key=secret,
    )


def _existing(settings: Settings, field: str) -> Path | None:
    path: Path | None = getattr(settings, field)
    if path is not None and not path.is_file():
        raise ConfigError(f"invalid setting {setting_name(field)}: {path} does not exist")
    return path


def _oci_location(settings: Settings, side: str) -> OciLocation:
    reference = _require(settings, f"{side}_oci_uri", f"{side}-type is oci: the image reference")
    reference = reference.removeprefix("oci://").removeprefix("docker://")
    registry = getattr(settings, f"{side}_oci_registry") or _registry_host(reference) or "docker.io"
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
            scheme = urlsplit(uri).scheme
            if scheme not in ("http", "https", "hf"):
                raise ConfigError(
                    f"invalid setting {setting_name('source_uri')}: scheme {scheme or '(none)'!r} is not http, https or hf"
                )
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
                hf_endpoint=(environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"),
                hf_token=header_value(hf_token, f"env var {hf_name}") if hf_token else None,
            )
        case "pvc":
            path = _require(settings, "source_path", "source-type is pvc: the mounted file or directory")
            if not path.exists():
                raise ConfigError(
                    f"invalid setting {setting_name('source_path')}: {path} does not exist (is the PVC mounted?)"
                )
            return PvcLocation(path)
    raise AssertionError(settings.source_type)  # pragma: no cover - Literal is exhaustive


def _registry(settings: Settings, environ: Mapping[str, str]) -> RegistryConfig:
    address = _require(settings, "registry_server_address", "where the Model Registry is").strip().rstrip("/")
    parts = urlsplit(address if "://" in address else "//" + address)
    if "://" in address and parts.scheme not in ("http", "https"):
        raise ConfigError(f"invalid setting {setting_name('registry_server_address')}: scheme must be http or https")
    explicit_secure = "registry_is_secure" in settings.model_fields_set
    secure = settings.registry_is_secure if explicit_secure or "://" not in address else parts.scheme == "https"
    explicit_port = "registry_port" in settings.model_fields_set
    port = settings.registry_port if explicit_port or parts.port is None else parts.port
    base_url = f"{'https' if secure else 'http'}://{parts.hostname}:{port}{parts.path}"
    token, token_file = _registry_token(settings, environ)
    return RegistryConfig(
        base_url=base_url,
        token=token,
        token_file=token_file,
        verify=_registry_verify(settings, environ, secure),
        author=settings.registry_author,
        log_level=settings.registry_log_level,
        api_version=settings.registry_api_version,
    )


def _registry_token(settings: Settings, environ: Mapping[str, str]) -> tuple[SecretStr | None, Path | None]:
    """The registry token, and the file it was read from (``None`` for a token given as a value)."""
    if settings.registry_user_token is not None:
        return settings.registry_user_token, None
    envvar = settings.registry_user_token_envvar
    if envvar:
        value = environ.get(envvar)
        if not value:
            raise ConfigError(
                f"invalid setting {setting_name('registry_user_token_envvar')}: env var {envvar} is not set"
            )
        # Kubeflow's client reads a token *file path* from this env var; accept a path or the token itself.
        value = value.strip()
        if not value.startswith("/"):
            return header_value(value, f"{setting_name('registry_user_token_envvar')}: env var {envvar}"), None
        return _read_token_file(Path(value), f"env var {envvar}"), Path(value)
    if DEFAULT_USER_TOKEN_ENVVAR in environ:
        path = Path(environ[DEFAULT_USER_TOKEN_ENVVAR])
        return _read_token_file(path, f"env var {DEFAULT_USER_TOKEN_ENVVAR}"), path
    if DEFAULT_SA_TOKEN_PATH.is_file():
        return _read_token_file(DEFAULT_SA_TOKEN_PATH, "the service-account token"), DEFAULT_SA_TOKEN_PATH
    return None, None


def _read_token_file(path: Path, what: str) -> SecretStr:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read token file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: token file {path} is not UTF-8 text") from None
    return header_value(text, f"{what}: token file {path}")


def _registry_verify(settings: Settings, environ: Mapping[str, str], secure: bool) -> bool | str:
    if not secure:
        return False
    ca: Path | None = settings.registry_custom_ca
    field = "registry_custom_ca"
    if ca is None and settings.registry_custom_ca_envvar:
        value = environ.get(settings.registry_custom_ca_envvar)
        if value:
            ca, field = Path(value), "registry_custom_ca_envvar"
    if ca is None:
        return True
    if not ca.is_file():
        raise ConfigError(f"invalid setting {setting_name(field)}: CA bundle {ca} does not exist")
    return str(ca)


def _metadata_path(settings: Settings) -> Path | None:
    path = settings.metadata_configmap_path
    if path is None:
        return DEFAULT_METADATA_PATH if DEFAULT_METADATA_PATH.is_dir() else None
    if not path.is_dir():
        raise ConfigError(
            f"invalid setting {setting_name('metadata_configmap_path')}: {path} is not a directory (is the ConfigMap mounted?)"
        )
    return path


def build_job_config(settings: Settings, environ: Mapping[str, str] | None = None) -> JobConfig:
    """Check the settings that depend on each other and type them. Raises ConfigError; no network."""
    env = os.environ if environ is None else environ
    destination = (
        _s3_location(settings, "destination", env)
        if settings.destination_type == "s3"
        else _oci_location(settings, "destination")
    )
    return JobConfig(
        source=_source(settings, env),
        destination=destination,
        registry=_registry(settings, env),
        intent=settings.model_upload_intent,
        model_id=settings.model_id,
        model_version_id=settings.model_version_id,
        model_artifact_id=settings.model_artifact_id,
        metadata_path=_metadata_path(settings),
        job_id=settings.job_id,
        storage_path=settings.storage_path,
        parallel_files=settings.parallel_files,
        parallel_parts=settings.parallel_parts,
        part_size=settings.part_size_mib * 1024 * 1024 if settings.part_size_mib else None,
        termination_message_path=settings.termination_message_path,
        include=_globs(settings.source_include),
        exclude=_globs(settings.source_exclude),
        retry=RetrySettings(
            attempts=settings.retry_attempts,
            file_attempts=settings.retry_file_attempts,
            initial_wait=settings.retry_initial_wait,
            max_wait=settings.retry_max_wait,
            retry_after_cap=settings.retry_after_max,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
        ),
        stop_timeout=settings.stop_timeout,
    )
