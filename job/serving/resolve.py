"""``model-registry://`` -> the storage uri of the model: which registry, model, version and artifact.

* **Which registry** (:func:`registry_for`): the host in the uri, or the ``?namespace=`` service, or the
  configured address (``MODEL_SYNC_REGISTRY_SERVER_ADDRESS``, else upstream's ``MODEL_REGISTRY_BASE_URL``
  with ``MODEL_REGISTRY_SCHEME``, else ``http://localhost:8080``). A two-part uri whose first part could
  be a host is asked, as upstream asks: a registry answering there (200, or 401/403: it wants a token)
  makes it the host. The question carries no token: the token goes to the registry only.
* **Which version**: the one named, else the newest (by creation time, then id) that is not ARCHIVED.
* **Which artifact** (:func:`servable_artifact`): the version's model artifacts newest first; one whose
  state is not servable (PENDING: a sync still running or one that failed; ABANDONED, DELETED,
  MARKED_FOR_DELETION) is skipped, and the log says so. Servable states default to LIVE and UNKNOWN:
  UNKNOWN is what Kubeflow's own clients and UI register (``register_model`` sets no state), so refusing
  it would refuse every model registered that way. ``MODEL_SYNC_SERVE_ARTIFACT_STATES=LIVE`` is stricter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from job.errors import SourceError, SourceNotFound
from job.model_registry.client import ModelRegistryClient
from job.serving.storage_uri import RegistryUri, looks_like_host

__all__ = ["configured_registry", "registry_for", "servable_artifact"]

log = logging.getLogger(__name__)

PROBE_PATHS = ("/api/model_registry/v1alpha3/registered_models", "/api/model_registry/v1/registered_models")
PROBE_TIMEOUT = 5.0


def configured_registry(address: str | None, environ: Mapping[str, str]) -> str:
    """The registry to ask when the uri names none: the setting, else upstream's env vars, else localhost."""
    if address:
        return address
    base = environ.get("MODEL_REGISTRY_BASE_URL") or "localhost:8080"
    return base if "://" in base else f"{_scheme(environ)}://{base}"


def _scheme(environ: Mapping[str, str]) -> str:
    return environ.get("MODEL_REGISTRY_SCHEME") or "http"


async def _answers_as_registry(address: str, verify: bool | str) -> bool:
    try:
        async with httpx.AsyncClient(verify=verify, timeout=PROBE_TIMEOUT, follow_redirects=False) as http:
            for path in PROBE_PATHS:
                response = await http.get(address + path, params={"pageSize": "1"})
                if response.status_code in (200, 401, 403):
                    return True
    except (httpx.HTTPError, OSError, ValueError):
        return False
    return False


async def registry_for(
    uri: RegistryUri, configured: str, environ: Mapping[str, str], *, verify: bool | str = True
) -> tuple[str, str, str | None]:
    """``(registry address, model, version or None)`` for ``uri`` (see the module docstring)."""
    scheme = _scheme(environ)
    if uri.namespace is not None:
        service = environ.get("MODEL_REGISTRY_SERVICE_NAME") or "model-registry-service"
        domain = environ.get("MODEL_REGISTRY_CLUSTER_DOMAIN") or "svc.cluster.local"
        port = urlsplit(configured if "://" in configured else "//" + configured).port or 8080
        address = f"{scheme}://{service}.{uri.namespace}.{domain}:{port}"
        _, model, version = uri.split(first_is_host=len(uri.parts) == 3)
        log.info("namespace %s: asking the registry at %s", uri.namespace, address)
        return address, model, version
    if len(uri.parts) == 3:
        host, model, version = uri.split(first_is_host=True)
        return f"{scheme}://{host}", model, version
    if uri.ambiguous:
        first = uri.parts[0]
        if first == urlsplit(configured).netloc:
            _, model, version = uri.split(first_is_host=True)
            return configured, model, version
        if looks_like_host(first) and await _answers_as_registry(f"{scheme}://{first}", verify):
            log.info("%s: a registry answers at %s: reading %s/%s as host/model", uri.uri, first, *uri.parts)
            _, model, version = uri.split(first_is_host=True)
            return f"{scheme}://{first}", model, version
    _, model, version = uri.split(first_is_host=False)
    return configured, model, version


def _newest_first(entities: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    def key(entity: Mapping[str, Any]) -> tuple[int, int, str]:
        created = str(entity.get("createTimeSinceEpoch") or "0")
        ident = str(entity.get("id") or "0")
        return (int(created) if created.isdigit() else 0, int(ident) if ident.isdigit() else 0, ident)

    return sorted(entities, key=key, reverse=True)


async def servable_artifact(
    client: ModelRegistryClient, model: str, version: str | None, *, states: Sequence[str], where: str
) -> Mapping[str, Any]:
    """The newest servable model artifact of ``model``'s ``version`` (newest version when None)."""
    registered = await client.find_registered_model(model)
    if registered is None:
        raise SourceNotFound(f"{where}: no registered model named {model!r}", uri=where)
    found: Mapping[str, Any] | None
    if version is not None:
        found = await client.find_model_version(version, str(registered["id"]))
        if found is None:
            raise SourceNotFound(f"{where}: model {model!r} has no version named {version!r}", uri=where)
    else:
        versions = [v for v in await client.list_model_versions(str(registered["id"])) if v.get("state") != "ARCHIVED"]
        if not versions:
            raise SourceNotFound(f"{where}: model {model!r} has no version (that is not ARCHIVED)", uri=where)
        found = _newest_first(versions)[0]
        log.info("model %s: newest version %r (id %s)", model, found.get("name"), found.get("id"))
    name = found.get("name")
    artifacts = [
        a
        for a in await client.list_model_artifacts(str(found["id"]))
        if a.get("artifactType", "model-artifact") == "model-artifact"
    ]
    for artifact in _newest_first(artifacts):
        state, uri = artifact.get("state") or "UNKNOWN", artifact.get("uri")
        if state not in states:
            log.warning("skipping model artifact %s of %s/%s: its state is %s", artifact.get("id"), model, name, state)
            continue
        if not uri:
            log.warning("skipping model artifact %s of %s/%s: it has no uri", artifact.get("id"), model, name)
            continue
        log.info("model %s version %s: artifact %s (%s) at %s", model, name, artifact.get("id"), state, uri)
        return artifact
    seen = ", ".join(str(a.get("state") or "UNKNOWN") for a in artifacts) or "none"
    raise SourceError(
        f"{where}: model {model!r} version {name!r} has no servable model artifact "
        f"(servable states: {', '.join(states)}; found: {seen})",
        uri=where,
    )
