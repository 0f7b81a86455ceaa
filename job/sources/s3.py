"""Read a model from S3: one object, or every object under a prefix.

``list()``: a key not ending in ``/`` is first tried as one object (HEAD); if it exists, the model is
that one file, named by the key's basename. Otherwise the key is a prefix: it is normalised to end in
``/`` (so ``models/m`` never matches ``models/mx/...``), listed with ``list_objects_v2`` pagination,
folder markers (keys ending in ``/``) are skipped, and each path is the key relative to the prefix,
checked by :func:`~job.model.safe_relative_path`. An empty prefix is ``SourceNotFound``.

``open(obj, offset)``: one GET with ``If-Match`` on the listed ETag (an object replaced since the listing
is an error, not a silent mix of two versions) and ``Range: bytes=offset-`` when resuming; the body's
chunks are passed on as they arrive (``iter_chunks`` returns what aiohttp has buffered, 0.25-1.2 MiB).
The answer's own ETag and length are checked against the listing too: not every S3 implementation
honours ``If-Match`` on GET (older MinIO and Ceph RGW releases ignored it), and a 200 to a ranged GET
would otherwise be read as the bytes after the offset. The source is ``seekable``: the engine resumes a
read that broke (a reset, a body cut short, a read timeout) at its offset with another ranged GET.

Every request goes through :meth:`~job.s3.client.S3Connection.call` (retries, ``Retry-After``), the
listing's pages too (one ``list_objects_v2`` per page instead of botocore's paginator, which would
bypass it).

There is one GET per file (resumed at its offset when it breaks): parallel ranged GETs per object measured no
gain and several times the memory (README, Performance), so that path was removed rather than left unreachable.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import PurePosixPath
from typing import Any

from job.config import S3Location
from job.errors import SourceAuthError, SourceError, SourceNotFound
from job.model import ObjectInfo, safe_relative_path
from job.retry import RetrySettings
from job.s3.client import S3Connection, s3_uri
from job.s3.parts import MiB

log = logging.getLogger(__name__)

CHUNK_SIZE = MiB
"""Most bytes asked of the body per read; aiohttp returns what it has, which is usually less."""
_DIRECTORY_TYPES = {"application/x-directory", "httpd/unix-directory"}


MAX_PAGES = 1_000
"""Listing pages followed (up to 1,000 keys each): far above any model, and an end to a server whose listing
never ends."""


class S3Source:
    """A :class:`~job.sources.base.Source` over an S3 object or prefix."""

    seekable = True
    """``open(obj, offset=n)`` reads from byte ``n`` (a ranged GET): the engine resumes broken reads there."""
    one_pass = False

    def __init__(
        self,
        location: S3Location,
        *,
        max_pool_connections: int = 10,
        retry: RetrySettings | None = None,
    ) -> None:
        self.location = location
        self.bucket = location.bucket
        self.key = location.key.lstrip("/")
        self._conn = S3Connection(location, side="source", max_pool_connections=max_pool_connections, retry=retry)
        self._keys: dict[PurePosixPath, str] = {}

    # --- list ---------------------------------------------------------------------------------

    async def list(self) -> AsyncIterator[ObjectInfo]:
        """Yield the one object, or every object under the prefix (see the module docstring)."""
        head_error: SourceAuthError | None = None
        if self.key and not self.key.endswith("/"):
            try:
                head = await self._conn.call(
                    "head_object", "looking up", s3_uri(self.bucket, self.key), Bucket=self.bucket, Key=self.key
                )
            except SourceError as mapped:
                if isinstance(mapped, SourceAuthError):
                    # On AWS a missing key answers 403 to a client without s3:ListBucket: let the
                    # listing decide, and report this error if it finds nothing either.
                    head_error = mapped
                elif not isinstance(mapped, SourceNotFound):  # 404: not an object, so a prefix
                    raise
            else:
                if head.get("ContentType") not in _DIRECTORY_TYPES:  # SeaweedFS answers HEAD on dirs
                    path = safe_relative_path(self.key.rsplit("/", 1)[-1], what="S3 key")
                    self._keys[path] = self.key
                    yield ObjectInfo(path=path, size=int(head["ContentLength"]), etag=head.get("ETag"))
                    return

        prefix = _as_prefix(self.key)
        target = s3_uri(self.bucket, prefix)
        found = 0
        token: str | None = None
        seen: set[str] = set()
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._conn.call("list_objects_v2", "listing", target, **kwargs)
            for item in page.get("Contents", []):
                key: str = item["Key"]
                if key.endswith("/"):
                    continue  # a folder marker, not a file
                path = safe_relative_path(key[len(prefix) :], what="S3 key")
                self._keys[path] = key
                found += 1
                yield ObjectInfo(path=path, size=int(item["Size"]), etag=item.get("ETag"))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token or token in seen:  # a server repeating its token would loop forever
                break
            seen.add(token)
            if len(seen) > MAX_PAGES:  # one always handing out a new token would, too
                raise SourceError(f"listing {target}: more than {MAX_PAGES} pages of objects", uri=target)
        if not found:
            if head_error is not None:
                raise head_error
            raise SourceNotFound(f"no objects under {target}", uri=target)

    # --- open ---------------------------------------------------------------------------------

    def open(self, obj: ObjectInfo, *, offset: int = 0) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Open one listed object from ``offset``; yields its chunks as they arrive."""
        return self._open(obj, offset)

    def _key_of(self, obj: ObjectInfo) -> str:
        key = self._keys.get(obj.path)
        if key is not None:
            return key
        return _as_prefix(self.key) + str(obj.path)

    @asynccontextmanager
    async def _open(self, obj: ObjectInfo, offset: int) -> AsyncIterator[AsyncIterator[bytes]]:
        key = self._key_of(obj)
        target = s3_uri(self.bucket, key)
        if offset < 0 or (obj.size is not None and offset > obj.size):
            raise SourceError(f"opening {target}: offset {offset} is outside its {obj.size} bytes", uri=target)
        if obj.size is not None and offset == obj.size:
            yield _nothing()  # nothing left to read: a Range past the end would be a 416
            return
        body = await self._get(key, obj, f"bytes={offset}-" if offset else None)
        chunks = self._chunks(body, target, str(obj.path))
        try:
            yield chunks
        finally:
            await chunks.aclose()
            body.close()  # drops the connection if the body was not read to its end

    async def _get(self, key: str, obj: ObjectInfo, byte_range: str | None) -> Any:
        """GET the object (or a range of it), pinned to the listed ETag; returns the streaming body."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if byte_range:
            kwargs["Range"] = byte_range
        if obj.etag:
            kwargs["IfMatch"] = obj.etag
        target = s3_uri(self.bucket, key)
        response = await self._conn.call("get_object", "reading", target, path=str(obj.path), **kwargs)
        body = response["Body"]
        try:
            _check_answer(response, obj, byte_range, target)
        except SourceError:
            body.close()
            raise
        return body

    async def _chunks(self, body: Any, target: str, path: str) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in body.iter_chunks(CHUNK_SIZE):
                yield chunk
        except Exception as exc:
            raise self._conn.error(exc, "reading", target, path=path) from exc

    async def close(self) -> None:
        """Close the S3 client."""
        await self._conn.close()


def _check_answer(response: dict[str, Any], obj: ObjectInfo, byte_range: str | None, target: str) -> None:
    """The GET answered the listed version and the range asked for, or SourceError (see the module doc)."""
    path = str(obj.path)
    etag = response.get("ETag")
    if obj.etag and etag and etag != obj.etag:
        raise SourceError(
            f"reading {target}: the object changed after it was listed (ETag {etag}, listed {obj.etag})",
            uri=target,
            path=path,
        )
    total: int | None = None
    content_range = response.get("ContentRange")
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1]
        total = int(tail) if tail.isdigit() else None
    elif not byte_range:
        total = response.get("ContentLength")
    elif byte_range and not content_range:
        raise SourceError(f"reading {target}: the server ignored the byte range {byte_range}", uri=target, path=path)
    if obj.size is not None and total is not None and total != obj.size:
        raise SourceError(
            f"reading {target}: the object changed after it was listed (now {total} bytes, listed {obj.size})",
            uri=target,
            path=path,
        )


def _as_prefix(key: str) -> str:
    """``models/m`` -> ``models/m/``; ``""`` (the bucket root) stays ``""``."""
    key = key.strip("/")
    return key + "/" if key else ""


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing
