"""A KServe ``storageUri``, parsed without the network: what to fetch, and from where.

``model-registry://`` URIs are parsed as upstream's initializer (kubeflow/hub ``cmd/csi``) parses them:

* ``model-registry://model``, ``model-registry://model/version``,
  ``model-registry://host[:port]/model``, ``model-registry://host[:port]/model/version``;
* the path is cut in at most three parts (``host/model/version``; a version may hold ``/``); with two
  parts, the first is a host when it is the configured registry's, or when a registry answers there
  (:func:`job.serving.resolve.registry_for` asks, as upstream does), else it is the model;
* ``?namespace=ns`` points at ``$MODEL_REGISTRY_SERVICE_NAME.ns.$MODEL_REGISTRY_CLUSTER_DOMAIN``, on the
  port of the configured address (default 8080);
* no version: the newest version of the model.

Every other supported scheme names the model's storage directly and maps onto a source's settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from job.errors import ConfigError

__all__ = ["REGISTRY_SCHEME", "RegistryUri", "looks_like_host", "parse_registry_uri", "source_settings"]

REGISTRY_SCHEME = "model-registry://"
SCHEMES = ("model-registry://", "s3://", "oci://", "hf://", "http://", "https://")
_NAMESPACE = re.compile(r"^[a-zA-Z0-9_-]+$")
_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::\d{1,5})?$")
WHAT = "storage uri (the initializer's first argument)"


@dataclass(frozen=True, slots=True)
class RegistryUri:
    """The parts of a ``model-registry://`` URI."""

    uri: str
    parts: tuple[str, ...]
    """The path cut in at most three parts: ``[host/]model[/version]``, decoded."""
    namespace: str | None

    @property
    def ambiguous(self) -> bool:
        """Two parts: ``host/model`` or ``model/version``, which only the network tells."""
        return len(self.parts) == 2

    def split(self, first_is_host: bool) -> tuple[str | None, str, str | None]:
        """``(host, model, version)`` once it is known whether the first of several parts is a host."""
        parts = self.parts
        host = parts[0] if first_is_host and len(parts) >= 2 else None
        rest = parts[1:] if host is not None else parts
        if len(rest) > 2:  # three parts whose first is not a host: model/version/... is not a uri upstream reads
            raise ConfigError(f"invalid {WHAT} {self.uri!r}: expected model-registry://[host[:port]/]model[/version]")
        return host, rest[0], rest[1] if len(rest) == 2 else None


def looks_like_host(part: str) -> bool:
    """Could ``part`` be ``host[:port]``? (A model name with ``_`` or capitals cannot.)"""
    return bool(_HOST.match(part))


def parse_registry_uri(uri: str) -> RegistryUri:
    """Parse ``model-registry://...``; ConfigError naming the argument for one upstream would not read."""
    rest, _, query = uri[len(REGISTRY_SCHEME) :].partition("?")
    parts = tuple(unquote(p) for p in rest.split("/", 2))
    if parts and parts[-1] == "":
        parts = parts[:-1]  # a trailing slash
    if not parts or any(not p.strip() for p in parts):
        raise ConfigError(f"invalid {WHAT} {uri!r}: expected model-registry://[host[:port]/]model[/version]")
    namespace = None
    values = parse_qs(query).get("namespace")
    if values:
        namespace = values[0]
        if not _NAMESPACE.match(namespace):
            raise ConfigError(f"invalid {WHAT} {uri!r}: namespace {namespace!r} is not a Kubernetes namespace name")
    return RegistryUri(uri=uri, parts=parts, namespace=namespace)


def source_settings(uri: str) -> dict[str, Any]:
    """The source settings that read a direct storage URI (``s3://``, ``oci://``, ``hf://``, ``http(s)://``)."""
    if uri.startswith("s3://"):
        parts = urlsplit(uri)
        if not parts.netloc:
            raise ConfigError(f"invalid {WHAT} {uri!r}: expected s3://bucket/prefix")
        key = unquote(parts.path.lstrip("/"))
        # KServe reads s3://bucket/prefix as every object under the prefix (or the one object it names).
        return {"source_type": "s3", "source_aws_bucket": parts.netloc, "source_aws_key": key or "/"}
    if uri.startswith("oci://"):
        return {"source_type": "oci", "source_oci_uri": uri.removeprefix("oci://")}
    if uri.startswith(("hf://", "http://", "https://")):
        return {"source_type": "uri", "source_uri": uri}
    raise ConfigError(f"invalid {WHAT} {uri!r}: model-sync serves {', '.join(SCHEMES)} URIs")
