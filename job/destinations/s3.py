"""Write a model to S3: each file becomes ``<prefix>/<relative path>`` in the destination bucket.

``put(obj, data)`` reads the first part (``part_size`` bytes) from the stream. If the stream ends within
it (small files, 0-byte files, short streams of unknown size) the file goes up in one ``PutObject``.
Otherwise the rest of the stream is handed to :class:`~job.s3.multipart.MultipartUploads`: parts of
``part_size`` read in order, up to ``parallel_parts`` uploaded at once, a file never holding more than
``parallel_parts x part_size`` bytes nor all files together more than ``part_memory`` (the shared budget of
:mod:`job.s3.budget`), the upload aborted on any failure (see :mod:`job.s3.multipart`);
``abort()`` retries every upload this destination started and did not finish.

Integrity: every request body carries a checksum the server verifies. Measured on SeaweedFS 4.48: a
wrong ``ChecksumSHA256``, ``ChecksumCRC32`` or ``Content-MD5`` on PutObject or UploadPart is refused with
400 ``BadDigest``; moto 5.2 verifies none of them. Parts of a multipart upload carry CRC32, the AWS SDKs' default
since 2025: it catches what a checksum on the wire is for (corruption in transit) just as well as sha256,
and is faster to compute and cheaper for the server to verify (README, Performance). A file known to fit
in one part goes up with SHA256 instead (``checksum_single``): for a few MiB it costs nothing, and the
object then keeps a full sha256 that ``head-object --checksum-mode ENABLED`` shows, which we also write
into ``model-sync-sha256``. The stream is read to its very end (``StopAsyncIteration``) before the
object is completed, so the engine's size and digest checks run before a wrong file can become visible.

The whole-file sha256 is not computed here: the part checksums cover every byte, and the engine hashes
a file only when its source listed a sha256 to check (see ``job.model.Uploaded``).

Reruns. Every object is written with user metadata ``model-sync-source``: the file's identity at the
source (:func:`~job.model.source_identity`: its sha256 when listed, else its ETag, for a pvc its
stat), and ``model-sync-sha256`` when the whole file's sha256 is known before the write (a listed
digest, or a file that fits in one part). :meth:`S3Destination.lookup` HEADs the key before a file is
sent: an object of the same size and identity was written by an earlier try and is not sent again (a
multipart object gets its metadata only when completed, so a half-sent one never matches); the prefix is
listed once first, so only keys already there with the right size cost a HEAD. Multipart
uploads an earlier, killed try left open on a key are aborted before that key is written again, so a
rerun leaves no incomplete upload behind (a lifecycle rule ``AbortIncompleteMultipartUpload`` is still
good practice for jobs that are never rerun).

Retries. Every request goes through :meth:`~job.s3.client.S3Connection.call`: a part is in memory, so
retrying its request is retrying the part. A part or file that still fails aborts its multipart upload
and raises; the engine may then send the file again from its start. On cancellation (SIGTERM) the upload
is left to :meth:`S3Destination.abort`, which the engine runs once, bounded, instead of once per part.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from job.config import S3Location
from job.destinations.base import OneFilePerPut
from job.errors import ConfigError, DestinationAuthError, ModelSyncError
from job.model import Committed, ObjectInfo, Uploaded, source_identity
from job.retry import RetrySettings
from job.s3.budget import ByteBudget, PartSlots
from job.s3.client import S3Connection, s3_uri
from job.s3.multipart import MultipartUploads
from job.s3.parts import CHECKSUMS as _CHECKSUMS
from job.s3.parts import DEFAULT_PART_MEMORY, Part, PartBody, choose_part_size, read_part
from job.streams import ChunkReader

__all__ = ["_CHECKSUMS", "PartBody", "S3Destination", "destination_key"]

log = logging.getLogger(__name__)

ChecksumName = Literal["SHA256", "CRC32"]
META_SOURCE = "model-sync-source"
"""User metadata: the file's identity at its source (``x-amz-meta-model-sync-source``)."""
META_SHA256 = "model-sync-sha256"
"""User metadata: ``sha256:<hex>`` of the whole file, when it was known before the write."""
MAX_EXISTING_LISTING = 100
"""Pages of ``ListObjectsV2`` read to learn what is under the prefix already (1,000 keys a page); beyond
that, each file is looked up with its own HEAD."""


def destination_key(prefix: str, path: PurePosixPath | str) -> str:
    """The object key of ``path`` under ``prefix``: ``("models/m/", "a/b.json")`` -> ``models/m/a/b.json``.

    An empty prefix writes at the bucket root.
    """
    prefix = prefix.strip("/")
    return f"{prefix}/{path}" if prefix else str(path)


@dataclass(frozen=True, slots=True)
class S3Object:
    """What an S3 destination wrote for one file: its key and the ETag the server gave it."""

    key: str
    etag: str


class S3Destination(OneFilePerPut):
    """A :class:`~job.destinations.base.Destination` writing files under a key prefix of one bucket."""

    def __init__(
        self,
        location: S3Location,
        *,
        parallel_parts: int = 4,
        part_size: int | None = None,
        part_memory: int = DEFAULT_PART_MEMORY,
        checksum: ChecksumName = "CRC32",
        checksum_single: ChecksumName = "SHA256",
        max_pool_connections: int = 10,
        retry: RetrySettings | None = None,
    ) -> None:
        for name in (checksum, checksum_single):
            if name not in _CHECKSUMS:
                raise ConfigError(f"S3 checksum must be one of {', '.join(_CHECKSUMS)}, got {name!r}")
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.key.strip("/")
        self.parallel_parts = max(1, parallel_parts)
        self.part_size = part_size
        self.part_memory = part_memory
        """Bytes of parts held in memory at once, all files together (``job.s3.budget``)."""
        self._budget = ByteBudget(part_memory)
        self.checksum = checksum
        """The checksum of every part of a multipart upload, and of a file not known to fit in one part."""
        self.checksum_single = checksum_single
        """The checksum of a file whose listed size fits in one part (one PutObject)."""
        self._conn = S3Connection(location, side="destination", max_pool_connections=max_pool_connections, retry=retry)
        self._multipart = MultipartUploads(self._conn, self.bucket, self.prefix, checksum=checksum)
        self._existing: dict[str, int] | None = None
        """key -> size of each object under the prefix before this run wrote any (listed once)."""
        self._existing_listed = False
        self._existing_lock = asyncio.Lock()

    @property
    def uri(self) -> str:
        """``s3://bucket/prefix/``: what ``commit`` returns.

        The trailing ``/`` matters to readers: KServe's storage initializer lists the uri as a plain key
        prefix, so ``s3://out/demo`` would also pull ``demo-v2/...`` into the model.
        """
        return f"s3://{self.bucket}/{self.storage_path}"

    @property
    def storage_path(self) -> str:
        """The key prefix every file is written under, ending in ``/`` (``""`` for the bucket root)."""
        return f"{self.prefix}/" if self.prefix else ""

    def key_for(self, path: PurePosixPath | str) -> str:
        """The object key a file of the model is written to."""
        return destination_key(self.prefix, path)

    async def lookup(self, obj: ObjectInfo) -> Uploaded | None:
        """The object an earlier try wrote for ``obj`` (same size and source identity), or None: send it.

        One HEAD. A file whose identity the source cannot tell is always sent.
        """
        identity = source_identity(obj)
        if identity is None or obj.size is None:
            return None
        key = self.key_for(obj.path)
        existing = await self._existing_sizes()
        if existing is not None and existing.get(key) != obj.size:
            return None  # nothing of that size there: no HEAD needed (the first run into a fresh prefix)
        try:
            head = await self._conn.call(
                "head_object", "looking up", s3_uri(self.bucket, key), Bucket=self.bucket, Key=key
            )
        except DestinationAuthError as exc:
            # Without s3:ListBucket, S3 answers a HEAD of a missing key with 403, not 404; a writer that may
            # only PutObject cannot look: send the file (the upload reports a real permission problem).
            log.debug("cannot look up %s, sending it: %s", key, exc)
            return None
        except ModelSyncError as exc:
            if getattr(exc, "status", None) == 404 or getattr(exc, "code", None) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if int(head.get("ContentLength", -1)) != obj.size or metadata.get(META_SOURCE) != identity:
            return None
        sha256 = metadata.get(META_SHA256) or obj.digest
        found = S3Object(key=key, etag=str(head.get("ETag", "")))
        return Uploaded(obj=obj, size=obj.size, sha256=sha256.lower() if sha256 else None, detail=found, skipped=True)

    async def _existing_sizes(self) -> dict[str, int] | None:
        """What is under the prefix (key -> size), listed once; None when it may not be listed or is too long."""
        async with self._existing_lock:
            if not self._existing_listed:
                self._existing = await self._list_existing()
                self._existing_listed = True
        return self._existing

    async def _list_existing(self) -> dict[str, int] | None:
        prefix = self.prefix + "/" if self.prefix else ""
        sizes: dict[str, int] = {}
        token: str | None = None
        try:
            for _ in range(MAX_EXISTING_LISTING):
                kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
                if token:
                    kwargs["ContinuationToken"] = token
                page = await self._conn.call("list_objects_v2", "listing", self.uri, **kwargs)
                sizes.update({str(item["Key"]): int(item["Size"]) for item in page.get("Contents", [])})
                token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
                if not token:
                    return sizes
        except ModelSyncError as exc:  # no s3:ListBucket: a HEAD per file instead
            log.debug("not listing %s: %s", self.uri, exc)
        return None

    async def put(self, obj: ObjectInfo, data: AsyncIterator[bytes]) -> Uploaded:
        """Upload one file from its stream (see the module docstring); returns its size, key and ETag.

        ``Uploaded.sha256`` is left None (the engine fills it when it hashed the file). Errors the stream raises propagate
        unchanged; S3 errors are mapped to ``DestinationAuthError`` / ``UploadRejected`` /
        ``DestinationError``.
        """
        key = self.key_for(obj.path)
        part_size = choose_part_size(obj.size, self.part_size)
        single = obj.size is not None and obj.size <= part_size
        algorithm = self.checksum_single if single else self.checksum
        reader = ChunkReader(data)
        slots = PartSlots(self._budget, self.parallel_parts)
        try:
            # The first part is in memory from here on; a file known to be small takes only its size.
            taken = await slots.acquire(part_size if obj.size is None else min(part_size, obj.size))
            first = await read_part(reader, part_size, _CHECKSUMS[algorithm][0])
            metadata = self._metadata(obj)
            if await reader.at_eof():
                if algorithm == "SHA256" and obj.size == first.size:
                    metadata.setdefault(META_SHA256, "sha256:" + base64.b64decode(first.checksum).hex())
                etag = await self._put_object(key, obj, first, algorithm, metadata)
            else:
                await self._multipart.abort_stale(key)
                # Handed over in a list so this frame does not keep the first part alive for the whole upload.
                handover, first = [(first, taken)], Part([], 0, "")
                etag = await self._multipart.upload(
                    key, reader, slots, handover, part_size, metadata, path=str(obj.path), size=obj.size
                )
        finally:
            slots.close()
        return Uploaded(obj=obj, size=reader.consumed, detail=S3Object(key=key, etag=etag))

    def _metadata(self, obj: ObjectInfo) -> dict[str, str]:
        metadata: dict[str, str] = {}
        identity = source_identity(obj)
        if identity is not None:
            metadata[META_SOURCE] = identity
        if obj.digest and obj.digest.lower().startswith("sha256:"):
            metadata[META_SHA256] = obj.digest.lower()
        return metadata

    async def _put_object(self, key: str, obj: ObjectInfo, part: Part, algorithm: str, metadata: dict[str, str]) -> str:
        response = await self._conn.call(
            "put_object",
            "uploading",
            s3_uri(self.bucket, key),
            path=str(obj.path),
            Bucket=self.bucket,
            Key=key,
            Body=PartBody(part),
            ChecksumAlgorithm=algorithm,
            Metadata=metadata,
            **{_CHECKSUMS[algorithm][1]: part.checksum},
        )
        return str(response.get("ETag", ""))

    async def commit(self, uploaded: Sequence[Uploaded]) -> Committed:
        """Nothing to publish: every object is complete once ``put`` returned. Returns ``s3://bucket/prefix/``."""
        return Committed(uri=self.uri, storage_path=self.storage_path or None)

    async def abort(self) -> None:
        """Abort every multipart upload this destination created and did not finish. Never raises."""
        await self._multipart.abort_all()

    async def close(self) -> None:
        """Close the S3 client."""
        try:
            await self._conn.close()
        except Exception as exc:
            log.warning("closing the S3 client of %s: %s", self.uri, exc)
