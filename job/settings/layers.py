"""The layers of the settings chain below the CLI: the env (with Kubernetes' own names) and the mounted Secrets.

:class:`CredentialFilesSource` ranks below the CLI and env layers: it asks them for the ``*_CREDENTIALS_PATH``
settings (and the registry a ``.dockerconfigjson`` login is looked up for), then reads the Secrets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

from job.errors import ConfigError
from job.settings.credentials import DockerConfig, read_docker_config, read_s3_secret, read_uri_secret
from job.settings.names import _UNPREFIXED_ENV, setting_name

__all__ = ["CredentialFilesSource", "PlainEnvSource", "registry_host"]


class PlainEnvSource(EnvSettingsSource):
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
    registry = above.get(f"{side}_oci_registry") or registry_host(above.get(f"{side}_oci_uri"))
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


def registry_host(reference: str | None) -> str | None:
    """The registry host of an image reference, or None if it names none (``busybox`` -> docker.io)."""
    if not reference:
        return None
    ref = reference.removeprefix("oci://").removeprefix("docker://")
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"
