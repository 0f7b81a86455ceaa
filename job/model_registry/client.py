"""Async client for the Kubeflow Model Registry REST API (v1 or v1alpha3): the calls model-sync needs, nothing more.

Both API generations are spoken: the server's is found from the first answer (``api_version="auto"``) or
forced (``MODEL_SYNC_REGISTRY_API_VERSION``).

Entities are plain dicts in the REST (camelCase) shape. Behaviour follows the real Go server as described in
``tests/standin/BEHAVIOURS.md`` (cited as §n). Every non-2xx answer becomes
``ModelRegistryError`` (``.status``, ``.code``), one line: "what we did, to which object: <status> <code>:
<server message>" from the ``{code, message}`` body (§5) or a plain-text body cut to 200 characters; the bearer
token never appears in a message or log. ``find_*`` returns ``None`` on the server's JSON 404 (§5), ``get_*``
raises. Retries (``job.retry``): transport errors, 408, 429 and 5xx with jittered exponential backoff, bounded
by ``retry_attempts``; ``Retry-After`` (a throttling proxy's 429, a server's 503) sets the wait, capped. Never
other 4xx. A create (POST) that failed ambiguously is not blindly re-sent (see ``_create``). Every PATCH sends
``state``: the server resets an omitted state (§7).
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
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from tenacity import RetryCallState

from job.errors import ConfigError, ModelRegistryError
from job.logs import add_secrets
from job.retry import DEFAULT_ATTEMPTS, DEFAULT_INITIAL_WAIT, RetrySettings, is_retryable
from job.settings.metadata import comparable_custom_properties, writable_custom_properties

__all__ = ["API_PREFIXES", "API_VERSIONS", "DEFAULT_TIMEOUT", "Entity", "ModelRegistryClient", "checked_id"]

logger = logging.getLogger(__name__)

API_PREFIXES = {"v1": "/api/model_registry/v1", "v1alpha3": "/api/model_registry/v1alpha3"}
"""The REST API's two generations: same bodies and paths below the prefix (kubeflow/hub issue 2992 moved
the API to ``v1``; Kubeflow's client 0.3.15 and later speak only ``v1``, 0.3.14 only ``v1alpha3``)."""
API_VERSIONS = ("auto", *API_PREFIXES)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
PAGE_SIZE = 100  # items per list request
_MAX_BODY_TEXT = 200  # characters of a plain-text error body kept in a message
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


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten file (kubelet swaps a ``..data`` symlink): inode, mtime, size; None if missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


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
        base = base_url.rstrip("/")
        for version, prefix in API_PREFIXES.items():
            if base.endswith(prefix):  # the address names the API already: that generation, not doubled
                base, api_version = base.removesuffix(prefix), version
        if api_version not in API_VERSIONS:
            raise ConfigError(
                f"Model Registry API version must be one of {', '.join(API_VERSIONS)}, got {api_version!r}"
            )
        self._prefix: str | None = API_PREFIXES.get(api_version)
        """The API prefix in use; None until the first answer tells (``auto``)."""
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.author = author
        self._tokens = [token] if token else []
        """Every token this client held, for redaction; the last one is sent."""
        self._token_file = Path(token_file) if token_file is not None else None
        self._token_stat = _stat_key(self._token_file) if self._token_file is not None else None
        # The job's settings (MODEL_SYNC_RETRY_*, *_TIMEOUT) when given; the keyword defaults otherwise.
        self._retry = retry or RetrySettings(attempts=retry_attempts, initial_wait=retry_initial_wait)
        self._attempts = self._retry.attempts
        if retry is not None and timeout is DEFAULT_TIMEOUT:
            timeout = retry.httpx_timeout()
        self._http = httpx.AsyncClient(
            base_url=base,
            headers=headers,
            verify=_ssl_verify(verify),
            timeout=timeout,
            transport=transport,
            # Never: the bearer token goes to the registry's address only, not to where a redirect points.
            follow_redirects=False,
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
        policy = self._retry.policy(retry_on=_is_raw_retryable, before_sleep=self._log_retry(what))
        try:
            async for attempt in policy:
                with attempt:
                    if before_retry is not None and attempt.retry_state.attempt_number > 1:
                        landed = await before_retry()
                        if landed is not None:
                            return landed
                    return await self._send(what, method, path, params=params, json=json, missing_ok=missing_ok)
        except httpx.HTTPStatusError as exc:
            raise self._error(what, exc.response) from exc
        except httpx.TransportError as exc:
            detail = self._redact(str(exc)) or "no detail"
            origin = str(self._http.base_url).rstrip("/")
            raise ModelRegistryError(
                f"{what}: cannot reach the Model Registry at {origin}: {type(exc).__name__}: {detail} "
                f"(after {self._attempts} attempts)"
            ) from exc
        raise AssertionError("unreachable: the retry policy re-raises")  # pragma: no cover

    async def _send(
        self, what: str, method: str, path: str, *, params: Mapping[str, str] | None, json: Any, missing_ok: bool
    ) -> Entity:
        self._reload_token()
        started = time.monotonic()
        response = await self._request(method, path, params=params, json=json)
        if response.status_code == 401 and self._reload_token(force=True):
            logger.info(
                "the registry refused the token; sending %s %s again with the token file's new one", method, path
            )
            response = await self._request(method, path, params=params, json=json)
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
        if missing_ok and response.status_code == 404 and _error_body(response) is not None:
            return {}
        raise httpx.HTTPStatusError(
            f"{response.status_code} from {method} {path}", request=response.request, response=response
        )

    async def _request(self, method: str, path: str, *, params: Mapping[str, str] | None, json: Any) -> httpx.Response:
        """Send one request under the API prefix in use. Until one is known (``auto``), try ``v1`` first and
        fall back to ``v1alpha3`` when the server does not know the route: chi's plain-text 404, never the
        JSON 404 of a missing entity (tests/standin/BEHAVIOURS.md, § intro). That costs nothing on a current server
        and one request, once, on an older one; a route-less 404 commits nothing, so a POST is safe to resend.
        """
        if self._prefix is not None:
            return await self._http.request(method, self._prefix + path, params=params, json=json)
        response = await self._http.request(method, API_PREFIXES["v1"] + path, params=params, json=json)
        if response.status_code == 404 and _error_body(response) is None:
            older = await self._http.request(method, API_PREFIXES["v1alpha3"] + path, params=params, json=json)
            if older.status_code == 404 and _error_body(older) is None:
                return response  # neither generation: the caller's error says so
            self._prefix = API_PREFIXES["v1alpha3"]
            logger.info("the Model Registry serves the v1alpha3 API; using it")
            return older
        if response.status_code < 500 and response.status_code not in (401, 403):
            self._prefix = API_PREFIXES["v1"]
        return response

    def _reload_token(self, *, force: bool = False) -> bool:
        """Read the token file again if it changed (or if ``force``); True when the token is a new one.

        A file that cannot be read or is empty keeps the current token: the request then fails, or not,
        on its own merits.
        """
        if self._token_file is None:
            return False
        key = _stat_key(self._token_file)
        if key == self._token_stat and not force:
            return False
        self._token_stat = key
        try:
            token = self._token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            logger.warning("cannot read the registry token file %s again: %s", self._token_file, exc.strerror)
            return False
        if not token or (self._tokens and token == self._tokens[-1]):
            return False
        self._tokens.append(token)
        add_secrets([token])
        self._http.headers["Authorization"] = f"Bearer {token}"
        logger.debug("read a new registry token from %s", self._token_file)
        return True

    def _error(self, what: str, response: httpx.Response) -> ModelRegistryError:
        status = response.status_code
        parsed = _error_body(response)
        if parsed is not None:
            code, message = parsed
        else:
            code = response.reason_phrase or None
            message = " ".join(response.text.split())[:_MAX_BODY_TEXT] or "(empty body)"
            if status == 404:
                # chi's plain-text 404: no such route, so not a missing entity (tests/standin/BEHAVIOURS.md § intro).
                served = self._prefix or " or ".join(API_PREFIXES.values())
                message += f" (is the registry address right, and does it serve {served}?)"
        head = f"{status} {code}" if code else str(status)
        return ModelRegistryError(self._redact(f"{what}: {head}: {message}"), status=status, code=code)

    def _redact(self, text: str) -> str:
        # A server or proxy may echo what it rejected; too short a "token" would only mangle the text.
        for token in self._tokens:
            if len(token) >= 8:
                text = text.replace(token, "***")
        return text

    def _log_retry(self, what: str) -> Callable[[RetryCallState], None]:
        def log(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            cause = (
                f"HTTP {exc.response.status_code}"
                if isinstance(exc, httpx.HTTPStatusError)
                else self._redact(f"{type(exc).__name__}: {exc}")
            )
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            attempt = f"attempt {state.attempt_number + 1} of {self._attempts}"
            logger.warning("%s: %s; retrying in %.1fs (%s)", what, cause, wait, attempt)

        return log


def _error_body(response: httpx.Response) -> tuple[str | None, str] | None:
    """``(code, message)`` from the server's ``{code, message}`` error body (§5), or None if it is not one."""
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict) or "message" not in data:
        return None
    code = data.get("code")
    message = " ".join(str(data["message"]).split())[: _MAX_BODY_TEXT * 5]
    return (str(code) if code else None), message
