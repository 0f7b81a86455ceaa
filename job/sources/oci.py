"""Source ``oci``: the model in an image (a KServe modelcar) or an ORAS artifact, read with ranged GETs.

``list()`` resolves ``config.source.reference`` (an index picks ``platform``, default
``linux/<this machine>``) and tells the two kinds apart:

* **Image**: the config is an image config and every layer is a tar layer. The files are those under
  ``models/`` of the flattened layers (:class:`job.formats.tree.ModelTree`: later layers win, whiteouts and
  links handled), named relative to ``models/``. Uncompressed layers are listed by reading their tar
  headers with small ranged GETs (:class:`job.formats.tar.RangedInput`), so a 10 GiB modelcar lists in
  kilobytes; gzip layers below them are streamed and decompressed. An image whose top layer is gzip (what
  ``docker push`` and ``skopeo copy --dest-compress`` write) is read once in all, from its top layer down
  (:mod:`job.formats.layers`): each file listed as its layer's pass reaches it and served from that same pass
  (the source is ``one_pass``). A layer labelled tar starting with the gzip magic is read as gzip. zstd is
  refused.
  ``ObjectInfo.digest`` stays None: a layer digest is not the file's digest.
* **ORAS artifact** (anything else): each layer with an ``org.opencontainers.image.title`` annotation is
  one file named by it (checked by ``safe_relative_path``), with the layer's size and digest, which *is*
  the file's digest (the engine verifies it). A layer marked ``io.deis.oras.content.unpack`` (oras-go)
  or typed tar+gzip (oras-py) is a directory packed by ``oras push``: its tar(.gz) is listed like an
  image layer, rooted at the title.

``open(obj, offset)``: an ORAS file is a ranged GET of its blob (its digest listed: the engine checks it). A tar
layer's files are served from one shared pass over the whole blob (:class:`~job.formats.shared_pass.SharedPass`),
inflated when gzip: an image built with ``COPY models/ /models/`` holds the whole model in one layer, which is then
downloaded once for all its files rather than once per file. The pass reads its blob to the end and checks it
against the layer's digest before the last file's stream ends (for layers read once: before the listing
ends), so no model is committed from unverified bytes (a resume at an offset restarts the pass). Image files are
listed in layer and tar order (path order within that; top layer first when read top-down), the order the passes
meet them. Listing checks too: digests must be ``algorithm:hex``, each layer's stored size (a HEAD) must be
the manifest's, a gzip layer's listing pass hashes the whole blob, and a plain tar whose end-of-archive marker
comes more than 20 KiB before its blob's end is refused.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from job.config import OciLocation
from job.errors import IntegrityError, SourceError, SourceNotFound
from job.formats.gzip import GZIP_MAGIC, inflate
from job.formats.layers import StreamedLayers
from job.formats.shared_pass import PassInput, SharedPass
from job.formats.tar import RangedInput, StreamInput, TarEntry, scan_tar
from job.formats.tree import MAX_FILES, ModelTree
from job.model import ObjectInfo, safe_relative_path
from job.oci.client import OciClient
from job.oci.protocol import ANNOTATION_TITLE, DOCKER_CONFIG, INDEX_TYPES, OCI_CONFIG, OCI_LAYER_TAR_GZIP
from job.oci.pull import default_platform, layer_compression, pick_platform, verified_blob
from job.oci.reference import checked_digest, parse_reference
from job.readahead import ReadAhead
from job.retry import RetrySettings

log = logging.getLogger(__name__)

ANNOTATION_UNPACK = "io.deis.oras.content.unpack"
_PARALLEL_SCANS = 8
_MAX_TAR_TAIL = 20 * 1024
"""Bytes a layer's tar may hold after its end-of-archive marker (tar pads to 10 KiB records at most)."""


@dataclass(frozen=True, slots=True)
class FileLocation:
    """Where a file's bytes are: layer ``layer`` (its index), ``offset`` in the uncompressed tar, ``size``."""

    layer: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class _Layer:
    digest: str
    size: int
    compression: str  # "tar", "gzip", or "blob" (an ORAS file: the blob is the file)


class OciSource:
    """Read a model from an image or ORAS artifact (see the module docstring)."""

    seekable = True
    """``open(obj, offset=n)`` is a ranged GET (a tar layer: its pass restarted and skipped to ``n``), and a
    blob is addressed by its digest, so a resumed read is the same bytes: the engine resumes broken reads."""
    one_pass = False

    def __init__(
        self,
        location: OciLocation,
        *,
        max_connections: int = 16,
        retry: RetrySettings | None = None,
        max_files: int = MAX_FILES,
        read_ahead: ReadAhead | None = None,
    ) -> None:
        self.location = location
        self.max_files = max_files
        self.ref = parse_reference(location.reference)
        self.platform = location.platform or default_platform()
        self.uri = f"oci://{self.ref}"
        self.client = OciClient.for_image(
            location, self.ref, side="source", max_connections=max_connections, retry=retry
        )
        self.client.read_ahead = read_ahead
        self._layers: builtins.list[_Layer] = []
        self._files: dict[PurePosixPath, FileLocation] = {}
        self._passes: dict[int, SharedPass] = {}
        """One shared pass per tar layer, made when a file of it is first opened."""

    # --- resolving ------------------------------------------------------------------------------

    async def _resolve(self) -> dict[str, Any]:
        repo = self.ref.repository
        manifest = await self.client.get_manifest(repo, self.ref.reference)
        for _ in range(3):  # an index of indexes is allowed, to a bounded depth
            document = manifest.json()
            if manifest.media_type not in INDEX_TYPES and document.get("mediaType") not in INDEX_TYPES:
                return document
            manifest = await self.client.get_manifest(repo, pick_platform(document, self.platform, self.uri))
        raise SourceError(f"reading {self.uri}: indexes nested too deep", uri=self.uri)

    # --- listing --------------------------------------------------------------------------------

    async def list(self) -> AsyncIterator[ObjectInfo]:
        """Yield the model's files (see the module docstring)."""
        self._layers, self._files, self.one_pass = [], {}, False
        manifest = await self._resolve()
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not layers:
            raise SourceNotFound(f"reading {self.uri}: the manifest has no layers", uri=self.uri)
        config_type = (manifest.get("config") or {}).get("mediaType")
        is_image = config_type in (OCI_CONFIG, DOCKER_CONFIG) and all(
            layer_compression(str(d.get("mediaType"))) for d in layers
        )
        listed = 0
        if is_image and layer_compression(str(layers[-1].get("mediaType"))) == "gzip":
            async for obj in self._stream_image(layers):
                listed += 1
                yield obj
        else:
            for obj in await (self._list_image(layers) if is_image else self._list_artifact(layers)):
                listed += 1
                yield obj
        if not listed:
            where = "under /models" if is_image else "in its layers (none has a title annotation)"
            raise SourceNotFound(f"reading {self.uri}: no files {where}", uri=self.uri)

    def _add_layer(self, descriptor: dict[str, Any], compression: str) -> int:
        what = f"reading {self.uri}: a layer"
        digest = checked_digest(descriptor.get("digest"), what)
        size = descriptor.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise SourceError(f"{what} ({digest}) has no valid size: {str(size)[:40]!r}", uri=self.uri)
        self._layers.append(_Layer(digest, size, compression))
        return len(self._layers) - 1

    async def _list_artifact(self, layers: builtins.list[dict[str, Any]]) -> builtins.list[ObjectInfo]:
        objects: builtins.list[ObjectInfo] = []
        for descriptor in layers:
            annotations = descriptor.get("annotations") or {}
            title = annotations.get(ANNOTATION_TITLE)
            if not title:
                log.warning(
                    "%s: skipping layer %s, which has no %s annotation",
                    self.uri,
                    descriptor.get("digest"),
                    ANNOTATION_TITLE,
                )
                continue
            path = safe_relative_path(str(title), what=f"ORAS layer title in {self.uri}")
            # A directory packed by `oras push`: oras-go marks it with the unpack annotation, oras-py
            # only with the tar+gzip media type (its pull extracts every layer of that type).
            unpack = str(annotations.get(ANNOTATION_UNPACK, "")).lower() == "true"
            if unpack or descriptor.get("mediaType") == OCI_LAYER_TAR_GZIP:
                tree: ModelTree[FileLocation] = ModelTree(
                    path.as_posix(), what=f"reading {self.uri}", max_files=self.max_files
                )
                compression = layer_compression(str(descriptor.get("mediaType"))) or "gzip"
                index = self._add_layer(descriptor, compression)
                tree.apply((m, FileLocation(index, m.offset, m.size)) for m in await self._scan(index))
                for f in tree.files():
                    self._files[path / f.path] = f.payload
                    objects.append(ObjectInfo(path=path / f.path, size=f.payload.size, etag=self._etag(f.payload)))
                continue
            index = self._add_layer(descriptor, "blob")
            blob = self._layers[index]  # read whole, and checked against its digest by the engine as it streams
            self._files[path] = FileLocation(index, 0, blob.size)
            objects.append(ObjectInfo(path=path, size=blob.size, digest=blob.digest))
        return objects

    def _image_layers(self, layers: builtins.list[dict[str, Any]]) -> builtins.list[int]:
        indexes = []
        for descriptor in layers:
            compression = layer_compression(str(descriptor.get("mediaType")))
            if compression == "zstd":
                raise SourceError(
                    f"reading {self.uri}: zstd layers are not supported (layer {descriptor['digest']})", uri=self.uri
                )
            indexes.append(self._add_layer(descriptor, compression or "tar"))
        return indexes

    async def _tree(self, indexes: builtins.list[int]) -> ModelTree[FileLocation]:
        """The model tree of these layers: scanned in parallel (bounded), applied in order."""
        what = f"reading {self.uri}"
        tree: ModelTree[FileLocation] = ModelTree(
            "models", what=what, whiteouts=True, absolute_links=True, max_files=self.max_files
        )
        for index, members in zip(indexes, await self._scan_all(indexes), strict=True):
            tree.apply((m, FileLocation(index, m.offset, m.size)) for m in members)
        return tree

    async def _stream_image(self, layers: builtins.list[dict[str, Any]]) -> AsyncGenerator[ObjectInfo, None]:
        """An image whose top layer is gzip (``docker push``, ``skopeo copy --dest-compress``): every layer read once,
        from the top layer down (:class:`~job.formats.layers.StreamedLayers`), each file listed as its layer's pass
        reaches it and served from that pass (``one_pass``); then the files the flattened image holds beyond those
        (links, hard links into a lower layer), served by later passes. As for a tar.gz at a URL, a file a layer
        lists twice is listed again, and one its layer then turns into a directory is refused."""
        indexes = self._image_layers(layers)
        await asyncio.gather(*(self._check_size(self._layers[i]) for i in indexes))
        tree: ModelTree[FileLocation] = ModelTree(
            "models", what=f"reading {self.uri}", whiteouts=True, absolute_links=True, max_files=self.max_files
        )
        streamed = StreamedLayers(tree)
        self.one_pass = True
        for index in reversed(indexes):
            layer = self._layers[index]
            shared = self._passes[index] = SharedPass(
                functools.partial(self._layer_stream, layer, sniff=True), self.uri, f"layer {layer.digest}"
            )
            tar = PassInput(shared, "the next tar header")
            streamed.begin_layer()
            async for m in scan_tar(tar, f"reading {self.uri} layer {layer.digest}"):
                location = FileLocation(index, m.offset, m.size)
                if (path := streamed.add(m, location)) is not None:
                    self._files[path] = location
                    yield ObjectInfo(path=path, size=m.size, etag=self._etag(location))
            await shared.read_to_end(tar.position, "the end of the layer")  # its digest is checked there
            await shared.close()
        rest = streamed.rest()
        kept = [*streamed.listed.values(), *(f.payload for f in rest)]
        for index in indexes:  # a later pass (an alias, a retry) reads to the end and checks the digest again
            if ends := [f.offset + f.size for f in kept if f.layer == index]:
                self._passes[index].set_end(max(ends), read_to_the_end=True)
        for f in sorted(rest, key=lambda f: (f.payload.layer, f.payload.offset, f.path)):
            self._files[f.path] = f.payload
            yield ObjectInfo(path=f.path, size=f.payload.size, etag=self._etag(f.payload))

    async def _scan_all(self, indexes: builtins.list[int]) -> builtins.list[builtins.list[TarEntry]]:
        """The layers' tar entries, scanned in parallel (bounded)."""
        limit = asyncio.Semaphore(_PARALLEL_SCANS)

        async def scan(index: int) -> builtins.list[TarEntry]:
            async with limit:
                return await self._scan(index)

        tasks = [asyncio.create_task(scan(i)) for i in indexes]
        try:
            return await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _list_image(self, layers: builtins.list[dict[str, Any]]) -> builtins.list[ObjectInfo]:
        indexes = self._image_layers(layers)
        tree = await self._tree(indexes)
        files = {f.path: f.payload for f in tree.files()}
        # Layer and tar order (path order for aliases of one member): the order a shared pass meets them.
        self._files = dict(sorted(files.items(), key=lambda item: (item[1].layer, item[1].offset, item[0])))
        return [
            ObjectInfo(path=path, size=location.size, etag=self._etag(location))
            for path, location in self._files.items()
        ]

    def _etag(self, location: FileLocation) -> str:
        """A file's identity inside a content-addressed layer: the layer's digest and the file's offset. A
        destination stores it, so that a rerun (a restarted initializer) skips the files already there."""
        return f'"{self._layers[location.layer].digest}@{location.offset}"'

    async def _scan(self, index: int) -> builtins.list[TarEntry]:
        layer = self._layers[index]
        what = f"reading {self.uri} layer {layer.digest}"
        repo = self.ref.repository
        await self._check_size(layer)
        if layer.compression == "tar":
            ranged = RangedInput(
                lambda start, length: self.client.read_blob(repo, layer.digest, start=start, length=length),
                layer.size,
                what,
            )
            if (await ranged.read(2)).startswith(GZIP_MAGIC):  # labelled tar, but gzip: read it as gzip
                self._layers[index] = layer = _Layer(layer.digest, layer.size, "gzip")
            else:
                ranged.position = 0
                members = [m async for m in scan_tar(ranged, what)]
                log.debug("%s: %d tar entries in %d ranged reads", what, len(members), ranged.requests)
                if layer.size - ranged.position > _MAX_TAR_TAIL:  # the tar "ended" long before its blob does
                    raise IntegrityError(
                        f"{what}: its tar ends at byte {ranged.position} of {layer.size}: the registry sent other bytes"
                    )
                return members
        async with self._layer_stream(layer) as plain:
            members = [m async for m in scan_tar(StreamInput(plain, what), what)]
            async for _ in plain:  # the rest (end blocks, gzip trailer): the digest covers every byte
                pass
            return members

    async def _check_size(self, layer: _Layer) -> None:
        stored = await self.client.blob_size(self.ref.repository, layer.digest)
        if stored is not None and stored != layer.size:  # a size that is too small would hide files
            what = f"reading {self.uri} layer {layer.digest}"
            raise IntegrityError(f"{what}: the registry holds {stored} bytes, the manifest says {layer.size}")

    # --- reading --------------------------------------------------------------------------------

    @asynccontextmanager
    async def open(self, obj: ObjectInfo, *, offset: int = 0) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream one listed file from ``offset``."""
        location = self._files.get(obj.path)
        if location is None:
            raise SourceNotFound(f"reading {obj.path} from {self.uri}: not listed", uri=self.uri, path=str(obj.path))
        if not 0 <= offset <= location.size:
            raise SourceError(f"reading {obj.path} from {self.uri}: offset {offset} is past its end", uri=self.uri)
        layer = self._layers[location.layer]
        what = f"reading {obj.path} from {self.uri}"
        repo = self.ref.repository
        if layer.compression == "blob":  # an ORAS file: the whole blob, its digest listed and checked by the engine
            start, end = location.offset + offset, location.offset + location.size
            if start == end:
                yield _empty()
                return
            async with self.client.open_blob(
                repo, layer.digest, start=start, end=end, size=layer.size, what=what
            ) as body:
                yield body
            return
        # A tar layer, plain or gzip: its files are served by one pass over the whole blob, which checks every
        # byte against the layer's digest (a resume at an offset restarts the pass, so it is checked too).
        shared = self._passes.get(location.layer)
        if shared is None:
            end = max(f.offset + f.size for f in self._files.values() if f.layer == location.layer)
            shared = self._passes[location.layer] = SharedPass(
                lambda: self._layer_stream(layer), self.uri, f"layer {layer.digest}", end=end, read_to_the_end=True
            )
        async with shared.open(location.offset + offset, location.size - offset, str(obj.path)) as chunks:
            yield chunks

    @asynccontextmanager
    async def _layer_stream(self, layer: _Layer, *, sniff: bool = False) -> AsyncIterator[AsyncIterator[bytes]]:
        """A tar layer's blob from its start, checked against its digest at its end, inflated if gzip (with
        ``sniff``, also if it starts with gzip's magic)."""
        what = f"reading {self.uri} layer {layer.digest}"
        async with (
            self.client.open_blob(self.ref.repository, layer.digest, size=layer.size, what=what) as body,
            aclosing(verified_blob(body, layer.digest, layer.size, what)) as checked,
        ):
            labelled_tar = layer.compression != "gzip"
            if labelled_tar and not sniff:
                yield checked
                return
            # sniff: a layer labelled tar may be gzip (a listing by ranged reads has looked already)
            async with aclosing(inflate(checked, what, plain_passes=labelled_tar)) as plain:
                yield plain

    async def close(self) -> None:
        """Close the shared passes and the registry connections."""
        for shared in self._passes.values():
            await shared.close()
        await self.client.aclose()


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
