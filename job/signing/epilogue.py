"""A signed run's epilogue (``job.engine.transfer.Epilogue``): hash every file, then write ``model.sig``.

* **Listing.** A ``model.sig`` at the source's root would be a signature over another manifest (or a stale
  one): the run writes its own over what it copies, so that file is left out, with a warning. Elsewhere in
  the tree a ``model.sig`` is an ordinary file.
* **Files.** The engine hashed every byte as it streamed (``hash_all``); the manifest is built from those
  sha256 digests (``job.signing.manifest``), signed in a thread, and ``model.sig`` is written as one more
  file at the model's root: one more layer in a modelcar (the layer budget keeps one free), one more object
  on S3, before the commit. No byte of the model is read twice.
* **Committed.** The signature's sha256 is recorded (the artifact's ``model_sync.signature`` property); an
  OCI destination also gets it as a referrer of the image manifest, by digest
  (``application/vnd.dev.sigstore.bundle.v0.3+json``), which registry tooling lists by the image digest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

from job.destinations.base import Destination
from job.errors import IntegrityError
from job.model import Committed, ObjectInfo, Uploaded, sha256_digest
from job.settings.signing import SigningConfig
from job.signing.manifest import SIGNATURE, is_signed, sign_digests

__all__ = ["BUNDLE_MEDIA_TYPE", "ModelSigner"]

log = logging.getLogger(__name__)

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


class ModelSigner:
    """Signs the model a transfer writes (see the module docstring)."""

    hash_all = True

    def __init__(self, config: SigningConfig, model_name: str = "model") -> None:
        self.config = config
        self.model_name = model_name
        self.signature: bytes | None = None

    def listing(self, objects: Sequence[ObjectInfo]) -> list[ObjectInfo]:
        kept = [obj for obj in objects if obj.path != SIGNATURE]
        if len(kept) != len(objects):
            log.warning("the source holds a %s at its root: replaced by this run's signature", SIGNATURE)
        return kept

    async def files(self, uploaded: Sequence[Uploaded]) -> Sequence[tuple[ObjectInfo, bytes]]:
        digests = {}
        for one in uploaded:
            if not is_signed(one.obj.path):
                continue
            if one.sha256 is None:  # the engine hashes every file of a signed run: a bug if not
                raise IntegrityError(f"signing the model: no sha256 for {one.obj.path}")
            digests[one.obj.path] = one.sha256
        log.info("signing %d files (%s method)", len(digests), self.config.method)
        self.signature = await asyncio.to_thread(sign_digests, self.config, self.model_name, digests)
        info = ObjectInfo(path=SIGNATURE, size=len(self.signature), digest=sha256_digest(self.signature))
        return [(info, self.signature)]

    async def committed(self, destination: Destination, committed: Committed) -> Committed:
        assert self.signature is not None
        attach = getattr(destination, "attach", None)
        if attach is not None:
            referrer = await attach(BUNDLE_MEDIA_TYPE, self.signature, str(SIGNATURE))
            log.info("signature attached to %s as referrer %s", committed.digest, referrer)
        return replace(committed, signature=sha256_digest(self.signature))
