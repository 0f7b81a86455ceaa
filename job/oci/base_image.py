"""The images a modelcar push builds on: its base image (what its reference points to, each platform's
manifest and config), and the model layers the tag held before (for a rerun to skip)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from job.errors import DestinationError, ModelSyncError
from job.oci.client import Manifest, OciClient
from job.oci.modelcar import LayerDescriptor
from job.oci.protocol import INDEX_TYPES, image_entries
from job.oci.reference import ImageReference

__all__ = ["BaseImage", "Platform", "model_layers", "resolve_base"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Platform:
    entry: dict[str, Any] | None
    """The base index's entry for this manifest (None for a single-platform base)."""
    manifest: Manifest
    config: dict[str, Any]

    @property
    def layers(self) -> list[dict[str, Any]]:
        layers: list[dict[str, Any]] = self.manifest.json()["layers"]
        return layers


@dataclass(frozen=True, slots=True)
class BaseImage:
    reference: ImageReference
    top: Manifest
    """What the base reference points to: an image manifest, or an index."""
    platforms: list[Platform]

    @property
    def is_index(self) -> bool:
        return len(self.platforms) > 1 or self.platforms[0].entry is not None

    @property
    def most_layers(self) -> int:
        """The layers of its largest platform image (what a layer budget must leave room for)."""
        return max(len(p.layers) for p in self.platforms)


async def resolve_base(client: OciClient, ref: ImageReference, *, uri: str) -> BaseImage:
    """Read the base image ``ref``: its manifest or index, every platform manifest and config (a few small
    GETs). Raises :class:`DestinationError` (naming ``uri``, the push) for anything that is not an image."""
    top = await client.get_manifest(ref.repository, ref.reference)
    document = top.json()
    if top.media_type in INDEX_TYPES or document.get("mediaType") in INDEX_TYPES:
        entries = image_entries(document)
        if not entries:
            raise DestinationError(f"base image {ref}: its index lists no image manifest", uri=uri)
        pairs: list[tuple[dict[str, Any] | None, Manifest]] = [
            (e, await client.get_manifest(ref.repository, e["digest"])) for e in entries
        ]
    else:
        pairs = [(None, top)]
    platforms = []
    for entry, manifest in pairs:
        document = manifest.json()
        if not isinstance(document.get("config"), dict) or not isinstance(document.get("layers"), list):
            raise DestinationError(f"base image {ref}: manifest {manifest.digest} is not an image manifest", uri=uri)
        config_digest = document["config"]["digest"]
        config = json.loads(await client.read_blob(ref.repository, config_digest))
        if not isinstance(config, dict):
            raise DestinationError(f"base image {ref}: config {config_digest} is not a JSON object", uri=uri)
        platforms.append(Platform(entry=entry, manifest=manifest, config=config))
    log.info("base image %s: %s, %d platform(s)", ref, top.digest, len(platforms))
    return BaseImage(reference=ref, top=top, platforms=platforms)


async def model_layers(
    client: OciClient, target: ImageReference, *, uri: str
) -> dict[tuple[str, int], LayerDescriptor]:
    """The model layers of the manifest ``target``'s tag points to now (an index: its first image), by
    their source annotation and size; empty when there is none or it is not what model-sync pushes."""
    repo, tag = target.repository, target.tag
    assert tag is not None
    try:
        manifest = await client.get_manifest(repo, tag)
        document = manifest.json()
        if manifest.media_type in INDEX_TYPES or document.get("mediaType") in INDEX_TYPES:
            entries = image_entries(document)
            if not entries:
                return {}
            document = (await client.get_manifest(repo, str(entries[0]["digest"]))).json()
    except ModelSyncError as exc:
        if getattr(exc, "status", None) != 404:  # 404: nothing pushed yet, the usual case
            log.info("not reusing layers of %s: %s", uri, exc)
        return {}
    except (ValueError, KeyError, TypeError) as exc:
        log.info("not reusing layers of %s: its manifest is not what model-sync pushes (%s)", uri, exc)
        return {}
    layers = [LayerDescriptor.from_json(d) for d in document.get("layers") or [] if isinstance(d, dict)]
    return {(layer.source, layer.size): layer for layer in layers if layer is not None and layer.source}
