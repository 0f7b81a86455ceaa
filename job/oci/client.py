"""One async client for the OCI distribution API: auth challenges, upload sessions, manifests, ranged GETs.

Both OCI backends use it (``job.destinations.oci``, ``job.sources.oci``); protocol code lives here once.

**Auth** (``job.oci.protocol.RegistryAuth``): a ``GET /v2/`` ping learns Basic or Bearer; bearer tokens are
fetched per scope set before each request needs them, and once more for the scopes a 401
``insufficient_scope`` names. Logins go only to the registry's origin and its token realm, tokens only to
the registry's origin (never to a redirect target such as a presigned storage URL). Nothing logs tokens,
``Authorization`` headers or query strings.

**TLS.** Verified by default; ``ca_bundle`` and the registry's containers-certs.d directory under
``cert_dir`` (``job.oci.certs``) add CAs to the system's, and client certificates. ``tls_verify=False`` behaves like
skopeo's ``--tls-verify=false``: https without verification, and plain http if https cannot connect.

**Uploads stream.** ``POST /blobs/uploads/`` (``?mount=&from=`` for a blob in another repository: 201
means mounted), then one ``PATCH`` with ``Content-Length`` and the streamed body, or ``Content-Range``
chunks of ``chunk_size``; the sha256 is computed as the bytes pass and given at the closing
``PUT <location>?digest=``. Every ``Location`` (absolute or relative) is resolved against the response
URL and kept with its query: distribution carries the session state (``_state``) there and changes it
after each PATCH.

**Retries.** Requests whose body can be sent again (no body, or bytes) retry transport errors and
408/429/5xx with the job's policy (``job.retry.RetrySettings``: its budget, ``Retry-After`` honoured); every
request has the job's connect and read timeouts, and none has a total one. A streamed PATCH cannot be
replayed: it fails up with its retryability recorded, and the engine sends the file again in a new upload
session (the OCI destination cancels the broken one; see ``job.engine.transfer``).

**Errors** are mapped here, with distribution's ``errors[]`` body in the message: for a source, 401/403
-> ``SourceAuthError``, 404 -> ``SourceNotFound``, else ``SourceError``; for a destination, 401/403 ->
``DestinationAuthError``, else ``UploadRejected(status, code, detail)``.

**Why httpx and not oras-py (the seam).** oras-py is on the design card and is used where it fits: its
media-type constants (``job.oci.protocol``), and in the tests as an independent ORAS pusher. The data
path cannot use it: it is synchronous (requests), it uploads blobs from files on disk with the digest
computed before the upload starts (we only know a layer's digest after its bytes have streamed), it has
no cross-repository mount (the base image would be re-uploaded into every model repository), and on
``insufficient_scope`` it re-sends the same bearer token instead of asking for the scopes the registry
named. Its reference parser does not fit either (see ``job.oci.reference``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from job.errors import IntegrityError, ModelSyncError
from job.oci.certs import registry_ssl_context, untrusted_hint
from job.oci.protocol import MANIFEST_ACCEPT, RegistryAuth, Scopes, Side, error_for, transport_error
from job.retry import RetrySettings, is_retryable_status, log_before_sleep
from job.streams import ChunkReader, describe

__all__ = ["Manifest", "OciClient", "UploadSession", "sha256_digest"]

log = logging.getLogger(__name__)


MAX_MANIFEST_SIZE = 4 * 1024 * 1024
"""distribution refuses manifests over 4 MiB; we refuse to read more than that into memory."""
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest or index exactly as the registry holds it; ``digest`` is the sha256 of ``data``."""

    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        """The parsed document."""
        value = json.loads(self.data)
        if not isinstance(value, dict):
            raise ValueError("a manifest is a JSON object")
        return value


@dataclass(slots=True, eq=False)
class UploadSession:
    """An open blob upload: abort it with :meth:`OciClient.cancel_upload`."""

    repository: str
    location: str
    """Absolute URL of the session, with its query (the registry's session state)."""
    done: bool = field(default=False)


class OciClient:
    """Talk to one registry. Not bound to a repository: every call names one.

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
        self._http = httpx.AsyncClient(
            verify=verify,
            timeout=timeout or self.retry.httpx_timeout(),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
            headers={"User-Agent": "model-sync"},
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

    # --- plumbing -------------------------------------------------------------------------------

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

    # --- blobs ----------------------------------------------------------------------------------

    async def blob_exists(self, repository: str, digest: str) -> bool:
        """``HEAD /v2/<repo>/blobs/<digest>``: True if the registry has the blob in that repository."""
        response = await self._request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            scopes=Scopes.pull(repository),
            what=f"checking blob {digest} in {self.registry}/{repository}",
            expect=(200, 404),
        )
        return response.status_code == 200

    async def start_upload(
        self, repository: str, *, mount: str | None = None, mount_from: str | None = None
    ) -> UploadSession | None:
        """Open an upload session, or mount ``mount`` from ``mount_from``: None when the registry mounted it.

        A registry that cannot mount (blob unknown there, or no pull access) opens a normal session (202).
        """
        params = {"mount": mount, "from": mount_from} if mount and mount_from else None
        scopes = Scopes.push(repository, mount_from=mount_from if params else None)
        response = await self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scopes=scopes,
            params=params,
            what=f"starting a blob upload to {self.registry}/{repository}",
            expect=(201, 202),
        )
        if response.status_code == 201:
            log.debug("mounted %s into %s from %s", mount, repository, mount_from)
            return None
        return UploadSession(repository, self._location(response, f"starting a blob upload to {repository}"))

    async def upload(
        self,
        session: UploadSession,
        chunks: AsyncIterator[bytes],
        size: int,
        *,
        chunk_size: int = 0,
        expected_digest: str | None = None,
        what: str = "",
    ) -> str:
        """Stream exactly ``size`` bytes into ``session`` and close it; return the blob's digest.

        ``chunk_size == 0``: one PATCH with ``Content-Length: size``; else PATCHes of ``chunk_size``
        bytes with ``Content-Range``. Raises :class:`IntegrityError` when the stream does not hold
        ``size`` bytes, or hashes to something other than ``expected_digest`` (the session is then
        left open for :meth:`cancel_upload`). Errors the stream raises propagate unchanged.
        """
        what = what or f"uploading a blob to {self.registry}/{session.repository}"
        hasher = hashlib.sha256()
        sent = 0

        async def hashed(part: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in part:
                sent += len(chunk)
                if sent > limit:
                    raise IntegrityError(f"{what}: the stream holds more than the {size} bytes announced")
                hasher.update(chunk)
                yield chunk

        scopes = Scopes.push(session.repository)
        reader = ChunkReader(chunks)
        start = 0
        step = size if chunk_size <= 0 else chunk_size
        while start < size:
            n = min(step, size - start)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(n)}
            if chunk_size > 0:
                headers["Content-Range"] = f"{start}-{start + n - 1}"
            response = await self._request(
                "PATCH",
                httpx.URL(session.location),
                scopes=scopes,
                what=what,
                expect=(202, 204),
                headers=headers,
                content=hashed(reader.iter_part(n), start + n),
            )
            if sent != start + n:
                raise IntegrityError(f"{what}: the stream ended after {sent} of {size} bytes")
            session.location = self._location(response, what)
            start += n
        if not await reader.at_eof():
            raise IntegrityError(f"{what}: the stream holds more than the {size} bytes announced")
        digest = "sha256:" + hasher.hexdigest()
        if expected_digest is not None and digest != expected_digest:
            raise IntegrityError(f"{what}: the bytes hash to {digest}, expected {expected_digest}")
        await self._close_upload(session, digest, None, what)
        return digest

    async def _close_upload(self, session: UploadSession, digest: str, body: bytes | None, what: str) -> None:
        url = httpx.URL(session.location).copy_merge_params({"digest": digest})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body or b""))}
        try:
            await self._request(
                "PUT",
                url,
                scopes=Scopes.push(session.repository),
                what=what,
                expect=(201, 204),
                headers=headers,
                content=body or b"",
            )
        except ModelSyncError as exc:
            # A retried PUT whose first try did land finds the session gone (404 BLOB_UPLOAD_UNKNOWN):
            # the blob is there, which is all that counts.
            if getattr(exc, "status", None) != 404 or not await self.blob_exists(session.repository, digest):
                raise
        session.done = True

    async def push_blob(self, repository: str, data: bytes, *, what: str = "") -> str:
        """Upload a small blob held in memory (a config) unless the repository has it; return its digest."""
        digest = sha256_digest(data)
        if await self.blob_exists(repository, digest):
            return digest
        what = what or f"uploading blob {digest} to {self.registry}/{repository}"
        session = await self.start_upload(repository)
        assert session is not None
        # Monolithic: POST then PUT with the body, which the spec allows and which can be retried.
        await self._close_upload(session, digest, data, what)
        return digest

    async def cancel_upload(self, session: UploadSession) -> None:
        """``DELETE`` the session's location; best effort, never raises."""
        if session.done:
            return
        session.done = True
        try:
            response = await self._send_once(
                "DELETE", httpx.URL(session.location), Scopes.push(session.repository), {}, None, False
            )
            log.debug("cancelled an upload session in %s: %s", session.repository, response.status_code)
        except Exception as exc:
            log.debug("cancelling an upload session in %s failed: %s", session.repository, describe(exc))

    @asynccontextmanager
    async def open_blob(
        self, repository: str, digest: str, *, start: int = 0, end: int | None = None, what: str = ""
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream blob bytes ``[start, end)`` (``end=None``: to its end) as they arrive, via ``Range``.

        A registry that ignores ``Range`` (200) is handled by skipping and cutting here.
        """
        what = what or f"reading blob {digest} from {self.registry}/{repository}"
        headers: dict[str, str] = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        response = await self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scopes=Scopes.pull(repository),
            what=what,
            expect=(200, 206),
            headers=headers,
            stream=True,
        )
        try:
            body = response.aiter_raw() if "content-encoding" not in response.headers else response.aiter_bytes()
            if response.status_code == 200 and headers:
                log.debug("%s: the registry ignored Range; skipping %d bytes", what, start)
                body = _window(body, start, end)
            yield body
        finally:
            await response.aclose()

    async def read_blob(self, repository: str, digest: str, *, start: int = 0, length: int | None = None) -> bytes:
        """Read a small blob (or a range of one) into memory; a whole blob is checked against its digest."""
        end = None if length is None else start + length
        async with self.open_blob(repository, digest, start=start, end=end) as body:
            data = b"".join([chunk async for chunk in body])
        if start == 0 and length is None and sha256_digest(data) != digest:
            raise IntegrityError(
                f"reading blob {digest} from {self.registry}/{repository}: its bytes hash to {sha256_digest(data)}"
            )
        return data

    # --- manifests ------------------------------------------------------------------------------

    async def get_manifest(self, repository: str, reference: str) -> Manifest:
        """GET a manifest or index by tag or digest, accepting OCI and Docker schema2 media types."""
        what = f"reading manifest {self.registry}/{repository}:{reference}"
        response = await self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scopes=Scopes.pull(repository),
            what=what,
            headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
            stream=True,
        )
        try:
            chunks: list[bytes] = []
            total = 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > MAX_MANIFEST_SIZE:
                    raise self._fail(f"{what}: it is larger than {MAX_MANIFEST_SIZE} bytes")
                chunks.append(chunk)
        finally:
            await response.aclose()
        data = b"".join(chunks)
        digest = sha256_digest(data)
        if reference.startswith("sha256:") and digest != reference:
            raise IntegrityError(f"{what}: the registry sent a manifest hashing to {digest}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return Manifest(data=data, media_type=media_type, digest=digest)

    async def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """PUT a manifest or index under a tag or its digest; returns its digest (sha256 of ``data``)."""
        await self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scopes=Scopes.push(repository),
            what=f"pushing manifest {self.registry}/{repository}:{reference}",
            expect=(200, 201),
            headers={"Content-Type": media_type},
            content=data,
        )
        return sha256_digest(data)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return describe(exc or Exception())


async def _window(body: AsyncIterator[bytes], start: int, end: int | None) -> AsyncIterator[bytes]:
    """Bytes ``[start, end)`` of a stream that starts at 0."""
    position = 0
    async for chunk in body:
        lo, hi = position, position + len(chunk)
        position = hi
        if hi <= start:
            continue
        if end is not None and lo >= end:
            return
        yield chunk[max(0, start - lo) : len(chunk) if end is None else min(len(chunk), end - lo)]
