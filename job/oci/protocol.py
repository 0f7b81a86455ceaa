"""The OCI distribution protocol's vocabulary for :mod:`job.oci.client`: media types, errors, and auth.

Media types come from oras-py's ``oras.defaults`` where it has them. Error responses are mapped by
:func:`error_for` (distribution's ``errors[]`` body in the message). The rest is auth: the ``/v2/`` ping,
Basic, and Bearer tokens per scope set.

Docker's token protocol (distribution ``docs/spec/auth/token.md``): a 401 carries
``WWW-Authenticate: Bearer realm="...",service="...",scope="repository:<name>:pull,push"``; the client
GETs ``realm?service=..&scope=..`` (one ``scope`` parameter per scope; a cross-repository mount needs
``repository:<from>:pull`` too) with the login as basic auth, and sends the ``token`` (or ``access_token``)
it gets back as ``Authorization: Bearer``. Tokens are scoped per repository and action, so they are
cached per scope set and refreshed at 80% of ``expires_in`` (60 s when absent, as the spec says): a
streamed PATCH must never start with a token that could expire under it, since its body cannot be
sent again after a 401.

Where secrets go: the login only to the registry's own origin (Basic) or to the realm (never over plain
http when the registry is reached over https); a token only to the registry's origin. Redirect targets
(presigned storage URLs) get nothing.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import oras.defaults  # type: ignore[import-untyped]
from pydantic import SecretStr

from job.errors import (
    DestinationAuthError,
    DestinationError,
    ModelSyncError,
    SourceAuthError,
    SourceError,
    SourceNotFound,
    UploadRejected,
)
from job.retry import RetrySettings, is_retryable, is_retryable_status, parse_retry_after
from job.streams import describe

__all__ = ["Challenge", "RegistryAuth", "Scopes", "Side", "error_for", "parse_challenge", "transport_error"]

log = logging.getLogger(__name__)

# Media types. oras-py's constants where it has them (the one part of oras-py that fits here as is).
OCI_MANIFEST: str = oras.defaults.default_manifest_media_type
OCI_INDEX: str = oras.defaults.default_index_media_type
DOCKER_MANIFEST: str = oras.defaults.docker_manifest_media_type
DOCKER_MANIFEST_LIST: str = oras.defaults.docker_manifest_list_media_type
OCI_LAYER_TAR: str = oras.defaults.default_blob_media_type
OCI_LAYER_TAR_GZIP: str = oras.defaults.default_blob_dir_media_type
ANNOTATION_TITLE: str = oras.defaults.annotation_title
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

Side = Literal["source", "destination"]


def image_entries(index: dict[str, Any], *, nested: bool = False) -> list[dict[str, Any]]:
    """The entries of an image index that are images: not buildx attestations (platform ``unknown/unknown``, or a
    ``vnd.docker.reference.type`` annotation, describing another entry), nor nested indexes unless ``nested``."""
    entries = index.get("manifests")
    return [
        e
        for e in (entries if isinstance(entries, list) else [])
        if isinstance(e, dict)
        and "vnd.docker.reference.type" not in (e.get("annotations") or {})
        and (e.get("platform") or {}).get("os") != "unknown"
        and (nested or e.get("mediaType") not in INDEX_TYPES)
    ]


def _error_text(response: httpx.Response) -> tuple[str | None, str]:
    """(first code, one-line detail) from distribution's ``{"errors": [{code, message, detail}]}`` body."""
    try:
        errors = response.json().get("errors")
        parts = [f"{e.get('code', '?')}: {e.get('message', '')}".strip() for e in errors if isinstance(e, dict)]
        if parts:
            return str(errors[0].get("code")), "; ".join(parts)[:300]
    except Exception:  # not JSON, or not distribution's shape: fall back to the text
        log.debug("error body of %s is not distribution's errors[] shape", response.status_code)
    text = " ".join(response.text.split())[:200] if response.content else ""
    return None, text or response.reason_phrase


def error_for(side: Side, what: str, response: httpx.Response, *, has_login: bool) -> ModelSyncError:
    """Map an error response to the tree in ``job.errors`` (the body must have been read)."""
    status = response.status_code
    code, detail = _error_text(response)
    message = f"{what}: {status} {detail}"
    if status == 401:
        message += " (the login was refused)" if has_login else " (no login was given)"
    error: ModelSyncError
    if side == "source":
        if status in (401, 403):
            error = SourceAuthError(message)
        else:
            error = SourceNotFound(message) if status == 404 else SourceError(message)
    elif status in (401, 403):
        error = DestinationAuthError(message)
    else:
        error = UploadRejected(message, status=status, code=code, detail=detail)
    error.retryable = is_retryable_status(status)
    error.retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return error


def transport_error(
    side: Side, what: str, exc: BaseException | None, *, untrusted: str | None = None
) -> ModelSyncError:
    """A failure without an answer (connection, TLS, timeout), or a plain message when ``exc`` is None.

    ``untrusted``: what to say when the server's certificate did not verify (where a CA can go).
    """
    message = what if exc is None else f"{what}: {describe(exc)}"
    if exc is not None and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        message += f" ({untrusted or 'set the CA bundle, or turn TLS verification off'})"
    error = SourceError(message) if side == "source" else DestinationError(message)
    error.retryable = exc is not None and is_retryable(exc) and not _tls_failure(exc)
    return error


Fail = Callable[..., ModelSyncError]
"""``fail(what, response=None, exc=None)``: the client's error mapping."""

_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


@dataclass(frozen=True, slots=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge."""

    scheme: str
    """``basic`` or ``bearer`` (lowercase)."""
    params: dict[str, str]


def parse_challenge(value: str | None) -> Challenge | None:
    """Parse ``Bearer realm="..",service="..",scope="..",error=".."`` (or ``Basic realm=".."``)."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(rest)}
    params = {k: v.replace('\\"', '"') for k, v in params.items()}
    return Challenge(scheme=scheme.lower(), params=params)


@dataclass(frozen=True, slots=True)
class Scopes:
    """The token scopes one request needs, sorted, so equal needs share a cache entry."""

    items: tuple[str, ...]

    @property
    def key(self) -> str:
        return " ".join(self.items)

    @classmethod
    def of(cls, *scopes: str) -> Scopes:
        return cls(tuple(sorted(set(scopes))))

    @classmethod
    def pull(cls, repository: str) -> Scopes:
        return cls.of(f"repository:{repository}:pull")

    @classmethod
    def push(cls, repository: str, *, mount_from: str | None = None) -> Scopes:
        extra = [f"repository:{mount_from}:pull"] if mount_from else []
        return cls.of(f"repository:{repository}:pull,push", *extra)


@dataclass(slots=True)
class _Token:
    value: str
    refresh_at: float


def _tls_failure(exc: BaseException) -> bool:
    """A TLS handshake or verification failure: the same on every try."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError) or "[SSL" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_ping(exc: BaseException) -> bool:
    return is_retryable(exc) and not _tls_failure(exc)


def _grants(key: str) -> dict[str, set[str]]:
    """``"repository:a:pull,push repository:b:pull"`` -> ``{"repository:a": {"pull", "push"}, ...}``."""
    grants: dict[str, set[str]] = {}
    for scope in key.split():
        resource, _, actions = scope.rpartition(":")
        grants.setdefault(resource, set()).update(a for a in actions.split(",") if a)
    return grants


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


class RegistryAuth:
    """Auth state of one registry client: scheme, realm, and the tokens per scope set."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        registry: str,
        username: str | None,
        password: SecretStr | None,
        fail: Fail,
        retry: RetrySettings | None = None,
    ) -> None:
        self._http = http
        self._retry = retry or RetrySettings()
        self._registry = registry
        self._login = (username, password.get_secret_value()) if username and password is not None else None
        self._fail = fail
        self._origin: tuple[str, str, int | None] | None = None
        self._mode: str | None = None  # None (anonymous so far), "basic" or "bearer"
        self._realm: str | None = None
        self._service: str | None = None
        self._tokens: dict[str, _Token] = {}
        self._rescoped: dict[str, str] = {}  # what a request asked for -> what the registry wants
        self._fetching = asyncio.Lock()  # one token fetch at a time: parallel puts share the result

    @property
    def has_login(self) -> bool:
        return self._login is not None

    async def ping(self, tls_verify: bool) -> str:
        """``GET /v2/``: choose the scheme (https; http only when ``tls_verify`` is off) and learn the challenge.

        Returns the base URL. With ``tls_verify=False``, as skopeo does, an https connection that
        fails (no TLS there, handshake error) falls back to plain http.
        """
        schemes = ["https"] if tls_verify else ["https", "http"]
        last: Exception | None = None
        for index, scheme in enumerate(schemes):
            base = f"{scheme}://{self._registry}"
            attempts = self._retry.attempts if index == len(schemes) - 1 else 1
            try:
                async for attempt in self._retry.policy(attempts=attempts, retry_on=_retry_ping):
                    with attempt:
                        response = await self._http.get(base + "/v2/")
            except httpx.TransportError as exc:
                last = exc
                if index < len(schemes) - 1:
                    log.info(
                        "%s: https failed (%s); trying plain http as TLS verification is off",
                        self._registry,
                        type(exc).__name__,
                    )
                continue
            self._origin = _origin(response.url)
            self._learn(response)
            return base
        assert last is not None
        raise self._fail(f"connecting to registry {self._registry}", exc=last)

    def _learn(self, response: httpx.Response) -> None:
        if response.status_code != 401:
            return
        challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
        if challenge is None:
            return
        if challenge.scheme == "bearer" and challenge.params.get("realm"):
            self._mode = "bearer"
            self._realm = challenge.params["realm"]
            self._service = challenge.params.get("service")
        elif challenge.scheme == "basic":
            self._mode = "basic"

    async def headers_for(self, url: httpx.URL, scopes: Scopes) -> tuple[dict[str, str], str | None]:
        """The ``Authorization`` header for a request to ``url`` (none off the registry's origin).

        Returns the headers and the scope key of the token sent (None when no token was sent).
        """
        if self._origin is None or _origin(url) != self._origin:
            return {}, None
        if self._mode == "basic" and self._login is not None:
            user, password = self._login
            basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            return {"Authorization": f"Basic {basic}"}, None
        if self._mode == "bearer":
            sent, token = await self._token(self._rescoped.get(scopes.key, scopes.key))
            return {"Authorization": f"Bearer {token}"}, sent
        return {}, None

    async def on_challenge(self, response: httpx.Response, scopes: Scopes, sent_key: str | None) -> bool:
        """React to a 401: True when the request is worth sending again with new auth."""
        challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
        if challenge is None:
            return False
        if challenge.scheme == "basic":
            if self._login is None or self._mode == "basic":
                return False  # nothing to send, or the login was sent and refused
            self._mode = "basic"
            return True
        if challenge.scheme != "bearer" or not challenge.params.get("realm"):
            return False
        self._mode = "bearer"
        self._realm = challenge.params["realm"]
        self._service = challenge.params.get("service", self._service)
        wanted = Scopes.of(*challenge.params["scope"].split()) if challenge.params.get("scope") else scopes
        if sent_key == wanted.key:
            if challenge.params.get("error") == "insufficient_scope":
                return False  # the token server gave all it will give for this login
            self._tokens.pop(wanted.key, None)  # invalid_token (expired early, rotated key): fetch anew
            return True
        # A new scope set (a push after a pull, the source repo of a mount): a new token, not the old one.
        self._rescoped[scopes.key] = wanted.key
        return True

    def _covering(self, key: str) -> str | None:
        """A cached, fresh token key whose scopes include ``key``'s (a pull+push token serves a HEAD)."""
        if key in self._tokens and time.monotonic() < self._tokens[key].refresh_at:
            return key
        wanted = _grants(key)
        for have, token in self._tokens.items():
            granted = _grants(have)
            if time.monotonic() < token.refresh_at and all(
                actions <= granted.get(r, set()) for r, actions in wanted.items()
            ):
                return have
        return None

    async def _token(self, key: str) -> tuple[str, str]:
        """(key of the token used, token) for ``key``: a cached one that covers it, or a new one."""
        have = self._covering(key)
        if have is None:
            async with self._fetching:  # parallel puts wait for one fetch and share its token
                have = self._covering(key)
                if have is None:
                    self._tokens[key] = await self._fetch(key)
                    have = key
        return have, self._tokens[have].value

    async def _fetch(self, key: str) -> _Token:
        assert self._realm is not None
        realm = httpx.URL(self._realm)
        host = realm.host
        what = f"getting a registry token for {self._registry} from {host}"
        if self._login is not None and realm.scheme != "https" and self._origin and self._origin[0] == "https":
            raise self._fail(f"{what}: refusing to send the login over plain http to a realm of an https registry")
        params: list[tuple[str, str | int | float | bool | None]] = [("scope", s) for s in key.split()]
        if self._service:
            params.insert(0, ("service", self._service))
        auth = httpx.BasicAuth(*self._login) if self._login is not None else None
        try:
            async for attempt in self._retry.policy():
                with attempt:
                    response = await self._http.get(realm, params=params, auth=auth, follow_redirects=True)
                    if is_retryable_status(response.status_code):
                        response.raise_for_status()
        except httpx.HTTPStatusError:
            pass
        except httpx.TransportError as exc:
            raise self._fail(what, exc=exc) from exc
        if response.status_code != 200:
            raise self._fail(what, response)
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
            expires_in = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            value = None
        if not isinstance(value, str) or not value:
            raise self._fail(f"{what}: the answer holds no token", response)
        log.debug("got a registry token from %s for %s (%.0f s)", host, key, expires_in)
        return _Token(value=value, refresh_at=time.monotonic() + max(1.0, expires_in * 0.8))
