"""The push side of the OCI distribution API: blob checks, upload sessions, mounts, streamed uploads.

:class:`OciUploads` adds these calls to :class:`~job.oci.transport.OciTransport`; :class:`~job.oci.client.OciClient`
inherits them, so the OCI destination calls them on its client.

**Uploads stream.** ``POST /blobs/uploads/`` (``?mount=&from=`` for a blob in another repository: 201
means mounted), then one ``PATCH`` with ``Content-Length`` and the streamed body, or ``Content-Range``
chunks of ``chunk_size``; the sha256 is computed as the bytes pass and given at the closing
``PUT <location>?digest=``. Every ``Location`` is kept with its query: distribution carries the session
state (``_state``) there and changes it after each PATCH. A streamed PATCH is sent once (its body cannot
be replayed); the closing PUT and a small blob's monolithic upload are retried like any request.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from job.errors import IntegrityError, ModelSyncError
from job.model import sha256_digest
from job.oci.protocol import Scopes
from job.oci.transport import OciTransport
from job.streams import ChunkReader, describe

__all__ = ["OciUploads", "UploadSession"]

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class UploadSession:
    """An open blob upload: abort it with :meth:`OciUploads.cancel_upload`."""

    repository: str
    location: str
    """Absolute URL of the session, with its query (the registry's session state)."""
    done: bool = field(default=False)


class OciUploads(OciTransport):
    """Blob existence checks and uploads into any repository of the registry (see the module docstring)."""

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
