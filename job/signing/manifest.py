"""``model.sig`` bytes from per-file sha256 digests, through OpenSSF model-signing's own types.

model-signing (PyPI ``model-signing``, 1.x) signs a *manifest*: the model's files with their sha256, in
its "files" serialization. Its own ``sign`` hashes a directory on disk; a streamed copy has no such
directory, but it has every file's sha256 already (the engine hashed the bytes as they passed). So the
manifest is built from those digests with model-signing's ``Manifest``/``FileManifestItem`` and signed by
its signers: the bundle is byte-for-byte what ``model_signing sign`` writes for the same files (apart from
the randomised ECDSA signature and JSON key order), and ``model_signing verify`` checks it as its own.

The manifest is what ``model_signing verify`` recomputes from a copy of the model: every file except
``model.sig`` and the top-level git paths (``.git``, ``.gitattributes``, ``.github``, ``.gitignore``), which
the CLI ignores by default and which the payload lists as ignored. model-signing is imported here only:
it costs 0.7 s at start-up, which a run that does not sign does not pay. Its ``Digest``, ``Payload`` and
signer classes are private API: ``pyproject.toml`` pins the version, and the tests verify with the real CLI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from job.errors import ModelSyncError
from job.settings.signing import SigningConfig

__all__ = ["IGNORED", "SIGNATURE", "is_signed", "sign_digests"]

SIGNATURE = PurePosixPath("model.sig")
IGNORED = ("model.sig", ".git", ".gitattributes", ".github", ".gitignore")
"""What the payload lists as ignored: the signature, and the git paths ``model_signing verify`` skips."""


def is_signed(path: PurePosixPath) -> bool:
    """Is ``path`` in the manifest? (Not the signature, nor a top-level git path.)"""
    return not any(path.is_relative_to(ignored) for ignored in IGNORED)


def _manifest(model_name: str, digests: Mapping[PurePosixPath, str]) -> Any:
    from model_signing import manifest
    from model_signing._hashing.hashing import Digest

    serialization = manifest.SerializationType.from_args(
        {"method": "files", "hash_type": "sha256", "allow_symlinks": False, "ignore_paths": list(IGNORED)}
    )
    items = [
        manifest.FileManifestItem(path=path, digest=Digest("sha256", bytes.fromhex(sha256.removeprefix("sha256:"))))
        for path, sha256 in digests.items()
    ]
    return manifest.Manifest(model_name, items, serialization)


def _signer(config: SigningConfig) -> Any:
    if config.method == "key":
        from model_signing._signing import sign_ec_key

        assert config.key_path is not None
        return sign_ec_key.Signer(Path(config.key_path), None)
    if config.method == "certificate":
        from model_signing._signing import sign_certificate

        assert config.key_path and config.certificate_path and config.chain_path
        return sign_certificate.Signer(Path(config.key_path), Path(config.certificate_path), [Path(config.chain_path)])
    from job.signing.keyless import sigstore_signer

    return sigstore_signer(config)


def sign_digests(config: SigningConfig, model_name: str, digests: Mapping[PurePosixPath, str]) -> bytes:
    """The ``model.sig`` of the files ``digests`` names (path -> ``sha256:<hex>``), signed as ``config`` says.

    Blocking (model-signing is synchronous): call it in a thread. Raises :class:`ModelSyncError` (exit 1)
    when signing fails (the key and certificate were checked at start-up, so this is rare)."""
    from model_signing._signing import signing

    try:
        payload = signing.Payload(_manifest(model_name, digests))
        bundle = _signer(config).sign(payload).bundle
    except ModelSyncError:
        raise
    except Exception as exc:
        raise ModelSyncError(f"signing the model ({config.method} method): {type(exc).__name__}: {exc}") from exc
    text: str = bundle.to_json()
    json.loads(text)  # a bundle is JSON; anything else is a bug worth failing on here
    return text.encode("utf-8")
