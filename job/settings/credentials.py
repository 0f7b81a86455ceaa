"""Readers for mounted Kubernetes Secrets: an S3 key directory, a ``.dockerconfigjson``, a URI directory.

Each reader turns a mounted Secret into plain values; it knows nothing about precedence. The
settings chain (``job.settings.layers``) ranks what they return below CLI args and env vars.

A credentials path that was set but is missing or malformed is a ``ConfigError``: a Job whose
Secret did not mount must fail before it talks to any server, with a message naming the setting.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from job.errors import ConfigError
from job.settings.checks import path_problem, read_text_file, safe_is_dir, shown

# The files of an S3 Secret and the setting suffix each one fills. The first file found wins:
# AWS_REGION before AWS_DEFAULT_REGION, AWS_ENDPOINT_URL before AWS_S3_ENDPOINT, ...
S3_SECRET_FILES: dict[str, tuple[str, ...]] = {
    "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "aws_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "aws_endpoint": ("AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT"),
    "aws_bucket": ("AWS_BUCKET", "AWS_S3_BUCKET"),
}

_SECRET_SUFFIXES = frozenset({"aws_access_key_id", "aws_secret_access_key"})


def secret_value(raw: str, what: str) -> SecretStr:
    """A secret as it is sent: surrounding white space removed (a Secret or env var made with ``echo`` ends
    in a newline), and refused with a ``ConfigError`` naming ``what`` (never the value) when a control
    character is left inside: HTTP header values cannot carry one, so such a secret could only fail later,
    after retries, with an HTTP library's error that prints it."""
    value = raw.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigError(f"{what}: the value contains a control character (a line break inside it?)")
    return SecretStr(value)


def header_value(raw: str, what: str) -> SecretStr:
    """:func:`secret_value` for a value sent as it is in an HTTP header (a bearer token, a ``HEADERS`` line):
    printable ASCII only, as HTTP/1.1 clients encode header values."""
    value = secret_value(raw, what)
    if not value.get_secret_value().isascii():
        raise ConfigError(f"{what}: the value is not ASCII, which an HTTP header cannot carry")
    return value


def _read_value(path: Path, setting: str) -> str | None:
    """A Secret key's file, or None when there is no such key. Anything there that cannot be read (a directory,
    a dangling link, no permission, not UTF-8) is a ConfigError: a key that is present must be usable."""
    if not os.path.lexists(path):
        return None
    # Secrets written with `echo` end with a newline; `kubectl create secret --from-file` keeps it.
    return read_text_file(path, setting).rstrip("\r\n")


def _require_dir(path: Path, setting: str) -> None:
    problem = path_problem(path)
    if problem:
        raise ConfigError(f"{setting}: credentials path {shown(path)}: {problem}")
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read credentials path {path}: {exc.strerror}") from None
    if not exists:
        raise ConfigError(f"{setting}: credentials path {path} does not exist (is the Secret mounted?)")
    if not is_dir:
        raise ConfigError(f"{setting}: credentials path {path} is not a directory of Secret keys")


def read_s3_secret(path: Path, *, setting: str) -> dict[str, Any]:
    """Read an S3 Secret directory into ``{suffix: value}`` (suffixes of :data:`S3_SECRET_FILES`).

    Keys and secret keys come back as ``SecretStr``; absent files are simply absent.
    """
    _require_dir(path, setting)
    values: dict[str, Any] = {}
    for suffix, names in S3_SECRET_FILES.items():
        for name in names:
            text = _read_value(path / name, setting)
            if text is not None:
                values[suffix] = SecretStr(text) if suffix in _SECRET_SUFFIXES else text
                break
    return values


def read_uri_secret(path: Path, *, setting: str) -> dict[str, Any]:
    """Read a URI Secret directory: file ``URI`` (the source URI, which may embed a token)."""
    _require_dir(path, setting)
    values: dict[str, Any] = {}
    uri = _read_value(path / "URI", setting)
    if uri is not None:
        values["uri"] = uri
    return values


def read_uri_headers(path: Path, *, setting: str) -> dict[str, SecretStr]:
    """Read the optional ``HEADERS`` file of a URI Secret: one ``Name: value`` a line, for authenticated servers.

    Blank lines and lines starting with ``#`` are skipped; values are secrets (tokens, cookies).
    """
    _require_dir(path, setting)
    headers_file = path / "HEADERS"
    text = _read_value(headers_file, setting)
    if text is None:
        return {}
    headers: dict[str, SecretStr] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name or any(c.isspace() for c in name):
            raise ConfigError(f"{setting}: {headers_file} line {number} is not 'Name: value'")
        headers[name] = header_value(value, f"{setting}: {headers_file} line {number} ({name})")
    return headers


@dataclass(frozen=True, slots=True)
class RegistryLogin:
    """A username and password for one OCI registry."""

    username: str
    password: SecretStr


def _normalise_registry_key(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000``: docker's config keys come in several spellings."""
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    host = host.split("/", 1)[0]
    return host.lower()


# Docker Hub's credentials are stored under its v1 index URL, while image references say docker.io.
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


class DockerConfig:
    """A parsed ``.dockerconfigjson``: registry host -> login, or None for an anonymous entry."""

    def __init__(self, logins: dict[str, RegistryLogin | None]) -> None:
        self._logins = logins

    def __repr__(self) -> str:  # never print the logins
        return f"DockerConfig(registries={sorted(self._logins)})"

    @property
    def registries(self) -> list[str]:
        """The registry hosts this config has logins for."""
        return sorted(self._logins)

    def _key(self, registry: str) -> str | None:
        host = _normalise_registry_key(registry)
        if host in self._logins:
            return host
        if host in _DOCKER_HUB_ALIASES:
            return next((alias for alias in sorted(_DOCKER_HUB_ALIASES) if alias in self._logins), None)
        return None

    def has(self, registry: str) -> bool:
        """Whether the config has an entry (a login, or an anonymous one) for ``registry``."""
        return self._key(registry) is not None

    def lookup(self, registry: str) -> RegistryLogin | None:
        """The login for ``registry`` (a host, host:port, or any of docker's key spellings); None if
        there is no entry or the entry is anonymous (``"auth": ""``)."""
        key = self._key(registry)
        return self._logins[key] if key is not None else None


def _resolve_dockerconfig_file(path: Path, setting: str) -> Path:
    # The upstream job takes the file itself; a `kubernetes.io/dockerconfigjson` Secret mounted as a
    # volume is a directory holding `.dockerconfigjson`. Accept both.
    problem = path_problem(path)
    if problem:
        raise ConfigError(f"{setting}: credentials path {shown(path)}: {problem}")
    if safe_is_dir(path):
        for name in (".dockerconfigjson", "config.json", ".dockercfg"):
            if os.path.lexists(path / name):
                return path / name
        raise ConfigError(f"{setting}: {path} holds no .dockerconfigjson")
    if not os.path.lexists(path):
        raise ConfigError(f"{setting}: credentials path {path} does not exist (is the Secret mounted?)")
    return path


def read_docker_config(path: Path, *, setting: str) -> DockerConfig:
    """Parse a ``.dockerconfigjson`` (file, or a mounted Secret directory holding one).

    Each entry gives either ``auth`` (base64 of ``user:password``) or ``username`` and ``password``.
    Anything malformed is a ConfigError naming the setting and the entry, never a secret.
    """
    file = _resolve_dockerconfig_file(path, setting)
    text = read_text_file(file, setting)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{setting}: {file} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ConfigError(f"{setting}: {file} is not a docker config (JSON nested too deep)") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{setting}: {file} is not a docker config (expected a JSON object)")
    # `.dockercfg` (legacy) is the bare auths map; `.dockerconfigjson` wraps it in "auths".
    auths = doc.get("auths", doc if file.name == ".dockercfg" else None)
    if not isinstance(auths, dict):
        raise ConfigError(f'{setting}: {file} has no "auths" object')
    logins: dict[str, RegistryLogin | None] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{setting}: entry {key!r} in {file} is not an object")
        logins[_normalise_registry_key(key)] = _login_from_entry(key, entry, file, setting)
    return DockerConfig(logins)


def _login_from_entry(key: str, entry: dict[str, Any], file: Path, setting: str) -> RegistryLogin | None:
    auth = entry.get("auth")
    user, secret = entry.get("username"), entry.get("password")
    if auth == "" and not user and not secret:
        # An anonymous entry, as upstream's own sample writes for a registry without auth.
        return None
    if auth:
        try:
            decoded = base64.b64decode(str(auth), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(f'{setting}: entry {key!r} in {file}: "auth" is not base64 of user:password') from None
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            raise ConfigError(f'{setting}: entry {key!r} in {file}: "auth" does not decode to user:password')
        return RegistryLogin(username, SecretStr(password))
    if isinstance(user, str) and user and isinstance(secret, str):
        return RegistryLogin(user, SecretStr(secret))
    raise ConfigError(f'{setting}: entry {key!r} in {file} has neither "auth" nor "username" and "password"')
