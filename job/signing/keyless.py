"""Keyless signing against a private Sigstore instance, wired as upstream's job wires it.

Upstream (kubeflow/hub async-upload, ``model_registry.signing``) signs with the pod's OIDC token against the
instance named by ``SIGSTORE_TUF_URL``, ``SIGSTORE_FULCIO_URL``, ``SIGSTORE_REKOR_URL`` and (optionally)
``SIGSTORE_TSA_URL``: the trusted root comes from the TUF repository (bootstrapped from its own
``root.json``, trust on first use), the signing config names the Fulcio, Rekor and TSA URLs, the OIDC
issuer and client id are the token's ``iss`` and ``aud``. model-signing's Sigstore signer then gets a
certificate for an ephemeral key from Fulcio, logs the signature in Rekor and writes a Sigstore bundle.

What the tests prove without a Sigstore instance (none runs here): which token is read, which URLs the
trust config names, that the root is fetched from the TUF URL, and that sigstore's own parser accepts the
trust config. What only a real instance proves: the Fulcio/Rekor exchange itself.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx

from job.errors import ModelSyncError
from job.settings.signing import SigningConfig

__all__ = ["sigstore_signer", "token_claims", "trust_config"]

VALID_FROM = "2020-01-01T00:00:00Z"
TIMEOUT = 30.0


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (not verified: Fulcio verifies it), for the issuer and the audience."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise ModelSyncError(f"keyless signing: the identity token is not a JWT ({type(exc).__name__})") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise ModelSyncError("keyless signing: the identity token names no issuer (iss)")
    return claims


def _service(url: str, version: int = 1) -> dict[str, Any]:
    return {"url": url, "majorApiVersion": version, "validFor": {"start": VALID_FROM}, "operator": ""}


def trust_config(config: SigningConfig, issuer: str, work: Path) -> dict[str, Any]:
    """The ClientTrustConfig for the private instance: its trusted root from TUF, our signing URLs."""
    from sigstore.models import ClientTrustConfig

    assert config.tuf_url and config.fulcio_url and config.rekor_url
    tuf = config.tuf_url.rstrip("/")
    try:
        root = httpx.get(f"{tuf}/root.json", timeout=TIMEOUT, follow_redirects=True).raise_for_status()
    except httpx.HTTPError as exc:
        raise ModelSyncError(f"keyless signing: reading {tuf}/root.json: {type(exc).__name__}: {exc}") from None
    bootstrap = work / "root.json"
    bootstrap.write_bytes(root.content)
    trusted_root = json.loads(ClientTrustConfig.from_tuf(tuf, bootstrap_root=bootstrap)._inner.to_json())["trustedRoot"]
    signing: dict[str, Any] = {
        "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
        "caUrls": [_service(config.fulcio_url)],
        "oidcUrls": [_service(issuer)],
        "rekorTlogUrls": [_service(config.rekor_url)],
        "rekorTlogConfig": {"selector": "ANY"},
        "tsaUrls": [_service(config.tsa_url.rstrip("/") + "/api/v1/timestamp")] if config.tsa_url else [],
        "tsaConfig": {"selector": "ANY"},
    }
    return {
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": trusted_root,
        "signingConfig": signing,
    }


def sigstore_signer(config: SigningConfig) -> Any:
    """model-signing's Sigstore signer for the private instance, with the pod's identity token."""
    from model_signing._signing import sign_sigstore

    assert config.token_path is not None
    token = config.token_path.read_text(encoding="utf-8").strip()
    claims = token_claims(token)
    audience = claims.get("aud")
    client_id = audience[0] if isinstance(audience, list) and audience else audience
    with tempfile.TemporaryDirectory(prefix="model-sync-sigstore-") as folder:  # read by the signer as it is built
        work = Path(folder)
        path = work / "trust_config.json"
        path.write_text(json.dumps(trust_config(config, claims["iss"], work)), encoding="utf-8")
        return sign_sigstore.Signer(
            oidc_issuer=claims["iss"],
            use_ambient_credentials=False,
            identity_token=token,
            client_id=client_id if isinstance(client_id, str) else None,
            trust_config=path,
        )
