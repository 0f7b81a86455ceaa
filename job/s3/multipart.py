"""S3 multipart uploads: create, parts in parallel, complete, abort; and the uploads earlier tries left open.

:class:`MultipartUploads` is the protocol half of the S3 destination (``job.destinations.s3``), which
decides *whether* a file goes up in parts and hands over its stream after the first part. One upload:

* ``CreateMultipartUpload`` with the part checksum algorithm and the object's user metadata (an object
  gets its metadata only when completed, so a half-sent one never looks finished to a rerun);
* parts of ``part_size`` read from the stream in order (:func:`~job.s3.parts.read_part`), each sent with
  its checksum, which the server verifies; up to ``parallel_parts`` in flight. Room for a part
  (:class:`~job.s3.budget.PartSlots`) is taken *before* it is read, so a file never holds more than
  ``parallel_parts x part_size`` bytes, nor all files together more than the destination's part budget. A stream of unknown length grows its parts (:func:`~job.s3.parts.grow_part_size`);
* ``CompleteMultipartUpload`` once the stream is read to its very end, so the engine's size and digest
  checks run before a wrong file can become visible. A retried Complete whose first try did land (its
  answer was lost) finds the upload gone: a HEAD of the right size and part count accepts it.

Any failure aborts the upload as soon as an upload id exists (s3transfer's rule) and re-raises. On
cancellation (SIGTERM) the upload is left to :meth:`MultipartUploads.abort_all`, which the engine runs
once through the destination's ``abort()``, bounded, instead of once per part. Every request goes through
:meth:`~job.s3.client.S3Connection.call`: a part is in memory, so retrying its request is retrying the part.

Uploads an earlier, killed try left open on a key are listed once (``ListMultipartUploads`` under the
prefix) and aborted before that key is written again (:meth:`MultipartUploads.abort_stale`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from job.errors import DestinationError, ModelSyncError
from job.s3.budget import PartSlots
from job.s3.client import S3Connection, s3_uri
from job.s3.parts import CHECKSUMS, MAX_PARTS, Part, PartBody, grow_part_size, read_part
from job.streams import ChunkReader

__all__ = ["ABORT_TIMEOUT", "MAX_STALE_LISTING", "MultipartUploads"]

log = logging.getLogger(__name__)

ABORT_TIMEOUT = 20.0
"""Seconds one AbortMultipartUpload may take before we give up on it (and leave it to abort())."""
MAX_STALE_LISTING = 100
"""Pages of ``ListMultipartUploads`` read to find uploads an earlier try left open (1,000 uploads a page)."""


class MultipartUploads:
    """The multipart uploads into one bucket under one key prefix, and the ones not finished yet.

    ``checksum`` (a key of :data:`~job.s3.parts.CHECKSUMS`) is the algorithm of every part.
    """

    def __init__(self, conn: S3Connection, bucket: str, prefix: str, *, checksum: str) -> None:
        self._conn = conn
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.checksum = checksum
        self._open_uploads: dict[str, str] = {}
        """upload id -> key of every multipart upload created and not yet completed or aborted."""
        self._stale: dict[str, list[str]] | None = None
        """key -> upload ids left open under the prefix by earlier tries (listed once, on first need)."""
        self._stale_lock = asyncio.Lock()

    async def abort_stale(self, key: str) -> None:
        """Abort the multipart uploads of ``key`` that an earlier (killed) try left open. Never raises."""
        async with self._stale_lock:
            if self._stale is None:
                self._stale = await self._list_stale()
        for upload_id in self._stale.pop(key, []):
            if upload_id not in self._open_uploads:
                log.info("aborting a multipart upload of %s left open by an earlier try", s3_uri(self.bucket, key))
                await self.abort_upload(upload_id, key)

    async def _list_stale(self) -> dict[str, list[str]]:
        stale: dict[str, list[str]] = {}
        prefix = self.prefix + "/" if self.prefix else ""
        markers: dict[str, str] = {}
        try:
            for _ in range(MAX_STALE_LISTING):
                page = await self._conn.call(
                    "list_multipart_uploads",
                    "listing open uploads under",
                    f"s3://{self.bucket}/{prefix}",
                    Bucket=self.bucket,
                    Prefix=prefix,
                    **markers,
                )
                for upload in page.get("Uploads", []):
                    stale.setdefault(str(upload["Key"]), []).append(str(upload["UploadId"]))
                if not page.get("IsTruncated"):
                    break
                markers = {
                    "KeyMarker": page.get("NextKeyMarker", ""),
                    "UploadIdMarker": page.get("NextUploadIdMarker", ""),
                }
        except ModelSyncError as exc:  # no s3:ListBucketMultipartUploads: nothing to clean, not a failure
            log.debug("not looking for open multipart uploads: %s", exc)
        return stale

    async def upload(
        self,
        key: str,
        reader: ChunkReader,
        slots: PartSlots,
        first: list[tuple[Part, int]],
        part_size: int,
        metadata: dict[str, str],
        *,
        path: str,
        size: int | None,
    ) -> str:
        """Upload ``first`` (popped from its list) and the rest of ``reader`` as one multipart upload of ``key``.

        ``first`` is the first part and the room it took from ``slots``; each further part takes room before it
        is read, and gives it back once sent (room a failed upload still holds is the caller's to give back:
        ``slots.close()``). ``size`` is the listed size (``None``: unknown, parts grow); ``path`` names the file
        in errors. Returns the completed object's ETag.
        """
        target = s3_uri(self.bucket, key)
        created = await self._conn.call(
            "create_multipart_upload",
            "starting a multipart upload to",
            target,
            path=path,
            Bucket=self.bucket,
            Key=key,
            ChecksumAlgorithm=self.checksum,
            Metadata=metadata,
        )
        upload_id: str = created["UploadId"]
        self._open_uploads[upload_id] = key
        tasks: list[asyncio.Task[dict[str, Any]]] = []
        failed: list[asyncio.Task[dict[str, Any]]] = []

        def part_done(taken: int, task: asyncio.Task[dict[str, Any]]) -> None:
            # Note a failure before freeing the room, so the reader sees it before reading another part.
            if not task.cancelled() and task.exception() is not None:
                failed.append(task)
            slots.release(taken)

        try:
            number, (part, taken) = 1, first.pop()
            new_hash = CHECKSUMS[self.checksum][0]
            while True:
                task = asyncio.create_task(self._upload_part(key, upload_id, number, part, path))
                task.add_done_callback(functools.partial(part_done, taken))
                tasks.append(task)
                del part
                if await reader.at_eof():
                    break
                if size is None:
                    part_size = grow_part_size(part_size, number)
                number += 1
                if number > MAX_PARTS:
                    raise DestinationError(
                        f"uploading {target}: more than {MAX_PARTS} parts of up to {part_size} bytes",
                        uri=target,
                        path=path,
                    )
                taken = await slots.acquire(part_size if size is None else min(part_size, size - reader.consumed))
                if failed:  # fail fast: a refused part stops the reading
                    slots.release(taken)
                    await failed[0]
                part = await read_part(reader, part_size, new_hash)
            parts = [await task for task in tasks]
            response = await self._complete(key, upload_id, parts, reader.consumed, path)
        except BaseException as exc:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not isinstance(exc, asyncio.CancelledError):
                # Cancelled (SIGTERM): abort_all() cleans up once, within the stop budget; here it would run
                # once per file, unbounded by it.
                await self.abort_upload(upload_id, key)
            raise
        del self._open_uploads[upload_id]
        return str(response.get("ETag", ""))

    async def _complete(
        self, key: str, upload_id: str, parts: list[dict[str, Any]], size: int, path: str
    ) -> dict[str, Any]:
        target = s3_uri(self.bucket, key)
        try:
            response: dict[str, Any] = await self._conn.call(
                "complete_multipart_upload",
                "completing the multipart upload of",
                target,
                path=path,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except ModelSyncError as exc:
            # A retried Complete whose first try did land (its answer was lost) finds the upload gone.
            if getattr(exc, "code", None) != "NoSuchUpload":
                raise
            head = await self._conn.call("head_object", "looking up", target, path=path, Bucket=self.bucket, Key=key)
            if int(head.get("ContentLength", -1)) != size or not str(head.get("ETag", "")).endswith(f'-{len(parts)}"'):
                raise
            response = head
        return response

    async def _upload_part(self, key: str, upload_id: str, number: int, part: Part, path: str) -> dict[str, Any]:
        """Upload one part (the request, and so the part, is retried by ``S3Connection.call``)."""
        field = CHECKSUMS[self.checksum][1]
        response = await self._conn.call(
            "upload_part",
            f"uploading part {number} of",
            s3_uri(self.bucket, key),
            path=path,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=PartBody(part),
            ChecksumAlgorithm=self.checksum,
            **{field: part.checksum},
        )
        return {"PartNumber": number, "ETag": response["ETag"], field: part.checksum}

    async def abort_upload(self, upload_id: str, key: str) -> bool:
        """Abort one multipart upload; True when it is gone. Logs instead of raising."""
        try:
            async with asyncio.timeout(ABORT_TIMEOUT):
                await self._conn.call(
                    "abort_multipart_upload",
                    "aborting the multipart upload of",
                    s3_uri(self.bucket, key),
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                )
        except TimeoutError:
            log.warning(
                "aborting the multipart upload of %s: gave up after %.0f s", s3_uri(self.bucket, key), ABORT_TIMEOUT
            )
            return False
        except ModelSyncError as error:
            if getattr(error, "code", None) != "NoSuchUpload":
                log.warning("%s", error)
                return False
        self._open_uploads.pop(upload_id, None)
        return True

    async def abort_all(self) -> None:
        """Abort every multipart upload started here and not finished. Never raises."""
        for upload_id, key in list(self._open_uploads.items()):
            await self.abort_upload(upload_id, key)
