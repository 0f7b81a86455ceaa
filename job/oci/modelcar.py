"""What a KServe modelcar is made of: tar layers holding the model files, and the base image's config
and manifests with those layers added.

**Layers.** A model file gets an *uncompressed* tar layer (``application/vnd.oci.image.layer.v1.tar``)
of its own, or shares one with other files when the image would otherwise exceed its layer budget
(``job.oci.layout``). Uncompressed, a layer's digest is its ``diff_id`` and the registry gets the bytes
as they stream (no gzip pass, which is what made skopeo the slow stage of the upstream pipeline). For
each file, in order, a layer holds:

* a directory entry for ``models/`` and for every parent directory of the file that this layer has not
  written yet (mode 0755), so each layer is self-contained and nested folders stay nested (olot
  flattened them to the basename);
* ``models/<relative path>`` (mode 0644: KServe may run the sidecar under any uid);
* the file's bytes and zero padding to a 512-byte block;

and then the 1024-byte end-of-archive marker. One file always gives the same bytes as before layers
could be shared, so digests pushed by earlier versions are found again.

Every header has uid/gid 0, empty uname/gname and the fixed mtime :data:`LAYER_MTIME`, and is written
by ``tarfile.TarInfo.tobuf`` in PAX format (a path over 100 bytes, a non-ASCII name or a file of
8 GiB or more gets a PAX extended header). So the same file always gives the same layer digest
(olot kept each download's mtime), and the layer size is known before the first byte:
``len(headers) + sizes + paddings + 1024`` (:attr:`PackedLayer.layer_size`), which lets the upload be
one PATCH with ``Content-Length``.

**Config and manifests.** :func:`modelcar_config` appends each layer's diff_id and one history entry;
:func:`modelcar_manifest` appends the layer descriptors (see :class:`LayerDescriptor` for their
annotations) and writes OCI media types throughout,
converting a Docker schema2 base (same blob digests); :func:`modelcar_index` re-points a multi-arch
index at the new per-platform manifests. JSON is written compactly in the base's key order, with no
timestamp of the run, so pushing the same model twice gives the same manifest digest.
"""

from __future__ import annotations

import copy
import json
import tarfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from job.errors import IntegrityError
from job.model import sha256_digest
from job.oci.protocol import (
    ANNOTATION_TITLE,
    DOCKER_CONFIG,
    DOCKER_LAYER_TAR_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_TAR,
    OCI_LAYER_TAR_GZIP,
    OCI_MANIFEST,
)

__all__ = [
    "LAYER_MTIME",
    "MODELS_DIR",
    "LayerDescriptor",
    "ModelLayer",
    "PackedLayer",
    "canonical_json",
    "group_identity",
    "modelcar_config",
    "modelcar_index",
    "modelcar_manifest",
    "oci_media_type",
]

MODELS_DIR = "models"
"""Where KServe looks: ``/models`` in the image (``/mnt/models`` in the serving container)."""
LAYER_MTIME = 946684800
"""2000-01-01T00:00:00Z, for every tar entry: reproducible, and not the epoch that tar warns about."""
HISTORY_CREATED = "2000-01-01T00:00:00Z"
BLOCK = 512
END_OF_ARCHIVE = 2 * BLOCK
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
ANNOTATION_SOURCE = "model-sync.source"
"""On a model layer: the identity of its file(s) at the source (a sha256, or an ETag), for reruns."""
ANNOTATION_FILES = "model-sync.files"
"""On a layer of several files: their paths under ``models/``, as a JSON array."""
MAX_FILE_LISTS = 1024 * 1024
"""Bytes of file lists a manifest may carry; beyond, the lists are left out (registries and runtimes
refuse manifests over 4 MiB)."""

# Docker schema2 media types and their OCI names (same bytes, same digests).
_TO_OCI = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    "application/vnd.docker.distribution.manifest.list.v2+json": OCI_INDEX,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER_TAR_GZIP: OCI_LAYER_TAR_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar": OCI_LAYER_TAR,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}


def oci_media_type(media_type: str) -> str:
    """The OCI name of a Docker schema2 media type; OCI (and unknown) types unchanged."""
    return _TO_OCI.get(media_type, media_type)


def _entry(name: str, kind: bytes, mode: int, size: int = 0) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = LAYER_MTIME
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _parents(path: PurePosixPath) -> list[str]:
    """``models/`` and the directories above ``path`` inside it, outermost first."""
    return [MODELS_DIR, *(f"{MODELS_DIR}/{p.as_posix()}" for p in reversed(path.parents[:-1]))]


class PackedLayer:
    """The tar layer of one or more model files, in the order given: for each file the directory entries
    this layer has not written yet, its header, its bytes and padding; then the end-of-archive marker."""

    __slots__ = ("files", "headers")

    def __init__(self, files: Sequence[tuple[PurePosixPath, int]]) -> None:
        """``files``: (path relative to ``models/``, already validated; size in bytes), at least one."""
        if not files:
            raise ValueError("a layer holds at least one file")
        written: set[str] = set()
        headers = []
        for path, size in files:
            if size < 0:
                raise ValueError(f"negative size {size} for {path}")
            dirs = [d for d in _parents(path) if d not in written]
            written.update(dirs)
            headers.append(
                b"".join(_entry(d + "/", tarfile.DIRTYPE, 0o755) for d in dirs)
                + _entry(f"{MODELS_DIR}/{path.as_posix()}", tarfile.REGTYPE, 0o644, size)
            )
        self.files = tuple(files)
        self.headers = tuple(headers)

    @property
    def layer_size(self) -> int:
        """Bytes of the whole layer: headers + files + padding + end-of-archive."""
        return (
            sum(len(h) + size + -size % BLOCK for h, (_, size) in zip(self.headers, self.files, strict=True))
            + END_OF_ARCHIVE
        )

    async def stream_files(self, parts: AsyncIterator[AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
        """Yield the layer, taking each file's bytes from the next stream of ``parts``, as they come.

        Raises :class:`IntegrityError` if a stream does not hold exactly its file's size, or if ``parts``
        ends early (the engine's streams raise first on a short read; this guards any other caller).
        """
        for header, (path, size) in zip(self.headers, self.files, strict=True):
            data = await anext(parts, None)
            if data is None:
                raise IntegrityError(f"layer for {path}: no stream for it")
            yield header
            seen = 0
            async for chunk in data:
                seen += len(chunk)
                if seen > size:
                    raise IntegrityError(f"layer for {path}: the file holds more than the {size} bytes listed")
                yield chunk
            if seen != size:
                raise IntegrityError(f"layer for {path}: the file ended after {seen} of {size} bytes")
            if -size % BLOCK:
                yield bytes(-size % BLOCK)
        yield bytes(END_OF_ARCHIVE)


class ModelLayer(PackedLayer):
    """The tar layer of one model file (the usual case: a file per layer)."""

    __slots__ = ()

    def __init__(self, path: PurePosixPath, size: int) -> None:
        """``path`` is the file's path relative to ``models/`` (already validated); ``size`` its bytes."""
        super().__init__([(path, size)])

    @property
    def path(self) -> PurePosixPath:
        return self.files[0][0]

    @property
    def size(self) -> int:
        return self.files[0][1]

    @property
    def header(self) -> bytes:
        return self.headers[0]

    @property
    def padding(self) -> int:
        """Zero bytes after the file's bytes, up to the next 512-byte block."""
        return -self.size % BLOCK

    async def stream(self, data: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Yield the layer: the header, ``data``'s chunks as they are, then padding and the end marker."""

        async def one() -> AsyncIterator[AsyncIterator[bytes]]:
            yield data

        async for chunk in self.stream_files(one()):
            yield chunk


@dataclass(frozen=True, slots=True)
class LayerDescriptor:
    """A pushed model layer: digest (= diff_id, the tar is uncompressed), size, and the files it holds.

    A layer of one file is annotated ``org.opencontainers.image.title`` = its path (what ORAS and
    other OCI tooling read as a file name); a layer of several files has no title (it is not one file)
    and lists its paths, as a JSON array, in :data:`ANNOTATION_FILES` (``files_listed=False`` leaves the
    list out: :func:`modelcar_manifest` does so when the lists would make the manifest too big).

    ``source`` identifies the contents at their source (``job.model.source_identity`` for one file,
    :func:`job.oci.modelcar.group_identity` for several), annotated as :data:`ANNOTATION_SOURCE` so that
    a rerun can find, in the manifest an earlier try pushed under the tag, the layer it would push for
    unchanged files, and skip sending it.
    """

    digest: str
    size: int
    paths: tuple[PurePosixPath, ...]
    source: str | None = None

    @property
    def title(self) -> str | None:
        """The single file's path, or None for a layer of several files."""
        return self.paths[0].as_posix() if len(self.paths) == 1 else None

    def to_json(self, *, files_listed: bool = True) -> dict[str, Any]:
        annotations = {}
        if self.title is not None:
            annotations[ANNOTATION_TITLE] = self.title
        elif files_listed:
            annotations[ANNOTATION_FILES] = json.dumps([p.as_posix() for p in self.paths], separators=(",", ":"))
        if self.source:
            annotations[ANNOTATION_SOURCE] = self.source
        return {"mediaType": OCI_LAYER_TAR, "digest": self.digest, "size": self.size, "annotations": annotations}

    @classmethod
    def from_json(cls, descriptor: Mapping[str, Any]) -> LayerDescriptor | None:
        """The model layer a manifest's layer descriptor describes, or None for any other layer.

        A layer of several files whose list was left out comes back with no paths (its source
        annotation still identifies it)."""
        annotations = descriptor.get("annotations") or {}
        digest, size = descriptor.get("digest"), descriptor.get("size")
        if descriptor.get("mediaType") != OCI_LAYER_TAR or not isinstance(digest, str) or not isinstance(size, int):
            return None
        source = annotations.get(ANNOTATION_SOURCE)
        source = source if isinstance(source, str) else None
        title = annotations.get(ANNOTATION_TITLE)
        if isinstance(title, str):
            return cls(digest, size, (PurePosixPath(title),), source)
        if source is None:
            return None
        try:
            listed = json.loads(annotations.get(ANNOTATION_FILES, "[]"))
        except (TypeError, ValueError):
            listed = []
        paths = tuple(PurePosixPath(p) for p in listed if isinstance(p, str)) if isinstance(listed, list) else ()
        return cls(digest, size, paths, source)


def group_identity(members: Sequence[tuple[PurePosixPath, int, str | None]]) -> str | None:
    """The identity of a layer of several files: a sha256 over their (path, size, source identity), in
    order; None when a file has no identity (its layer is then always sent)."""
    if any(identity is None for _, _, identity in members):
        return None
    listed = [[path.as_posix(), size, identity] for path, size, identity in members]
    return sha256_digest(canonical_json({"files": listed}))


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Compact JSON in the document's own key order: the same document always gives the same bytes."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def modelcar_config(base_config: Mapping[str, Any], layers: Sequence[LayerDescriptor]) -> bytes:
    """The base image config plus one diff_id and one history entry per layer, in order."""
    config = copy.deepcopy(dict(base_config))
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise ValueError("the base image config has no rootfs.diff_ids")
    rootfs["diff_ids"] = [*rootfs["diff_ids"], *(layer.digest for layer in layers)]
    history = config.get("history")
    config["history"] = [*(history if isinstance(history, list) else [])] + [
        {"created": HISTORY_CREATED, "created_by": _created_by(layer)} for layer in layers
    ]
    return canonical_json(config)


def _created_by(layer: LayerDescriptor) -> str:
    if layer.title is not None:
        return f"model-sync: {MODELS_DIR}/{layer.title}"
    if not layer.paths:
        return f"model-sync: files under {MODELS_DIR}/"
    return f"model-sync: {MODELS_DIR}/{layer.paths[0].as_posix()} and {len(layer.paths) - 1} more files"


def _oci_descriptor(descriptor: Mapping[str, Any]) -> dict[str, Any]:
    converted = dict(descriptor)
    converted["mediaType"] = oci_media_type(str(descriptor.get("mediaType", "")))
    return converted


def modelcar_manifest(
    base_manifest: Mapping[str, Any],
    config_digest: str,
    config_size: int,
    layers: Sequence[LayerDescriptor],
    annotations: Mapping[str, str],
) -> bytes:
    """An OCI image manifest: the base's layers (as OCI descriptors), then the model layers."""
    base_layers = base_manifest.get("layers")
    if not isinstance(base_layers, list):
        raise ValueError("the base image manifest has no layers")
    listed = sum(len(str(p)) + 3 for layer in layers if layer.title is None for p in layer.paths) <= MAX_FILE_LISTS
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [_oci_descriptor(d) for d in base_layers] + [layer.to_json(files_listed=listed) for layer in layers],
    }
    merged = {**(base_manifest.get("annotations") or {}), **annotations}
    if merged:
        manifest["annotations"] = merged
    return canonical_json(manifest)


def modelcar_index(
    base_index: Mapping[str, Any],
    manifests: Sequence[tuple[Mapping[str, Any], str, int]],
    annotations: Mapping[str, str],
) -> bytes:
    """An OCI index listing the new per-platform manifests: ``(base entry, new digest, new size)``.

    Each entry keeps its platform (and annotations); entries of the base index left out of
    ``manifests`` (attestations, unknown platforms) are left out of the new index, as they describe
    images that the new index no longer holds.
    """
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**entry, "mediaType": OCI_MANIFEST, "digest": digest, "size": size} for entry, digest, size in manifests
        ],
    }
    merged = {**(base_index.get("annotations") or {}), **annotations}
    if merged:
        index["annotations"] = merged
    return canonical_json(index)


def base_annotations(base_name: str, base_digest: str) -> dict[str, str]:
    """The OCI annotations naming the base image (``org.opencontainers.image.base.*``)."""
    return {ANNOTATION_BASE_NAME: base_name, ANNOTATION_BASE_DIGEST: base_digest}
