"""How :class:`~job.oci.client.OciClient` talks to one registry: TLS, auth, redirects, retries, error mapping.

:class:`OciTransport` is the plumbing under every distribution API call. The calls themselves are in
:mod:`job.oci.upload` (the push side: upload sessions, mounts) and :mod:`job.oci.client` (reads and
manifests); they send every request through :meth:`OciTransport._request`.

**Auth** (``job.oci.protocol.RegistryAuth``): a ``GET /v2/`` ping learns Basic or Bearer; bearer tokens are
fetched per scope set before each request needs them, and once more for the scopes a 401
``insufficient_scope`` names. Logins go only to the registry's origin and its token realm, tokens only to
the registry's origin (never to a redirect target such as a presigned storage URL). Nothing logs tokens,
``Authorization`` headers or query strings.

**TLS.** Verified by default; ``ca_bundle`` and the registry's containers-certs.d directory under
``cert_dir`` (``job.oci.certs``) add CAs to the system's, and client certificates. ``tls_verify=False`` behaves like
skopeo's ``--tls-verify=false``: https without verification, and plain http if https cannot connect.

**Redirects** are followed by hand, for GET and HEAD only, so that auth goes to the registry's origin only.
A ``Location`` a registry answers with (absolute or relative) is resolved against the response URL and
kept with its query (:meth:`OciTransport._location`).

**Retries.** Requests whose body can be sent again (no body, or bytes) retry transport errors and
408/429/5xx with the job's policy (``job.retry.RetrySettings``: its budget, ``Retry-After`` honoured); every
request has the job's connect and read timeouts, and none has a total one. A streamed PATCH cannot be
replayed: it fails up with its retryability recorded, and the engine sends the file again in a new upload
session (the OCI destination cancels the broken one; see ``job.engine.transfer``).

**Errors** are mapped here, with distribution's ``errors[]`` body in the message: for a source, 401/403
-> ``SourceAuthError``, 404 -> ``SourceNotFound``, else ``SourceError``; for a destination, 401/403 ->
``DestinationAuthError``, else ``UploadRejected(status, code, detail)``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from job.errors import ModelSyncError
from job.http.backend import on_asyncio
from job.oci.certs import registry_ssl_context, untrusted_hint
from job.oci.protocol import RegistryAuth, Scopes, Side, error_for, transport_error
from job.retry import RetrySettings, is_retryable_status, log_before_sleep
from job.streams import describe

__all__ = ["OciTransport"]

log = logging.getLogger(__name__)

_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5


class OciTransport:
    """The connection to one registry and the request plumbing; the API calls are its subclasses'.

    ``side`` decides which errors are raised (see the module docstring). Close with :meth:`aclose`.
    """

    def __init__(
        self,
        registry: str,
        *,
        username: str | None = None,
        password: SecretStr | None = None,
        tls_verify: bool = True,
        ca_bundle: Path | None = None,
        cert_dir: Path | None = None,
        cert_names: Sequence[str] = (),
        side: Side = "destination",
        max_connections: int = 16,
        timeout: httpx.Timeout | None = None,
        retry: RetrySettings | None = None,
    ) -> None:
        self.registry = registry
        self.side: Side = side
        self.tls_verify = tls_verify
        self.retry = retry or RetrySettings()
        self.cert_dir = cert_dir
        verify: ssl.SSLContext | bool = False
        if tls_verify:
            verify = registry_ssl_context(ca_bundle=ca_bundle, cert_dir=cert_dir, hosts=(registry, *cert_names))
        self._http = on_asyncio(
            httpx.AsyncClient(
                verify=verify,
                timeout=timeout or self.retry.httpx_timeout(),
                limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
                follow_redirects=False,
                headers={"User-Agent": "model-sync"},
            )
        )
        self._auth = RegistryAuth(self._http, registry, username, password, self._fail, self.retry)
        self._base: str | None = None

    @property
    def base_url(self) -> str:
        """``https://host`` (or ``http://`` after the insecure fallback); known after the first request."""
        return self._base or f"https://{self.registry}"

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    def _fail(
        self, what: str, response: httpx.Response | None = None, exc: BaseException | None = None
    ) -> ModelSyncError:
        if response is not None:
            return error_for(self.side, what, response, has_login=self._auth.has_login)
        ca_setting = f"MODEL_SYNC_{self.side.upper()}_OCI_CA_BUNDLE"
        return transport_error(self.side, what, exc, untrusted=untrusted_hint(self.registry, self.cert_dir, ca_setting))

    async def _ensure_base(self) -> str:
        if self._base is None:
            self._base = await self._auth.ping(self.tls_verify)
        return self._base

    async def _send_once(
        self, method: str, url: httpx.URL, scopes: Scopes, headers: dict[str, str], content: Any, stream: bool
    ) -> httpx.Response:
        """One request with auth (and the auth retries a 401 allows when the body is replayable)."""
        replayable = content is None or isinstance(content, bytes)
        for _ in range(3):  # bounded: a scheme switch, a token, a re-scoped token
            auth_headers, sent_key = await self._auth.headers_for(url, scopes)
            request = self._http.build_request(method, url, headers={**headers, **auth_headers}, content=content)
            response = await self._http.send(request, stream=stream)
            if response.status_code != 401 or not replayable:
                return response
            if not await self._auth.on_challenge(response, scopes, sent_key):
                return response
            await response.aclose()
        return response

    async def _request(
        self,
        method: str,
        path_or_url: str | httpx.URL,
        *,
        scopes: Scopes,
        what: str,
        expect: Iterable[int] = (200,),
        headers: dict[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        params: dict[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with auth, redirects (GET/HEAD), retries (replayable bodies) and error mapping.

        Returns a response whose status is in ``expect``; with ``stream=True`` the caller closes it.
        """
        base = await self._ensure_base()
        url = httpx.URL(path_or_url) if isinstance(path_or_url, httpx.URL) else httpx.URL(base + path_or_url)
        if params:
            url = url.copy_merge_params(params)
        expected = set(expect)
        replayable = content is None or isinstance(content, bytes)
        response: httpx.Response | None = None
        try:
            attempts = self.retry.attempts if replayable else 1
            before_sleep = log_before_sleep(log, what, attempts, _describe)
            async for attempt in self.retry.policy(attempts=attempts, before_sleep=before_sleep):
                with attempt:
                    response = await self._follow(method, url, scopes, headers or {}, content, stream)
                    if response.status_code not in expected and is_retryable_status(response.status_code):
                        await response.aread()
                        await response.aclose()
                        response.raise_for_status()
        except httpx.HTTPStatusError:
            pass  # the last answer is mapped below
        except httpx.TransportError as exc:
            raise self._fail(what, exc=exc) from exc
        assert response is not None
        if response.status_code not in expected:
            await response.aread()
            await response.aclose()
            raise self._fail(what, response)
        return response

    async def _follow(
        self, method: str, url: httpx.URL, scopes: Scopes, headers: dict[str, str], content: Any, stream: bool
    ) -> httpx.Response:
        # Redirects are followed by hand so that auth goes to the registry's origin only (RegistryAuth
        # checks the origin of every URL); blob GETs on S3-backed registries redirect to presigned URLs.
        for _ in range(_MAX_REDIRECTS):
            response = await self._send_once(method, url, scopes, headers, content, stream)
            location = response.headers.get("Location")
            if method not in ("GET", "HEAD") or response.status_code not in _REDIRECTS or not location:
                return response
            await response.aclose()
            url = response.url.join(location)
        return response

    def _location(self, response: httpx.Response, what: str) -> str:
        location = response.headers.get("Location")
        if not location:
            raise self._fail(what + ": the registry sent no Location", response)
        # Relative or absolute: join against the URL that answered. The query (session state) is kept.
        return str(response.url.join(location))


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return describe(exc or Exception())
