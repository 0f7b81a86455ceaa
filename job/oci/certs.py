"""TLS trust for OCI registries: a CA bundle setting, and the containers-certs.d directory.

The Kubeflow UI backend mounts a destination registry's CA at ``/etc/containers/certs.d/<host[:port]>/ca.crt``,
the convention skopeo, podman and CRI-O read (containers-certs.d(5)): in the directory named after the
registry, every ``*.crt`` is a CA to trust and every ``*.cert`` with the ``*.key`` of the same name is a client
certificate. :func:`registry_ssl_context` applies it to every registry the job talks to (source, destination,
base image), on top of the system's CAs and the ``*_OCI_CA_BUNDLE`` setting. Verification stays on.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from pathlib import Path

from job.errors import ConfigError

__all__ = ["DEFAULT_CERTS_DIR", "certs_d_dir", "registry_ssl_context", "untrusted_hint"]

DEFAULT_CERTS_DIR = Path("/etc/containers/certs.d")


def certs_d_dir(cert_dir: Path | None, hosts: Iterable[str]) -> Path | None:
    """The ``cert_dir/<host[:port]>`` directory of the first of ``hosts`` that has one, or None."""
    if cert_dir is None:
        return None
    for host in hosts:
        candidate = cert_dir / host
        if host and "/" not in host and host not in (".", "..") and candidate.is_dir():
            return candidate
    return None


def registry_ssl_context(*, ca_bundle: Path | None, cert_dir: Path | None, hosts: Iterable[str]) -> ssl.SSLContext:
    """A verifying context: the system's CAs, ``ca_bundle``, and the certs.d files of the registry.

    A file there that cannot be loaded is a ``ConfigError`` naming it (the job has not connected yet).
    """
    context = ssl.create_default_context()
    if ca_bundle is not None:
        _load(context.load_verify_locations, ca_bundle, cafile=str(ca_bundle))
    directory = certs_d_dir(cert_dir, hosts)
    if directory is None:
        return context
    for ca in sorted(directory.glob("*.crt")):
        _load(context.load_verify_locations, ca, cafile=str(ca))
    for cert in sorted(directory.glob("*.cert")):
        key = cert.with_suffix(".key")
        if not key.is_file():
            raise ConfigError(f"client certificate {cert}: the key {key.name} is missing beside it")
        _load(context.load_cert_chain, cert, certfile=str(cert), keyfile=str(key))
    for key in sorted(directory.glob("*.key")):
        if not key.with_suffix(".cert").is_file():
            raise ConfigError(f"client key {key}: the certificate {key.with_suffix('.cert').name} is missing beside it")
    return context


def _load(method: Callable[..., object], path: Path, **kwargs: str) -> None:
    try:
        method(**kwargs)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"TLS file {path}: cannot load it: {reason}") from None


def untrusted_hint(registry: str, cert_dir: Path | None, ca_setting: str) -> str:
    """What to say when ``registry``'s certificate does not verify: where a CA can go."""
    where = f"put its CA in {cert_dir / registry / 'ca.crt'}, or " if cert_dir is not None else ""
    return f"the TLS certificate of {registry} is not trusted: {where}set the CA bundle ({ca_setting})"
