"""Destination ``oci``: the model as a KServe modelcar image (base image + layers of files under /models).

Call order and what runs when (see ``job.destinations.base`` for the engine's side):

* ``plan`` resolves the base image and groups the files into layers within the image's layer budget
  (``MODEL_SYNC_DESTINATION_OCI_MAX_LAYERS``, base layers included; ``job.oci.layout``): a layer per
  file while they fit, else small files packed together and, past that, neighbours sharing (a tar.gz,
  planned as it is listed: a layer per file for half the budget, the rest planned together).
* The base image is resolved once (by ``plan``, or the **first** ``put``), under a lock (its manifest
  or index, every platform manifest and config: a few small GETs, so a wrong base or login fails before
  model bytes move), then its blobs are copied into the target repository by a background task, so the
  model bytes do not wait for it. A blob already there is skipped (HEAD); on the same registry it is
  mounted (``POST ?mount=&from=``: no bytes move); from another registry it is streamed GET -> PATCH,
  never via disk. A failed copy surfaces at the next ``put`` or at ``commit``.
* Each ``put`` streams one uncompressed tar layer (:class:`job.oci.modelcar.ModelLayer`), each
  ``put_group`` one layer of several files (:class:`job.oci.modelcar.PackedLayer`, fed file after
  file), in one upload session: one PATCH with ``Content-Length`` (or chunked PATCHes, ``chunk_size``),
  the layer digest computed on the way. It returns each file's size, no sha256 (the layer digest covers
  the bytes; the engine fills in the file's digest when it hashed one) and the pushed layer as its
  ``detail``.
* ``commit`` waits for the base copy, then per platform pushes a new config (base config + diff_ids +
  history) and an OCI manifest; a single-platform base's manifest goes under the tag, a multi-arch
  base's manifests go by digest and a new index under the tag. Same model, same base -> same digests,
  so a rerun re-PUTs identical documents.
* ``abort`` cancels the base copy and DELETEs open upload sessions, best effort.

Retries and reruns. A ``put`` whose upload fails cancels its session (``DELETE``) before raising, so the
engine's next try of that file starts a clean one. Each model layer is annotated with the identity of
its file at the source (``model-sync.source``: its sha256 or ETag; for a layer of several files, a
sha256 over their paths, sizes and identities). :meth:`OciDestination.lookup` reads the manifest the
tag points to (once), and a file (a group) whose paths, layer size and identity match a layer there
whose blob the repository still has is not sent again: a layer's digest is known before streaming only
that way, since it hashes the tar header and padding as well as the file. So a rerun after a try that
pushed its manifest (then died before the registry recorded it), or an update of a model in which few
files changed, sends only what is new. A try killed before its manifest was pushed leaves its finished
blobs unreferenced (the registry's garbage collection removes them); the rerun sends them again.

A file of unknown size (http without Content-Length: rare) is spooled to ``storage_path`` first: its tar header
holds the size and comes before the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from job.config import OciLocation
from job.destinations.base import FileFeed
from job.errors import ConfigError, IntegrityError
from job.model import Committed, ObjectInfo, Uploaded, sha256_digest, source_identity
from job.oci.base_image import BaseImage, model_layers, resolve_base
from job.oci.client import OciClient
from job.oci.layout import MAX_LAYERS_LIMIT, plan_layers
from job.oci.modelcar import (
    LayerDescriptor,
    ModelLayer,
    PackedLayer,
    base_annotations,
    group_identity,
    modelcar_config,
    modelcar_index,
    modelcar_manifest,
)
from job.oci.protocol import OCI_INDEX, OCI_MANIFEST
from job.oci.reference import parse_reference
from job.oci.referrers import attach_referrer
from job.oci.upload import UploadSession
from job.retry import RetrySettings
from job.streams import aiter_file, describe, spool

log = logging.getLogger(__name__)

DEFAULT_BASE_IMAGE = "busybox:latest"
DEFAULT_MAX_LAYERS = 64
"""Layers of the whole image (base + model): see ``job.oci.layout`` and the README for why 64."""
CANCEL_TIMEOUT = 5.0
"""Seconds the DELETE of a broken upload session may take before the put's error is raised anyway."""


class OciDestination:
    """Push the model as a modelcar image to ``location.reference`` (see the module docstring)."""

    def __init__(
        self,
        location: OciLocation,
        *,
        storage_path: Path,
        max_connections: int = 16,
        retry: RetrySettings | None = None,
        max_layers: int = DEFAULT_MAX_LAYERS,
        reserved_layers: int = 0,
    ) -> None:
        if not 1 < max_layers <= MAX_LAYERS_LIMIT:
            raise ConfigError(f"the image's layer budget must be 2..{MAX_LAYERS_LIMIT}, got {max_layers}")
        self.max_layers = max_layers
        self.reserved_layers = reserved_layers
        """Layers kept free for files written after the model's (a signed run's ``model.sig``)."""
        self.location = location
        self.target = parse_reference(location.reference)
        if self.target.digest is not None or self.target.tag is None:
            raise ConfigError(f"destination image {location.reference!r}: push to a tag, not a digest")
        if self.target.tag == "latest":
            log.warning("destination tag is 'latest': KServe then pulls the modelcar on every pod start")
        self.base_ref = parse_reference(location.base_image or DEFAULT_BASE_IMAGE)
        self.storage_path = storage_path
        self.chunk_size = location.chunk_size
        self.client = OciClient.for_image(
            location, self.target, side="destination", max_connections=max_connections, retry=retry
        )
        self.same_registry = self.base_ref.api_host == self.target.api_host
        if self.same_registry:
            self.base_client = self.client
        else:
            # Another registry: its login from the docker config, if any; the destination's TLS settings.
            login = location.docker_config.lookup(self.base_ref.registry) if location.docker_config else None
            self.base_client = OciClient.for_image(
                location,
                self.base_ref,
                side="destination",
                login=(login.username, login.password) if login else (None, None),
                retry=retry,
            )
        self._base: BaseImage | None = None
        self._previous: dict[tuple[str, int], LayerDescriptor] | None = None
        self._previous_lock = asyncio.Lock()
        self._base_lock = asyncio.Lock()
        self._copy_task: asyncio.Task[None] | None = None
        self._sessions: set[UploadSession] = set()
        self.subject: dict[str, Any] | None = None
        """The descriptor of what ``commit`` pushed under the tag (the subject of referrers)."""

    @property
    def uri(self) -> str:
        return f"oci://{self.target.registry}/{self.target.repository}:{self.target.tag}"

    # --- the base image -------------------------------------------------------------------------

    async def _prepare(self) -> BaseImage:
        """Resolve the base once; start copying its blobs in the background. Re-raises a failed copy."""
        async with self._base_lock:
            if self._base is None:
                self._base = await resolve_base(self.base_client, self.base_ref, uri=self.uri)
                self._copy_task = asyncio.create_task(self._copy_base(self._base), name="oci-base-copy")
        if self._copy_task is not None and self._copy_task.done() and not self._copy_task.cancelled():
            error = self._copy_task.exception()
            if error is not None:
                raise error
        return self._base

    async def _copy_base(self, base: BaseImage) -> None:
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

    async def _previous_layers(self) -> dict[tuple[str, int], LayerDescriptor]:
        """The model layers of the manifest the tag points to now (an index: its first image), by their
        source annotation and size."""
        async with self._previous_lock:
            if self._previous is None:
                self._previous = await model_layers(self.client, self.target, uri=self.uri)
        return self._previous

    async def _found(
        self, source: str | None, layer: PackedLayer, paths: tuple[PurePosixPath, ...]
    ) -> LayerDescriptor | None:
        """The layer an earlier push holds for these files (same source identity, size and paths, for a
        layer that lists them), if the repository still has its blob."""
        if source is None:
            return None
        found = (await self._previous_layers()).get((source, layer.layer_size))
        if found is None or (found.paths and found.paths != paths):
            return None
        if not await self.client.blob_exists(self.target.repository, found.digest):
            return None
        return LayerDescriptor(found.digest, found.size, paths, source)

    async def lookup(self, obj: ObjectInfo) -> Uploaded | None:
        """The layer an earlier push holds for ``obj`` (same path, size and source identity), or None.

        The blob must still be in the repository (HEAD). The returned ``Uploaded`` carries the layer's
        digest and size, and the file's sha256 only when the source listed it.
        """
        if obj.size is None:
            return None
        found = await self._found(source_identity(obj), ModelLayer(obj.path, obj.size), (obj.path,))
        return None if found is None else _uploaded(obj, found, skipped=True)

    async def lookup_group(self, objs: Sequence[ObjectInfo]) -> list[Uploaded] | None:
        """:meth:`lookup` for a layer of several files: found when every file is unchanged."""
        layer = PackedLayer(_files(objs))
        found = await self._found(_group_source(objs), layer, tuple(o.path for o in objs))
        return None if found is None else [_uploaded(obj, found, skipped=True) for obj in objs]

    # --- the Destination protocol ---------------------------------------------------------------

    async def _budget(self) -> int:
        """Layers the model's files may take: the image's budget less the base image's and the reserved ones."""
        return self.max_layers - (await self._prepare()).most_layers - self.reserved_layers

    async def groups_ahead(self) -> int:
        """Half the layers go one file each as a one-pass source lists; the rest are planned together after."""
        await self.plan([], taken=1)  # no layer left for the files: refused now, before a byte moves
        return await self._budget() // 2

    async def plan(self, objects: Sequence[ObjectInfo], *, taken: int = 0) -> list[list[ObjectInfo]]:
        """The model's layers within the budget (``job.oci.layout``) less ``taken``; resolves the base image first."""
        base = await self._prepare()
        unknown = [[o] for o in objects if o.size is None]  # spooled, each alone (rare: http, no length)
        known = [o for o in objects if o.size is not None]
        budget = await self._budget() - len(unknown) - taken
        if (budget < 1 and known) or budget < 0:
            raise ConfigError(
                f"MODEL_SYNC_DESTINATION_OCI_MAX_LAYERS={self.max_layers}: the base image {base.reference} has "
                f"{base.most_layers} layers, which leaves no layer for the model's files; raise it (at most "
                f"{MAX_LAYERS_LIMIT}) or use a base image with fewer layers"
            )
        groups = [[known[i] for i in group] for group in plan_layers(_files(known), budget)] if known else []
        if len(groups) < len(known):
            log.info(
                "%d files in %d layers (+%d of the base image): MODEL_SYNC_DESTINATION_OCI_MAX_LAYERS=%d",
                len(objects), len(groups) + len(unknown), base.most_layers, self.max_layers,
            )  # fmt: skip
        return groups + unknown

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
        digest = await self._upload(layer.stream(data), layer.layer_size, f"uploading {obj.path}")
        pushed = LayerDescriptor(digest, layer.layer_size, (obj.path,), source_identity(obj))
        return _uploaded(obj, pushed, size=size)

    async def put_group(self, objs: Sequence[ObjectInfo], files: FileFeed) -> list[Uploaded]:
        """Stream several files as one tar layer, each file's bytes as the feed hands them over."""
        await self._prepare()
        layer = PackedLayer(_files(objs))

        async def parts() -> AsyncIterator[AsyncIterator[bytes]]:
            for expected in objs:
                obj, data = await anext(files)
                if obj.path != expected.path:
                    raise IntegrityError(f"layer for {expected.path}: the engine handed over {obj.path} instead")
                yield data

        what = f"uploading {len(objs)} files ({objs[0].path} ...)"
        digest = await self._upload(layer.stream_files(parts()), layer.layer_size, what)
        pushed = LayerDescriptor(digest, layer.layer_size, tuple(o.path for o in objs), _group_source(objs))
        return [_uploaded(obj, pushed) for obj in objs]

    async def _upload(self, body: AsyncIterator[bytes], size: int, what: str) -> str:
        """Push one layer in one upload session; its digest. A failed session is cancelled."""
        session = await self.client.start_upload(self.target.repository)
        assert session is not None
        self._sessions.add(session)
        try:
            digest = await self.client.upload(
                session, body, size, chunk_size=self.chunk_size, what=f"{what} to {self.target.name}"
            )
        except Exception:
            # Cancelled here rather than in abort(): the engine may send the files again, in a new session.
            # (On cancellation the session is left to abort(), which runs once within the stop budget.)
            self._sessions.discard(session)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_TIMEOUT):
                    await self.client.cancel_upload(session)
            raise
        self._sessions.discard(session)
        return digest

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
        layers = list({id(layer): layer for layer in map(self._layer_of, uploaded)}.values())  # a layer per group
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
                self.subject = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest)}
        if base.is_index:
            index = modelcar_index(base.top.json(), pushed, annotations)
            digest = await self.client.put_manifest(repo, tag, index, OCI_INDEX)
            self.subject = {"mediaType": OCI_INDEX, "digest": digest, "size": len(index)}
        log.info("pushed %s (%s), %d model layers", self.uri, digest, len(layers))
        return Committed(uri=self.uri, digest=digest)

    async def attach(self, artifact_type: str, blob: bytes, title: str) -> str:
        """After ``commit``: push ``blob`` as an OCI referrer of the pushed image (by digest); its digest."""
        assert self.subject is not None, "attach() follows commit()"
        return await attach_referrer(self.client, self.target.repository, self.subject, artifact_type, blob, title)

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


def _files(objs: Sequence[ObjectInfo]) -> list[tuple[PurePosixPath, int]]:
    """(path, size) of files whose size is known (the plan leaves the others alone in their layers)."""
    return [(o.path, o.size) for o in objs if o.size is not None]


def _group_source(objs: Sequence[ObjectInfo]) -> str | None:
    return group_identity([(o.path, o.size or 0, source_identity(o)) for o in objs])


def _uploaded(obj: ObjectInfo, layer: LayerDescriptor, *, size: int | None = None, skipped: bool = False) -> Uploaded:
    """A file in ``layer`` (``size``: when the listing did not tell); its sha256 only when found from an
    earlier push and listed by the source (for a file sent, the engine adds the sha256 it hashed)."""
    sha256 = obj.digest.lower() if skipped and obj.digest else None
    size = obj.size if size is None else size
    assert size is not None
    return Uploaded(obj=obj, size=size, sha256=sha256, detail=layer, skipped=skipped)
