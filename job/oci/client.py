"""One async client for the OCI distribution API: blobs, upload sessions, manifests, ranged GETs.

Both OCI backends use it (``job.destinations.oci``, ``job.sources.oci``); protocol code lives in this package
once. :class:`OciClient` is three layers, one module each:

* :mod:`job.oci.transport` (:class:`~job.oci.transport.OciTransport`): TLS, auth, redirects, retries and
  error mapping; every request goes through it.
* :mod:`job.oci.upload` (:class:`~job.oci.upload.OciUploads`): the push side: blob checks, upload sessions,
  cross-repository mounts, streamed or chunked ``PATCH``, the closing ``PUT ?digest=``.
* this module: the read side (ranged blob GETs, manifests by tag or digest) and the manifest ``PUT``.

**Why httpx and not oras-py (the seam).** oras-py is on the design card and is used where it fits: its
media-type constants (``job.oci.protocol``), and in the tests as an independent ORAS pusher. The data
path cannot use it: it is synchronous (requests), it uploads blobs from files on disk with the digest
computed before the upload starts (we only know a layer's digest after its bytes have streamed), it has
no cross-repository mount (the base image would be re-uploaded into every model repository), and on
``insufficient_scope`` it re-sends the same bearer token instead of asking for the scopes the registry
named. Its reference parser does not fit either (see ``job.oci.reference``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from job.config import OciLocation
from job.errors import IntegrityError
from job.model import sha256_digest
from job.oci.protocol import MANIFEST_ACCEPT, Scopes, Side
from job.oci.reference import ImageReference
from job.oci.upload import OciUploads
from job.readahead import ReadAhead, read_in_order
from job.retry import RetrySettings

__all__ = ["Manifest", "OciClient"]

log = logging.getLogger(__name__)


MAX_MANIFEST_SIZE = 4 * 1024 * 1024
"""distribution refuses manifests over 4 MiB; we refuse to read more than that into memory."""


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


class OciClient(OciUploads):
    """Talk to one registry. Not bound to a repository: every call names one.

    Reads and manifests are here; uploads come from :class:`~job.oci.upload.OciUploads`, the connection,
    auth and error mapping from :class:`~job.oci.transport.OciTransport` (``side`` decides which errors are
    raised). Close with :meth:`aclose`.
    """

    read_ahead: ReadAhead | None = None
    """How far long blob reads read ahead of themselves (:mod:`job.readahead`); None: one ``GET`` each."""

    @classmethod
    def for_image(
        cls,
        location: OciLocation,
        image: ImageReference,
        *,
        side: Side,
        login: tuple[str | None, SecretStr | None] | None = None,
        max_connections: int = 16,
        retry: RetrySettings | None = None,
    ) -> OciClient:
        """A client for ``image``'s registry with ``location``'s TLS settings and certs.d directory, and its
        login (or ``login``: a base image's, from another registry)."""
        username, password = login if login is not None else (location.username, location.password)
        return cls(
            image.api_host,
            username=username,
            password=password,
            tls_verify=location.tls_verify,
            ca_bundle=location.ca_bundle,
            cert_dir=location.cert_dir,
            cert_names=(image.registry,),
            side=side,
            max_connections=max_connections,
            retry=retry,
        )

    # --- blobs ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def open_blob(
        self,
        repository: str,
        digest: str,
        *,
        start: int = 0,
        end: int | None = None,
        size: int | None = None,
        what: str = "",
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream blob bytes ``[start, end)`` (``end=None``: to its end) as they arrive, via ``Range``.

        A registry that ignores ``Range`` (200) is handled by skipping and cutting here. With the blob's
        ``size`` known and :attr:`read_ahead` set, a long read also reads segments ahead of itself
        (:mod:`job.readahead`) once the registry has answered its first ``Range`` with 206.
        """
        what = what or f"reading blob {digest} from {self.registry}/{repository}"
        stop = end if end is not None else size
        ahead = (
            self.read_ahead if stop is not None and self.read_ahead and self.read_ahead.worth_it(stop - start) else None
        )
        async with self._blob_range(repository, digest, start, stop if ahead else end, what) as (body, response):
            if ahead is None or response.status_code != 206 or stop is None:
                yield body
                return

            @asynccontextmanager
            async def open_range(first: int, last: int) -> AsyncIterator[AsyncIterator[bytes]]:
                async with self._blob_range(repository, digest, first, last, what) as (chunks, _):
                    yield chunks

            async with aclosing(
                read_in_order(open_range, start, stop, ahead, what, head=body, close_head=response.aclose)
            ) as ordered:
                yield ordered

    @asynccontextmanager
    async def _blob_range(
        self, repository: str, digest: str, start: int, end: int | None, what: str
    ) -> AsyncIterator[tuple[AsyncIterator[bytes], httpx.Response]]:
        """One GET of bytes ``[start, end)`` (cut here if the registry ignored ``Range``), and its response."""
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
            if headers and response.status_code != 206:
                log.debug("%s: the registry ignored Range; skipping %d bytes", what, start)
                body = _window(body, start, end)
            yield body, response
        finally:
            await response.aclose()

    async def blob_size(self, repository: str, digest: str) -> int | None:
        """``HEAD /v2/<repo>/blobs/<digest>``: the blob's size as the registry stores it (None if it does not say)."""
        response = await self._request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            scopes=Scopes.pull(repository),
            what=f"checking blob {digest} in {self.registry}/{repository}",
        )
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else None

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
        await self._put(repository, reference, data, media_type, f"manifest {self.registry}/{repository}:{reference}")
        return sha256_digest(data)

    async def put_referrer(self, repository: str, digest: str, data: bytes, media_type: str) -> bool:
        """PUT a manifest that has a ``subject``, by its digest; True when the registry indexed the subject
        itself (it answered with ``OCI-Subject``), False when the caller must update the fallback tag."""
        response = await self._put(
            repository, digest, data, media_type, f"referrer {self.registry}/{repository}@{digest}"
        )
        return "OCI-Subject" in response.headers

    async def _put(self, repository: str, reference: str, data: bytes, media_type: str, what: str) -> httpx.Response:
        return await self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scopes=Scopes.push(repository),
            what=f"pushing {what}",
            expect=(200, 201),
            headers={"Content-Type": media_type},
            content=data,
        )


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
