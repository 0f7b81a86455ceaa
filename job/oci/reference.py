"""Image references: ``[registry/]repository[:tag][@digest]``, parsed once, following distribution's grammar.

The grammar is distribution's ``reference`` package (``reference/regexp.go``), with Docker's
normalisation (``reference/normalize.go``):

* the first path component is the registry when it contains a ``.`` or a ``:``, or is ``localhost``;
  otherwise the registry is ``docker.io`` (and ``index.docker.io`` is spelled ``docker.io``);
* a one-component repository on Docker Hub gets ``library/`` (``busybox`` -> ``docker.io/library/busybox``);
* path components are lowercase ``[a-z0-9]`` runs joined by ``.``, ``_``, ``__`` or dashes;
* a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; a digest is ``algorithm:hex`` (sha256: 64 hex digits);
* without a tag or a digest the tag is ``latest``.

oras-py has a parser (``oras.container.Container``) but it does not fit: it treats ``localhost/x`` as a
Docker Hub namespace, adds no ``library/``, and validates nothing (``UPPER/Case`` passes), so this small
function is the one place references are parsed. An ``oci://`` or ``docker://`` prefix is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from job.errors import ConfigError, SourceError

__all__ = ["DOCKER_HUB", "ImageReference", "checked_digest", "parse_reference"]

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
"""Where Docker Hub's distribution API answers (``docker.io`` itself only redirects)."""
DEFAULT_TAG = "latest"

_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])"
_DOMAIN = re.compile(rf"^{_HOST}(?::[0-9]+)?$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A parsed, normalised image reference."""

    registry: str
    """Host[:port] as users write it: ``docker.io``, ``quay.io``, ``127.0.0.1:5000``, ``localhost``."""
    repository: str
    """Path inside the registry, with Docker Hub's ``library/`` added: ``library/busybox``."""
    tag: str | None = None
    """The tag; ``None`` only when a digest is given without one."""
    digest: str | None = None
    """``sha256:<hex>`` when pinned."""

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The host the distribution API answers on (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _invalid(text: str, why: str) -> ConfigError:
    return ConfigError(f"invalid image reference {text!r}: {why}")


def parse_reference(text: str) -> ImageReference:
    """Parse and normalise ``text``; raise :class:`ConfigError` naming what is wrong.

    ``busybox`` -> ``docker.io/library/busybox:latest``; ``127.0.0.1:5000/m/x@sha256:...`` keeps the
    port and has no tag; ``localhost/x:1`` is a local registry, not a Docker Hub namespace.
    """
    raw = text.strip()
    for prefix in ("oci://", "docker://"):
        raw = raw.removeprefix(prefix)
    if not raw:
        raise _invalid(text, "it is empty")
    rest, at, digest = raw.partition("@")
    if at:
        if not _DIGEST.match(digest):
            raise _invalid(text, f"digest {digest!r} is not algorithm:hex")
        if digest.startswith("sha256:") and not _SHA256.match(digest):
            raise _invalid(text, "a sha256 digest is 64 lowercase hex digits")
    registry = DOCKER_HUB
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.match(first):
            raise _invalid(text, f"registry {first!r} is not a host[:port]")
        registry, rest = first, remainder
    # The tag is after the last ':' that follows the last '/' (a port's ':' was consumed above).
    name, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise _invalid(text, f"tag {tag!r} is not valid (letters, digits, '_', '.', '-'; at most 128)")
    if not name:
        raise _invalid(text, "it names no repository")
    components = name.split("/")
    for component in components:
        if not _COMPONENT.match(component):
            why = "uppercase letters are not allowed" if component.lower() != component else "bad characters"
            raise _invalid(text, f"repository component {component!r}: {why}")
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and len(components) == 1:
        name = f"library/{name}"
    if len(registry) + 1 + len(name) > _MAX_NAME:
        raise _invalid(text, f"the name is longer than {_MAX_NAME} characters")
    if tag is None and not at:
        tag = DEFAULT_TAG
    return ImageReference(registry=registry, repository=name, tag=tag, digest=digest if at else None)


_BLOB_DIGEST = re.compile(r"^(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


def checked_digest(value: object, what: str) -> str:
    """``value`` if it is a digest this job can verify (``sha256:`` + 64 or ``sha512:`` + 128 lowercase hex, the
    OCI image spec's registered algorithms); a ``SourceError`` otherwise. Digests read from a manifest end up in
    URL paths: one like ``../../v2/_catalog?x=`` must never be requested."""
    if not isinstance(value, str) or not _BLOB_DIGEST.match(value):
        raise SourceError(f"{what}: {str(value)[:100]!r} is not a digest (algorithm:hex)")
    return value
