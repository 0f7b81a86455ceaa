"""Destination ``oci``: the model as a KServe modelcar image (base image + one layer per file under /models).

Call order and what runs when (see ``job.destinations.base`` for the engine's side):

* The **first** ``put`` resolves the base image under a lock (its manifest or index, every platform
  manifest and config: a few small GETs, so a wrong base or login fails before model bytes move), then
  starts copying the base's blobs into the target repository as a background task, so the model bytes
  do not wait for it. A blob already there is skipped (HEAD); on the same registry it is mounted
  (``POST ?mount=&from=``: no bytes move); from another registry it is streamed GET -> PATCH, never via
  disk. A failed copy surfaces at the next ``put`` or at ``commit``.
* Each ``put`` streams one uncompressed tar layer (:class:`job.oci.modelcar.ModelLayer`) in one upload
  session: one PATCH with ``Content-Length`` (or chunked PATCHes, ``chunk_size``), the layer digest
  computed on the way. It returns the file's size, no sha256 (the layer digest covers the bytes; the
  engine fills in the file's digest when it hashed one) and the pushed layer as its ``detail``.
* ``commit`` waits for the base copy, then per platform pushes a new config (base config + diff_ids +
  history) and an OCI manifest; a single-platform base's manifest goes under the tag, a multi-arch
  base's manifests go by digest and a new index under the tag. Same model, same base -> same digests,
  so a rerun re-PUTs identical documents.
* ``abort`` cancels the base copy and DELETEs open upload sessions, best effort.

Retries and reruns. A ``put`` whose upload fails cancels its session (``DELETE``) before raising, so the
engine's next try of that file starts a clean one. Each model layer is annotated with the file's identity
at its source (``model-sync.source``: its sha256 or ETag). :meth:`OciDestination.lookup` reads the
manifest the tag points to (once), and a file whose path, layer size and identity match a layer there
whose blob the repository still has is not sent again: a layer's digest is known before streaming only
that way, since it hashes the tar header and padding as well as the file. So a rerun after a try that
pushed its manifest (then died before the registry recorded it), or an update of a model in which few
files changed, sends only what is new. A try killed before its manifest was pushed leaves its finished
blobs unreferenced (the registry's garbage collection removes them); the rerun sends them again.

A file whose size the source cannot tell (http without Content-Length: rare) is spooled to
``storage_path`` first, because the tar header holds the size and comes before the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from job.config import OciLocation
from job.errors import ConfigError, DestinationError, ModelSyncError
from job.model import Committed, ObjectInfo, Uploaded, source_identity
from job.oci.client import Manifest, OciClient
from job.oci.modelcar import (
    LayerDescriptor,
    ModelLayer,
    base_annotations,
    modelcar_config,
    modelcar_index,
    modelcar_manifest,
)
from job.oci.protocol import INDEX_TYPES, OCI_INDEX, OCI_MANIFEST, image_entries
from job.oci.reference import ImageReference, parse_reference
from job.oci.upload import UploadSession, sha256_digest
from job.retry import RetrySettings
from job.streams import aiter_file, describe, spool

log = logging.getLogger(__name__)

DEFAULT_BASE_IMAGE = "busybox:latest"
CANCEL_TIMEOUT = 5.0
"""Seconds the DELETE of a broken upload session may take before the put's error is raised anyway."""


@dataclass(frozen=True, slots=True)
class _Platform:
    entry: dict[str, Any] | None
    """The base index's entry for this manifest (None for a single-platform base)."""
    manifest: Manifest
    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Base:
    reference: ImageReference
    top: Manifest
    """What the base reference points to: an image manifest, or an index."""
    platforms: list[_Platform]

    @property
    def is_index(self) -> bool:
        return len(self.platforms) > 1 or self.platforms[0].entry is not None


class OciDestination:
    """Push the model as a modelcar image to ``location.reference`` (see the module docstring)."""

    def __init__(
        self,
        location: OciLocation,
        *,
        storage_path: Path,
        max_connections: int = 16,
        retry: RetrySettings | None = None,
    ) -> None:
        self.location = location
        self.target = parse_reference(location.reference)
        if self.target.digest is not None or self.target.tag is None:
            raise ConfigError(f"destination image {location.reference!r}: push to a tag, not a digest")
        if self.target.tag == "latest":
            log.warning("destination tag is 'latest': KServe then pulls the modelcar on every pod start")
        self.base_ref = parse_reference(location.base_image or DEFAULT_BASE_IMAGE)
        self.storage_path = storage_path
        self.chunk_size = location.chunk_size
        self.client = OciClient(
            self.target.api_host,
            username=location.username,
            password=location.password,
            tls_verify=location.tls_verify,
            ca_bundle=location.ca_bundle,
            cert_dir=location.cert_dir,
            cert_names=(self.target.registry,),
            side="destination",
            max_connections=max_connections,
            retry=retry,
        )
        self.same_registry = self.base_ref.api_host == self.target.api_host
        if self.same_registry:
            self.base_client = self.client
        else:
            # Another registry: its login from the docker config, if any; the destination's TLS settings.
            login = location.docker_config.lookup(self.base_ref.registry) if location.docker_config else None
            self.base_client = OciClient(
                self.base_ref.api_host,
                username=login.username if login else None,
                password=login.password if login else None,
                tls_verify=location.tls_verify,
                ca_bundle=location.ca_bundle,
                cert_dir=location.cert_dir,
                cert_names=(self.base_ref.registry,),
                side="destination",
                retry=retry,
            )
        self._base: _Base | None = None
        self._previous: dict[PurePosixPath, LayerDescriptor] | None = None
        self._previous_lock = asyncio.Lock()
        self._base_lock = asyncio.Lock()
        self._copy_task: asyncio.Task[None] | None = None
        self._sessions: set[UploadSession] = set()

    @property
    def uri(self) -> str:
        return f"oci://{self.target.registry}/{self.target.repository}:{self.target.tag}"

    # --- the base image -------------------------------------------------------------------------

    async def _prepare(self) -> _Base:
        """Resolve the base once; start copying its blobs in the background. Re-raises a failed copy."""
        async with self._base_lock:
            if self._base is None:
                self._base = await self._resolve_base()
                self._copy_task = asyncio.create_task(self._copy_base(self._base), name="oci-base-copy")
        if self._copy_task is not None and self._copy_task.done() and not self._copy_task.cancelled():
            error = self._copy_task.exception()
            if error is not None:
                raise error
        return self._base

    async def _resolve_base(self) -> _Base:
        ref, client = self.base_ref, self.base_client
        top = await client.get_manifest(ref.repository, ref.reference)
        document = top.json()
        if top.media_type in INDEX_TYPES or document.get("mediaType") in INDEX_TYPES:
            entries = image_entries(document)
            if not entries:
                raise DestinationError(f"base image {ref}: its index lists no image manifest", uri=self.uri)
            pairs: list[tuple[dict[str, Any] | None, Manifest]] = [
                (e, await client.get_manifest(ref.repository, e["digest"])) for e in entries
            ]
        else:
            pairs = [(None, top)]
        platforms = []
        for entry, manifest in pairs:
            document = manifest.json()
            if not isinstance(document.get("config"), dict) or not isinstance(document.get("layers"), list):
                raise DestinationError(
                    f"base image {ref}: manifest {manifest.digest} is not an image manifest", uri=self.uri
                )
            config_digest = document["config"]["digest"]
            config = json.loads(await client.read_blob(ref.repository, config_digest))
            if not isinstance(config, dict):
                raise DestinationError(f"base image {ref}: config {config_digest} is not a JSON object", uri=self.uri)
            platforms.append(_Platform(entry=entry, manifest=manifest, config=config))
        log.info("base image %s: %s, %d platform(s)", ref, top.digest, len(platforms))
        return _Base(reference=ref, top=top, platforms=platforms)

    async def _copy_base(self, base: _Base) -> None:
        seen: set[str] = set()
        for platform in base.platforms:
            for layer in platform.manifest.json()["layers"]:
                if layer["digest"] not in seen:
                    seen.add(layer["digest"])
                    await self._copy_blob(layer["digest"], int(layer["size"]))

    async def _copy_blob(self, digest: str, size: int) -> None:
        repo = self.target.repository
        if await self.client.blob_exists(repo, digest):
            return
        mount_from = self.base_ref.repository if self.same_registry else None
        session = await self.client.start_upload(repo, mount=digest if mount_from else None, mount_from=mount_from)
        if session is None:
            return  # mounted: distribution linked the blob, no bytes moved
        self._sessions.add(session)
        async with self.base_client.open_blob(self.base_ref.repository, digest) as body:
            await self.client.upload(
                session,
                body,
                size,
                chunk_size=self.chunk_size,
                expected_digest=digest,
                what=f"copying base blob {digest} to {self.target.name}",
            )
        self._sessions.discard(session)

    # --- what an earlier try pushed ---------------------------------------------------------------

    async def _previous_layers(self) -> dict[PurePosixPath, LayerDescriptor]:
        """The model layers of the manifest the tag points to now (an index: its first image), by path."""
        async with self._previous_lock:
            if self._previous is None:
                self._previous = await self._read_previous()
        return self._previous

    async def _read_previous(self) -> dict[PurePosixPath, LayerDescriptor]:
        repo, tag = self.target.repository, self.target.tag
        assert tag is not None
        try:
            manifest = await self.client.get_manifest(repo, tag)
            document = manifest.json()
            if manifest.media_type in INDEX_TYPES or document.get("mediaType") in INDEX_TYPES:
                entries = image_entries(document)
                if not entries:
                    return {}
                document = (await self.client.get_manifest(repo, str(entries[0]["digest"]))).json()
        except ModelSyncError as exc:
            if getattr(exc, "status", None) != 404:  # 404: nothing pushed yet, the usual case
                log.info("not reusing layers of %s: %s", self.uri, exc)
            return {}
        except (ValueError, KeyError, TypeError) as exc:
            log.info("not reusing layers of %s: its manifest is not what model-sync pushes (%s)", self.uri, exc)
            return {}
        layers = [LayerDescriptor.from_json(d) for d in document.get("layers") or [] if isinstance(d, dict)]
        return {layer.path: layer for layer in layers if layer is not None and layer.source}

    async def lookup(self, obj: ObjectInfo) -> Uploaded | None:
        """The layer an earlier push holds for ``obj`` (same path, size and source identity), or None.

        The blob must still be in the repository (HEAD). The returned ``Uploaded`` carries the layer's
        digest and size, and the file's sha256 only when the source listed it.
        """
        identity = source_identity(obj)
        if identity is None or obj.size is None:
            return None
        layer = (await self._previous_layers()).get(obj.path)
        if layer is None or layer.source != identity or layer.size != ModelLayer(obj.path, obj.size).layer_size:
            return None
        if not await self.client.blob_exists(self.target.repository, layer.digest):
            return None
        sha256 = obj.digest.lower() if obj.digest else None
        return Uploaded(obj=obj, size=obj.size, sha256=sha256, detail=layer, skipped=True)

    # --- the Destination protocol ---------------------------------------------------------------

    async def put(self, obj: ObjectInfo, data: AsyncIterator[bytes]) -> Uploaded:
        """Stream one file as one tar layer into the target repository."""
        await self._prepare()
        if obj.size is not None:
            return await self._put(obj, data, obj.size)
        spooled, size = await self._spool(obj, data)
        try:
            async with contextlib.aclosing(aiter_file(spooled)) as stream:
                return await self._put(obj, stream, size)
        finally:
            spooled.unlink(missing_ok=True)

    async def _put(self, obj: ObjectInfo, data: AsyncIterator[bytes], size: int) -> Uploaded:
        layer = ModelLayer(obj.path, size)
        session = await self.client.start_upload(self.target.repository)
        assert session is not None
        self._sessions.add(session)
        try:
            digest = await self.client.upload(
                session,
                layer.stream(data),
                layer.layer_size,
                chunk_size=self.chunk_size,
                what=f"uploading {obj.path} to {self.target.name}",
            )
        except Exception:
            # Cancelled here rather than in abort(): the engine may send the file again, in a new session.
            # (On cancellation the session is left to abort(), which runs once within the stop budget.)
            self._sessions.discard(session)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_TIMEOUT):
                    await self.client.cancel_upload(session)
            raise
        self._sessions.discard(session)
        pushed = LayerDescriptor(digest=digest, size=layer.layer_size, path=obj.path, source=source_identity(obj))
        return Uploaded(obj=obj, size=size, detail=pushed)

    async def _spool(self, obj: ObjectInfo, data: AsyncIterator[bytes]) -> tuple[Path, int]:
        # Rare (http without Content-Length): the tar header holds the size and goes before the bytes,
        # so this one file goes to disk first. Everything else streams.
        folder = self.storage_path / "oci-spool"
        path = folder / uuid.uuid4().hex
        log.info("size of %s is unknown: spooling it to %s first (the tar header needs it)", obj.path, folder)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        return path, await spool(data, path.open("wb"), path)

    @staticmethod
    def _layer_of(uploaded: Uploaded) -> LayerDescriptor:
        layer = uploaded.detail
        if not isinstance(layer, LayerDescriptor):
            raise TypeError(f"{uploaded.obj.path} was not put by an OCI destination")
        return layer

    async def commit(self, uploaded: Sequence[Uploaded]) -> Committed:
        """Push config(s), manifest(s) and, for a multi-arch base, the index; return the tag's digest."""
        base = await self._prepare()
        if self._copy_task is not None:
            await self._copy_task
        layers = [self._layer_of(u) for u in uploaded]
        repo, tag = self.target.repository, self.target.tag
        assert tag is not None
        annotations = base_annotations(str(base.reference), base.top.digest)
        pushed: list[tuple[dict[str, Any], str, int]] = []
        digest = ""
        for platform in base.platforms:
            config = modelcar_config(platform.config, layers)
            config_digest = await self.client.push_blob(repo, config)
            manifest = modelcar_manifest(platform.manifest.json(), config_digest, len(config), layers, annotations)
            if base.is_index:
                assert platform.entry is not None
                digest = await self.client.put_manifest(repo, sha256_digest(manifest), manifest, OCI_MANIFEST)
                pushed.append((platform.entry, digest, len(manifest)))
            else:
                digest = await self.client.put_manifest(repo, tag, manifest, OCI_MANIFEST)
        if base.is_index:
            index = modelcar_index(base.top.json(), pushed, annotations)
            digest = await self.client.put_manifest(repo, tag, index, OCI_INDEX)
        log.info("pushed %s (%s), %d model layers", self.uri, digest, len(layers))
        return Committed(uri=self.uri, digest=digest)

    async def abort(self) -> None:
        """Stop the base copy and cancel open upload sessions; never raises."""
        try:
            if self._copy_task is not None and not self._copy_task.done():
                self._copy_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._copy_task
            for session in list(self._sessions):
                await self.client.cancel_upload(session)
            self._sessions.clear()
        except Exception as exc:
            log.warning("aborting the push to %s: %s", self.uri, describe(exc))

    async def close(self) -> None:
        """Release the connections (and stop a base copy still running)."""
        if self._copy_task is not None and not self._copy_task.done():
            self._copy_task.cancel()
            with contextlib.suppress(BaseException):
                await self._copy_task
        await self.client.aclose()
        if self.base_client is not self.client:
            await self.base_client.aclose()
