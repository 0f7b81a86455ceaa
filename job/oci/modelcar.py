"""What a KServe modelcar is made of: one tar layer per model file, and the base image's config and
manifests with those layers added.

**Layers.** Each model file becomes one *uncompressed* tar layer (``application/vnd.oci.image.layer.v1.tar``),
so its digest is its ``diff_id`` and the registry gets the bytes as they stream (no gzip pass, which
is what made skopeo the slow stage of the upstream pipeline). A layer holds, in this order:

* a directory entry for ``models/`` and for every parent directory of the file (mode 0755), so each
  layer is self-contained and nested folders stay nested (olot flattened them to the basename);
* ``models/<relative path>`` (mode 0644: KServe may run the sidecar under any uid);
* the file's bytes, zero padding to a 512-byte block, and the 1024-byte end-of-archive marker.

Every header has uid/gid 0, empty uname/gname and the fixed mtime :data:`LAYER_MTIME`, and is written
by ``tarfile.TarInfo.tobuf`` in PAX format (a path over 100 bytes, a non-ASCII name or a file of
8 GiB or more gets a PAX extended header). So the same file always gives the same layer digest
(olot kept each download's mtime), and the layer size is known before the first byte:
``len(header) + size + padding + 1024`` (:attr:`ModelLayer.layer_size`), which lets the upload be
one PATCH with ``Content-Length``.

**Config and manifests.** :func:`modelcar_config` appends each layer's diff_id and one history entry;
:func:`modelcar_manifest` appends the layer descriptors (annotated with
``org.opencontainers.image.title`` = the relative path) and writes OCI media types throughout,
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
    "canonical_json",
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
"""On a model layer: the file's identity at its source (its sha256, or its ETag), for reruns."""

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


class ModelLayer:
    """The tar layer of one model file: its header bytes, and a stream that wraps the file's bytes."""

    __slots__ = ("header", "path", "size")

    def __init__(self, path: PurePosixPath, size: int) -> None:
        """``path`` is the file's path relative to ``models/`` (already validated); ``size`` its bytes."""
        if size < 0:
            raise ValueError(f"negative size {size} for {path}")
        self.path = path
        self.size = size
        parents = [MODELS_DIR, *(f"{MODELS_DIR}/{p.as_posix()}" for p in reversed(path.parents[:-1]))]
        self.header = b"".join(_entry(d + "/", tarfile.DIRTYPE, 0o755) for d in parents) + _entry(
            f"{MODELS_DIR}/{path.as_posix()}", tarfile.REGTYPE, 0o644, size
        )

    @property
    def padding(self) -> int:
        """Zero bytes after the file's bytes, up to the next 512-byte block."""
        return -self.size % BLOCK

    @property
    def layer_size(self) -> int:
        """Bytes of the whole layer: header + file + padding + end-of-archive."""
        return len(self.header) + self.size + self.padding + END_OF_ARCHIVE

    async def stream(self, data: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Yield the layer: the header, ``data``'s chunks as they are, then padding and the end marker.

        Raises :class:`IntegrityError` if ``data`` does not hold exactly ``size`` bytes (the engine's
        stream raises first on a short read; this guards any other caller).
        """
        yield self.header
        seen = 0
        async for chunk in data:
            seen += len(chunk)
            if seen > self.size:
                raise IntegrityError(f"layer for {self.path}: the file holds more than the {self.size} bytes listed")
            yield chunk
        if seen != self.size:
            raise IntegrityError(f"layer for {self.path}: the file ended after {seen} of {self.size} bytes")
        yield bytes(self.padding + END_OF_ARCHIVE)


@dataclass(frozen=True, slots=True)
class LayerDescriptor:
    """A pushed model layer: digest (= diff_id, the tar is uncompressed), size, and the file's path.

    ``source`` is the file's identity at its source (``job.model.source_identity``), annotated as
    :data:`ANNOTATION_SOURCE` so that a rerun can find, in the manifest an earlier try pushed under the
    tag, the layer it would push for an unchanged file, and skip sending it.
    """

    digest: str
    size: int
    path: PurePosixPath
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        annotations = {ANNOTATION_TITLE: self.path.as_posix()}
        if self.source:
            annotations[ANNOTATION_SOURCE] = self.source
        return {"mediaType": OCI_LAYER_TAR, "digest": self.digest, "size": self.size, "annotations": annotations}

    @classmethod
    def from_json(cls, descriptor: Mapping[str, Any]) -> LayerDescriptor | None:
        """The model layer a manifest's layer descriptor describes, or None for any other layer."""
        annotations = descriptor.get("annotations") or {}
        title, digest, size = annotations.get(ANNOTATION_TITLE), descriptor.get("digest"), descriptor.get("size")
        if descriptor.get("mediaType") != OCI_LAYER_TAR or not isinstance(title, str) or not isinstance(digest, str):
            return None
        if not isinstance(size, int):
            return None
        source = annotations.get(ANNOTATION_SOURCE)
        return cls(digest, size, PurePosixPath(title), source if isinstance(source, str) else None)


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
        {"created": HISTORY_CREATED, "created_by": f"model-sync: {MODELS_DIR}/{layer.path.as_posix()}"}
        for layer in layers
    ]
    return canonical_json(config)


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
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [_oci_descriptor(d) for d in base_layers] + [layer.to_json() for layer in layers],
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
