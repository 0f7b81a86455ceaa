"""Attaching an artifact to an image as an OCI *referrer* (image-spec 1.1, distribution-spec 1.1).

A referrer is a manifest whose ``subject`` is the image's manifest (or index) descriptor and whose
``artifactType`` says what it holds; registry tooling finds it by the image's digest (``GET
/v2/<repo>/referrers/<digest>``; ``oras discover``, ``cosign tree``). It is pushed by its own digest, never
under a tag. A registry that does not process ``subject`` itself (it answers without the ``OCI-Subject``
header, as distribution 2.x does) gets the spec's fallback: the referrer is listed in an index under the tag
``sha256-<hex of the subject digest>``, read, extended and written back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from job.errors import ModelSyncError
from job.model import sha256_digest
from job.oci.client import OciClient
from job.oci.modelcar import canonical_json
from job.oci.protocol import ANNOTATION_TITLE, OCI_INDEX, OCI_MANIFEST

__all__ = ["EMPTY_CONFIG", "attach_referrer", "referrer_manifest"]

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"


def referrer_manifest(subject: Mapping[str, Any], artifact_type: str, blob: bytes, title: str) -> bytes:
    """The referrer manifest: an empty config, one layer (``blob``, typed ``artifact_type``), the subject."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": sha256_digest(EMPTY_CONFIG), "size": len(EMPTY_CONFIG)},
        "layers": [
            {
                "mediaType": artifact_type,
                "digest": sha256_digest(blob),
                "size": len(blob),
                "annotations": {ANNOTATION_TITLE: title},
            }
        ],
        "subject": {key: subject[key] for key in ("mediaType", "digest", "size")},
    }
    return canonical_json(document)


async def attach_referrer(
    client: OciClient, repository: str, subject: Mapping[str, Any], artifact_type: str, blob: bytes, title: str
) -> str:
    """Push ``blob`` as a referrer of ``subject`` in ``repository``; returns the referrer's digest."""
    await client.push_blob(repository, EMPTY_CONFIG)
    await client.push_blob(repository, blob)
    manifest = referrer_manifest(subject, artifact_type, blob, title)
    digest = sha256_digest(manifest)
    if await client.put_referrer(repository, digest, manifest, OCI_MANIFEST):
        return digest  # the registry indexes it itself
    tag = str(subject["digest"]).replace(":", "-")
    try:
        index = (await client.get_manifest(repository, tag)).json()
    except ModelSyncError as exc:
        if getattr(exc, "status", None) != 404:
            raise
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict) and m.get("digest") != digest]
    entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest), "artifactType": artifact_type})
    index["manifests"] = entries
    await client.put_manifest(repository, tag, json.dumps(index, separators=(",", ":")).encode(), OCI_INDEX)
    return digest
