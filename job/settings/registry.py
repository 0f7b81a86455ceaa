"""How to reach the Model Registry, from the registry settings: address, token (and the file it came
from, which a long sync reads again), TLS verification. ConfigError only; no network."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from job.errors import ConfigError
from job.settings.chain import Settings
from job.settings.checks import check_url, path_problem, read_text_file, safe_is_file
from job.settings.credentials import header_value
from job.settings.names import DEFAULT_SA_TOKEN_PATH, DEFAULT_USER_TOKEN_ENVVAR, setting_name

__all__ = ["RegistryConfig", "registry_config"]


def _require(settings: Settings, field: str, why: str) -> str:
    value = getattr(settings, field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(f"missing setting {setting_name(field)}: {why}")
    return str(value)


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


def registry_config(settings: Settings, environ: Mapping[str, str]) -> RegistryConfig:
    """How to reach the Model Registry, from the registry settings. ConfigError; no network."""
    address = _require(settings, "registry_server_address", "where the Model Registry is").strip().rstrip("/")
    # Upstream takes a bare host too: check it as https://host, as it is used.
    parts = check_url(address if "://" in address else "https://" + address,
                      setting_name("registry_server_address"), ("http", "https"))  # fmt: skip
    explicit_secure = "registry_is_secure" in settings.model_fields_set
    secure = settings.registry_is_secure if explicit_secure or "://" not in address else parts.scheme == "https"
    explicit_port = "registry_port" in settings.model_fields_set
    port = settings.registry_port if explicit_port or parts.port is None else parts.port
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname  # IPv6 keeps its brackets
    base_url = f"{'https' if secure else 'http'}://{host}:{port}{parts.path}"
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
        what = f"{setting_name('registry_user_token_envvar')}: env var {envvar}"
        if not value.startswith("/"):
            return header_value(value, what), None
        return _read_token_file(Path(value), what), Path(value)
    if DEFAULT_USER_TOKEN_ENVVAR in environ:
        path = Path(environ[DEFAULT_USER_TOKEN_ENVVAR])
        return _read_token_file(path, f"env var {DEFAULT_USER_TOKEN_ENVVAR}"), path
    if DEFAULT_SA_TOKEN_PATH.is_file():
        return _read_token_file(DEFAULT_SA_TOKEN_PATH, "the service-account token"), DEFAULT_SA_TOKEN_PATH
    return None, None


def _read_token_file(path: Path, what: str) -> SecretStr:
    problem = path_problem(path)
    if problem:
        raise ConfigError(f"{what}: token file: {problem}")
    return header_value(read_text_file(path, f"{what}: token file"), f"{what}: token file {path}")


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
    if path_problem(ca) or not safe_is_file(ca):
        raise ConfigError(f"invalid setting {setting_name(field)}: CA bundle {ca} does not exist")
    return str(ca)
