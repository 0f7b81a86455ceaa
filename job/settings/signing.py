"""Whether and how a run signs the model (``job.signing``), from the settings. ConfigError only; no network.

Upstream's interface (kubeflow/hub async-upload): ``--sign`` / ``MODEL_SYNC_SIGN`` true or false; unset, a
run signs keyless when ``SIGSTORE_TUF_URL``, ``SIGSTORE_FULCIO_URL`` and ``SIGSTORE_REKOR_URL`` are all set
(a warning names the missing ones when only some are), with the OIDC token at
``MODEL_SYNC_SIGNING_IDENTITY_TOKEN_PATH`` (default: the pod's service-account token).

Ours, for clusters without Sigstore: ``MODEL_SYNC_SIGNING_KEY_PATH`` (a PEM elliptic-curve private key:
model-signing's key method) and, with ``MODEL_SYNC_SIGNING_CERTIFICATE_PATH`` and
``MODEL_SYNC_SIGNING_CERTIFICATE_CHAIN_PATH``, its certificate method. Setting any of them turns signing
on; ``MODEL_SYNC_SIGN=false`` still turns it off. Keys and certificates are loaded here, so a missing,
unreadable or malformed one exits 2 before any connection, and their contents never reach a message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from job.errors import ConfigError
from job.settings.chain import Settings
from job.settings.checks import check_url, path_problem, safe_is_file
from job.settings.names import DEFAULT_SA_TOKEN_PATH, setting_name

__all__ = ["SigningConfig", "signing_config"]

log = logging.getLogger(__name__)

CURVES = ("secp256r1", "secp384r1", "secp521r1")
"""The curves model-signing's key method signs with (P-256, P-384, P-521)."""
MAX_PEM_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SigningConfig:
    """How to sign: ``key`` (a private key), ``certificate`` (key + certificate + chain) or ``sigstore``."""

    method: Literal["key", "certificate", "sigstore"]
    key_path: Path | None = None
    certificate_path: Path | None = None
    chain_path: Path | None = None
    token_path: Path | None = None
    tuf_url: str | None = None
    fulcio_url: str | None = None
    rekor_url: str | None = None
    tsa_url: str | None = None


def _read(settings: Settings, field: str) -> bytes:
    path: Path = getattr(settings, field)
    name = setting_name(field)
    if path_problem(path) or not safe_is_file(path):
        raise ConfigError(f"invalid setting {name}: {path} does not exist or is not a file")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"invalid setting {name}: {path}: {exc.strerror}") from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"invalid setting {name}: {path} is larger than {MAX_PEM_BYTES} bytes")
    return data


def _check_key(settings: Settings) -> object:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    name = setting_name("signing_key_path")
    try:
        key = load_pem_private_key(_read(settings, "signing_key_path"), password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        raise ConfigError(f"invalid setting {name}: the key is encrypted; mount it without a password") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"invalid setting {name}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in CURVES:
        raise ConfigError(f"invalid setting {name}: model signing needs an elliptic-curve key on P-256, P-384 or P-521")
    return key


def _check_certificate(settings: Settings, key: object) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    name = setting_name("signing_certificate_path")
    try:
        certificate = x509.load_pem_x509_certificate(_read(settings, "signing_certificate_path"))
    except ValueError:
        raise ConfigError(f"invalid setting {name}: not a PEM certificate") from None
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    if certificate.public_key() != key.public_key():
        raise ConfigError(f"invalid setting {name}: the certificate is not for {setting_name('signing_key_path')}")
    extensions = certificate.extensions
    usages = [e.value for e in extensions if isinstance(e.value, x509.KeyUsage)]
    purposes = [e.value for e in extensions if isinstance(e.value, x509.ExtendedKeyUsage)]
    usable = any(u.digital_signature for u in usages) or any(ExtendedKeyUsageOID.CODE_SIGNING in p for p in purposes)
    if not usable:
        raise ConfigError(f"invalid setting {name}: the certificate allows neither digitalSignature nor codeSigning")
    chain = setting_name("signing_certificate_chain_path")
    try:
        if not x509.load_pem_x509_certificates(_read(settings, "signing_certificate_chain_path")):
            raise ValueError
    except ValueError:
        raise ConfigError(f"invalid setting {chain}: not one or more PEM certificates") from None


def _sigstore(settings: Settings) -> SigningConfig:
    urls = {}
    for field in ("sigstore_tuf_url", "sigstore_fulcio_url", "sigstore_rekor_url", "sigstore_tsa_url"):
        value = (getattr(settings, field) or "").strip() or None
        if value is not None:
            check_url(value, setting_name(field), ("http", "https"))
        urls[field] = value
    token = settings.signing_identity_token_path or DEFAULT_SA_TOKEN_PATH
    if path_problem(token) or not safe_is_file(token):
        raise ConfigError(
            f"invalid setting {setting_name('signing_identity_token_path')}: no identity token at {token}"
        )
    return SigningConfig(
        "sigstore",
        token_path=token,
        tuf_url=urls["sigstore_tuf_url"],
        fulcio_url=urls["sigstore_fulcio_url"],
        rekor_url=urls["sigstore_rekor_url"],
        tsa_url=urls["sigstore_tsa_url"],
    )


def signing_config(settings: Settings) -> SigningConfig | None:
    """The signing method the settings ask for, checked; None when the run does not sign."""
    if settings.sign is False:
        return None
    key, cert, chain = (
        settings.signing_key_path,
        settings.signing_certificate_path,
        settings.signing_certificate_chain_path,
    )
    if key is not None or cert is not None or chain is not None:
        if key is None:
            raise ConfigError(
                f"missing setting {setting_name('signing_key_path')}: a signing certificate needs its key"
            )
        if (cert is None) != (chain is None):
            absent = "signing_certificate_chain_path" if chain is None else "signing_certificate_path"
            raise ConfigError(f"missing setting {setting_name(absent)}: the certificate method needs both")
        private_key = _check_key(settings)
        if cert is None:
            return SigningConfig("key", key_path=key)
        _check_certificate(settings, private_key)
        return SigningConfig("certificate", key_path=key, certificate_path=cert, chain_path=chain)
    required = ("sigstore_tuf_url", "sigstore_fulcio_url", "sigstore_rekor_url")
    missing = [setting_name(f) for f in required if not (getattr(settings, f) or "").strip()]
    if settings.sign is None:
        if len(missing) == len(required):
            return None
        if missing:
            log.warning("not signing: keyless signing needs %s as well", ", ".join(missing))
            return None
    elif missing:
        raise ConfigError(
            f"missing setting {missing[0]}: {setting_name('sign')} is true; sign with "
            f"{setting_name('signing_key_path')}, or keyless with all three SIGSTORE_* URLs"
        )
    return _sigstore(settings)
