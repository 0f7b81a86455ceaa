"""Async client for the Kubeflow Model Registry REST API (v1 or v1alpha3): the calls model-sync needs, nothing more.

Both API generations are spoken (:mod:`job.model_registry.api`): the server's is found from the first answer
(``api_version="auto"``) or forced (``MODEL_SYNC_REGISTRY_API_VERSION``).

Entities are plain dicts in the REST (camelCase) shape. Behaviour follows the real Go server as described in
``tests/standin/BEHAVIOURS.md`` (cited as §n). Every non-2xx answer becomes
``ModelRegistryError`` (``.status``, ``.code``), one line: "what we did, to which object: <status> <code>:
<server message>" from the ``{code, message}`` body (§5) or a plain-text body cut to 200 characters
(:mod:`job.model_registry.errors`); the bearer token (:mod:`job.model_registry.token`) never appears in a
message or log. ``find_*`` returns ``None`` on the server's JSON 404 (§5), ``get_*`` raises. Retries
(``job.retry``, logged by its ``log_before_sleep``): transport errors, 408, 429 and 5xx with jittered exponential
backoff, bounded by ``retry_attempts``; ``Retry-After`` (a throttling proxy's 429, a server's 503) sets the wait,
capped. Never other 4xx. A create (POST) that failed ambiguously is not blindly re-sent (see ``_create``). Every
PATCH sends ``state``: the server resets an omitted state (§7).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx

from job.errors import ConfigError, ModelRegistryError
from job.model_registry.api import ApiPrefix
from job.model_registry.errors import error_body, retry_cause, status_error, unreachable_error
from job.model_registry.token import BearerToken
from job.retry import DEFAULT_ATTEMPTS, DEFAULT_INITIAL_WAIT, RetrySettings, is_retryable, log_before_sleep
from job.settings.metadata import comparable_custom_properties, writable_custom_properties
from job.settings.registry import RegistryConfig

__all__ = ["DEFAULT_TIMEOUT", "Entity", "ModelRegistryClient", "checked_id"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
PAGE_SIZE = 100  # items per list request
_ID = re.compile(r"^[1-9][0-9]{0,9}$")  # ids are decimal strings (§3)
# Not in PATCH bodies: the update schemas lack them and the strict decoder answers 400 (§2).
_NOT_UPDATABLE = frozenset(
    {"id", "name", "registeredModelId", "createTimeSinceEpoch", "lastUpdateTimeSinceEpoch", "artifactType"}
)

Entity = dict[str, Any]
"""A registry entity as the REST API returns it (camelCase keys, ids as strings)."""


@dataclass(frozen=True)
class _Kind:
    noun: str  # for messages
    path: str  # GET/PATCH {path}/{id}
    finder: str  # GET {finder}?name=[&parentResourceId=]
    parent: _Kind | None = None


_MODEL = _Kind("registered model", "/registered_models", "/registered_model")
_VERSION = _Kind("model version", "/model_versions", "/model_version", _MODEL)
_ARTIFACT = _Kind("model artifact", "/model_artifacts", "/model_artifact", _VERSION)


def checked_id(value: str, what: str) -> str:
    """``value`` if it is a Model Registry id (a positive decimal string, §3); ConfigError otherwise."""
    # Ids land in URL paths: refuse anything but the server's id syntax rather than build odd paths.
    if not isinstance(value, str) or not _ID.match(value):
        raise ConfigError(f"{what} id {value!r} is not a Model Registry id (a positive decimal number)")
    return value


def _ssl_verify(verify: bool | str) -> bool | ssl.SSLContext:
    # httpx 0.28 deprecates verify=<path>; build the context ourselves (and fail as a config error).
    if isinstance(verify, bool):
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"registry CA bundle {verify}: cannot load it: {exc}") from exc


def _matches(sent: Mapping[str, Any], found: Mapping[str, Any]) -> bool:
    """Whether ``found`` is what creating ``sent`` would have produced (struct properties decoded, §6)."""
    for key, value in sent.items():
        if key == "customProperties":
            theirs = comparable_custom_properties(found.get(key))
            if any(theirs.get(k) != v for k, v in comparable_custom_properties(value).items()):
                return False
        elif found.get(key) != value:
            return False
    return True


def _is_raw_retryable(exc: BaseException) -> bool:
    # Only retry raw httpx failures inside our loop: a ModelRegistryError raised by a nested call (the
    # lookup before a re-sent POST) already went through its own retries.
    return isinstance(exc, httpx.TransportError | httpx.HTTPStatusError) and is_retryable(exc)


class ModelRegistryClient:
    """Async Model Registry REST client. Use as ``async with ModelRegistryClient(...) as registry:``.

    ``base_url`` is the server's origin (``https://host:port``); the API prefix is added unless present.
    ``token`` is sent as ``Authorization: Bearer <token>``. With ``token_file`` (where ``token`` came from: a
    projected service-account token, which the kubelet rewrites before it expires) the file is read again
    whenever it changed (a ``stat`` per request) and once more after a 401, which is then retried once: a
    sync that outlives its first token still records its result instead of leaving the artifact PENDING.
    ``verify`` is a bool or the path of a CA bundle.
    ``author`` is the default ``author`` of model versions this client creates. ``retry_attempts`` counts
    the first try; ``retry_initial_wait`` scales the backoff (0 disables waiting, for tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        token_file: str | os.PathLike[str] | None = None,
        verify: bool | str = True,
        author: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry_attempts: int = DEFAULT_ATTEMPTS,
        retry_initial_wait: float = DEFAULT_INITIAL_WAIT,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetrySettings | None = None,
        api_version: str = "auto",
    ) -> None:
        self._api = ApiPrefix(base_url, api_version)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.author = author
        self._token = BearerToken(token, token_file)
        # The job's settings (MODEL_SYNC_RETRY_*, *_TIMEOUT) when given; the keyword defaults otherwise.
        self._retry = retry or RetrySettings(attempts=retry_attempts, initial_wait=retry_initial_wait)
        self._attempts = self._retry.attempts
        if retry is not None and timeout is DEFAULT_TIMEOUT:
            timeout = retry.httpx_timeout()
        self._http = httpx.AsyncClient(
            base_url=self._api.origin,
            headers=headers,
            verify=_ssl_verify(verify),
            timeout=timeout,
            transport=transport,
            # Never: the bearer token goes to the registry's address only, not to where a redirect points.
            follow_redirects=False,
        )

    @classmethod
    def for_registry(cls, registry: RegistryConfig, retry: RetrySettings) -> ModelRegistryClient:
        """A client for the configured registry: its address, token (and token file), CA and author."""
        return cls(
            registry.base_url,
            token=registry.token.get_secret_value() if registry.token else None,
            token_file=registry.token_file,
            verify=registry.verify,
            author=registry.author,
            retry=retry,
            api_version=registry.api_version,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- registered models ---------------------------------------------------------------------------

    async def get_registered_model(self, model_id: str) -> Entity:
        """GET /registered_models/{id}; 404 raises."""
        return await self._get(_MODEL, model_id)

    async def find_registered_model(self, name: str) -> Entity | None:
        """GET /registered_model?name= (names are unique registry-wide, §4); None when there is none."""
        return await self._find(_MODEL, name, None)

    async def create_registered_model(self, body: Mapping[str, Any]) -> Entity:
        """POST /registered_models. ``body`` is a RegisteredModelCreate and must have a ``name``."""
        return await self._create(_MODEL, "/registered_models", body, None)

    async def update_registered_model(
        self, model_id: str, changes: Mapping[str, Any], *, state: str | None = None
    ) -> Entity:
        """PATCH /registered_models/{id}. ``state`` None keeps the current one (read, then re-sent, §7)."""
        return await self._update(_MODEL, model_id, changes, state)

    # -- model versions ------------------------------------------------------------------------------

    async def get_model_version(self, version_id: str) -> Entity:
        """GET /model_versions/{id}; 404 raises."""
        return await self._get(_VERSION, version_id)

    async def find_model_version(self, name: str, registered_model_id: str) -> Entity | None:
        """GET /model_version?name=&parentResourceId= (names are unique per model, §4); None when absent."""
        return await self._find(_VERSION, name, registered_model_id)

    async def create_model_version(self, registered_model_id: str, body: Mapping[str, Any]) -> Entity:
        """POST /registered_models/{id}/versions. Fills ``registeredModelId`` (required there too, §2)
        and ``author`` from the client's default when the body has none."""
        mid = checked_id(registered_model_id, _MODEL.noun)
        full = {**body, "registeredModelId": mid}
        if self.author and not full.get("author"):
            full["author"] = self.author
        return await self._create(_VERSION, f"/registered_models/{mid}/versions", full, mid)

    async def update_model_version(
        self, version_id: str, changes: Mapping[str, Any], *, state: str | None = None
    ) -> Entity:
        """PATCH /model_versions/{id}. ``state`` None keeps the current one (read, then re-sent, §7)."""
        return await self._update(_VERSION, version_id, changes, state)

    async def list_model_versions(self, registered_model_id: str) -> list[Entity]:
        """All versions of a registered model (every page). An unknown model gives ``[]`` (§5)."""
        mid = checked_id(registered_model_id, _MODEL.noun)
        return await self._list(f"listing versions of registered model {mid}", f"/registered_models/{mid}/versions")

    # -- model artifacts -----------------------------------------------------------------------------

    async def get_model_artifact(self, artifact_id: str) -> Entity:
        """GET /model_artifacts/{id}; 404 raises."""
        return await self._get(_ARTIFACT, artifact_id)

    async def find_model_artifact(self, name: str, model_version_id: str) -> Entity | None:
        """GET /model_artifact?name=&parentResourceId= (names are unique per version, §4); None when absent."""
        return await self._find(_ARTIFACT, name, model_version_id)

    async def create_model_artifact(self, model_version_id: str, body: Mapping[str, Any]) -> Entity:
        """POST /model_versions/{id}/artifacts with ``artifactType: model-artifact``.

        That endpoint applies no defaults (§2, §8), so ``state`` is sent as ``UNKNOWN`` unless the body sets it.
        ``body`` must have a ``name``: it is what makes a repeated POST detectable.
        """
        vid = checked_id(model_version_id, _VERSION.noun)
        full = {"state": "UNKNOWN", **body, "artifactType": "model-artifact"}
        return await self._create(_ARTIFACT, f"/model_versions/{vid}/artifacts", full, vid)

    async def update_model_artifact(
        self, artifact_id: str, changes: Mapping[str, Any], *, state: str | None = None
    ) -> Entity:
        """PATCH /model_artifacts/{id}. ``state`` None keeps the current one (read, then re-sent): an omitted
        state would become UNKNOWN (§7). ``customProperties``, when given, replace the whole set."""
        return await self._update(_ARTIFACT, artifact_id, changes, state)

    async def list_model_artifacts(self, model_version_id: str) -> list[Entity]:
        """All artifacts of a model version (every page). An unknown version gives ``[]`` (§5)."""
        vid = checked_id(model_version_id, _VERSION.noun)
        return await self._list(f"listing artifacts of model version {vid}", f"/model_versions/{vid}/artifacts")

    # -- machinery -----------------------------------------------------------------------------------

    async def _get(self, kind: _Kind, entity_id: str) -> Entity:
        eid = checked_id(entity_id, kind.noun)
        return await self._call(f"getting {kind.noun} {eid}", "GET", f"{kind.path}/{eid}")

    async def _find(self, kind: _Kind, name: str, parent_id: str | None) -> Entity | None:
        what, params = f"looking up {kind.noun} {name!r}", {"name": name}
        if kind.parent is not None:
            params["parentResourceId"] = checked_id(str(parent_id), kind.parent.noun)
            what += f" of {kind.parent.noun} {parent_id}"
        found = await self._call(what, "GET", kind.finder, params=params, missing_ok=True)
        return found or None

    async def _create(self, kind: _Kind, path: str, body: Mapping[str, Any], parent_id: str | None) -> Entity:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {kind.noun} create body needs a name")
        what = f"creating {kind.noun} {name!r}" + (f" of {kind.parent.noun} {parent_id}" if kind.parent else "")

        async def landed_already() -> Entity | None:
            # A POST that failed with a transport error or a 5xx may still have been committed: the
            # response got lost, or a proxy gave up while the server finished. Re-sending it blindly
            # would get 409 (names are unique, §4) for an entity that is in fact ours. So before each
            # re-send, look the name up: an entity equal to what we sent is taken as ours; anything
            # else under that name is a real conflict.
            existing = await self._find(kind, name, parent_id)
            if existing is None:
                return None
            if _matches(body, existing):
                logger.info("%s: it was created by the attempt that failed (id %s)", what, existing.get("id"))
                return existing
            other = f"a different entity with that name (id {existing.get('id')}) appeared while retrying"
            raise ModelRegistryError(f"{what}: 409 Conflict: {other}", status=409, code="Conflict")

        return await self._call(what, "POST", path, json=dict(body), before_retry=landed_already)

    async def _update(self, kind: _Kind, entity_id: str, changes: Mapping[str, Any], state: str | None) -> Entity:
        eid = checked_id(entity_id, kind.noun)
        body = {k: v for k, v in changes.items() if k not in _NOT_UPDATABLE and k != "state"}
        if "customProperties" in body:
            body["customProperties"] = writable_custom_properties(body["customProperties"])
        if state is None:
            state = changes.get("state") or (await self._get(kind, eid)).get("state")
        if state is not None:
            body["state"] = state  # always sent: the server resets an omitted state (§7)
        return await self._call(f"updating {kind.noun} {eid}", "PATCH", f"{kind.path}/{eid}", json=body)

    async def _list(self, what: str, path: str) -> list[Entity]:
        items: list[Entity] = []
        params, seen = {"pageSize": str(PAGE_SIZE)}, set()
        while True:
            page = await self._call(what, "GET", path, params=params)
            items.extend(page.get("items") or [])
            token = page.get("nextPageToken") or ""
            if not page.get("items") or not token or token in seen:  # a server repeating its token ends it
                return items
            seen.add(token)
            params["nextPageToken"] = token

    async def _call(
        self,
        what: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        missing_ok: bool = False,
        before_retry: Callable[[], Awaitable[Entity | None]] | None = None,
    ) -> Entity:
        """One logical call with retries. Returns the JSON object ({} for an empty body or a JSON 404 when
        ``missing_ok``). ``before_retry`` runs before each re-send; a non-None result ends the call with it."""
        log_retry = log_before_sleep(logger, what, self._attempts, retry_cause(self._token.redact))
        policy = self._retry.policy(retry_on=_is_raw_retryable, before_sleep=log_retry)
        try:
            async for attempt in policy:
                with attempt:
                    if before_retry is not None and attempt.retry_state.attempt_number > 1:
                        landed = await before_retry()
                        if landed is not None:
                            return landed
                    return await self._send(what, method, path, params=params, json=json, missing_ok=missing_ok)
        except httpx.HTTPStatusError as exc:
            raise status_error(what, exc.response, served=self._api.served(), redact=self._token.redact) from exc
        except httpx.TransportError as exc:
            origin, redact = str(self._http.base_url).rstrip("/"), self._token.redact
            raise unreachable_error(what, exc, origin=origin, attempts=self._attempts, redact=redact) from exc
        raise AssertionError("unreachable: the retry policy re-raises")  # pragma: no cover

    async def _send(
        self, what: str, method: str, path: str, *, params: Mapping[str, str] | None, json: Any, missing_ok: bool
    ) -> Entity:
        self._reload_token()
        started = time.monotonic()
        response = await self._api.request(self._http, method, path, params=params, json=json)
        if response.status_code == 401 and self._reload_token(force=True):
            logger.info(
                "the registry refused the token; sending %s %s again with the token file's new one", method, path
            )
            response = await self._api.request(self._http, method, path, params=params, json=json)
        took, target = time.monotonic() - started, response.request.url.raw_path.decode()
        logger.debug("%s %s -> %d (%.3fs)", method, target, response.status_code, took)
        if response.is_success:
            if not response.content:
                return {}
            data: Any = None
            with contextlib.suppress(ValueError):
                data = response.json()
            if not isinstance(data, dict):
                raise ModelRegistryError(
                    f"{what}: {response.status_code} with a body that is not a JSON object",
                    status=response.status_code,
                )
            return data
        if missing_ok and response.status_code == 404 and error_body(response) is not None:
            return {}
        raise httpx.HTTPStatusError(
            f"{response.status_code} from {method} {path}", request=response.request, response=response
        )

    def _reload_token(self, *, force: bool = False) -> bool:
        """Read the token file again if it changed (or if ``force``; :meth:`BearerToken.reload`); True when the
        token is a new one, which is then sent from here on."""
        token = self._token.reload(force=force)
        if token is None:
            return False
        self._http.headers["Authorization"] = f"Bearer {token}"
        return True
