"""HTTP(S)_PROXY and NO_PROXY for every client of the job, as a cluster's proxy settings spell them.

Every client honours the standard variables already: httpx (the Model Registry, OCI registries, http(s) and
the Hub) and aiobotocore (S3) read ``HTTP_PROXY``, ``HTTPS_PROXY`` and ``NO_PROXY`` (either case). What they
do not share is the spelling of ``NO_PROXY`` entries: OpenShift's cluster proxy and upstream's samples write
``*.svc.cluster.local``, while httpx and urllib (which botocore uses) match ``.svc.cluster.local`` and not the
``*.`` form, so in-cluster traffic such as the Model Registry's would go to the proxy. :func:`normalise_no_proxy`
rewrites such entries into the form both libraries match, once, before any client exists.

CIDR entries (``10.0.0.0/16``) are kept as they are; neither library matches addresses against them.
"""

from __future__ import annotations

from collections.abc import MutableMapping

__all__ = ["NO_PROXY_VARS", "normalise_no_proxy", "normalised_no_proxy"]

NO_PROXY_VARS = ("NO_PROXY", "no_proxy")


def normalised_no_proxy(value: str) -> str:
    """``*.svc.cluster.local, .example.com ,host:8080`` -> ``.svc.cluster.local,.example.com,host:8080``."""
    entries = []
    for raw in value.replace(" ", ",").split(","):
        entry = raw.strip()
        if entry.startswith("*.") and len(entry) > 2:
            entry = entry[1:]  # "*.domain" -> ".domain": subdomains of domain, as both libraries read it
        if entry and entry not in entries:
            entries.append(entry)
    return ",".join(entries)


def normalise_no_proxy(environ: MutableMapping[str, str]) -> None:
    """Rewrite ``NO_PROXY`` and ``no_proxy`` in ``environ`` (the process env, at start) with
    :func:`normalised_no_proxy`."""
    for name in NO_PROXY_VARS:
        if environ.get(name):
            environ[name] = normalised_no_proxy(environ[name])
