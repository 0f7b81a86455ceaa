"""When a run signs, and how (job.settings.signing); the keyless wiring (job.signing.keyless), without Sigstore.

No Sigstore instance runs here. What the keyless tests prove: the token read (the path setting, else the
pod's service-account token), its issuer and audience used as OIDC issuer and client id, the TUF root
fetched from ``SIGSTORE_TUF_URL``, the Fulcio, Rekor and TSA URLs in the trust config, which sigstore's own
parser accepts, and model-signing's Sigstore signer built from it. Not proven: the Fulcio/Rekor exchange.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import job.settings.signing
from job.errors import ConfigError
from job.settings.chain import load_settings
from job.settings.signing import SigningConfig, signing_config
from job.signing import keyless

URLS = {
    "SIGSTORE_TUF_URL": "https://tuf.sigstore.example",
    "SIGSTORE_FULCIO_URL": "https://fulcio.sigstore.example",
    "SIGSTORE_REKOR_URL": "https://rekor.sigstore.example",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import os

    for name in list(os.environ):
        if name.startswith(("MODEL_SYNC_", "SIGSTORE_")):
            monkeypatch.delenv(name)
    token = tmp_path / "sa-token"
    token.write_text(jwt({"iss": "https://kubernetes.default.svc", "aud": ["sigstore"], "sub": "system:sa"}))
    monkeypatch.setattr(job.settings.signing, "DEFAULT_SA_TOKEN_PATH", token)
    return token


def jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def key_file(folder: Path) -> Path:
    key = ec.generate_private_key(ec.SECP384R1())
    path = folder / "key.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def test_unset_means_off_or_keyless_when_all_three_urls_are_set(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert signing_config(load_settings([])) is None
    monkeypatch.setenv("SIGSTORE_TUF_URL", URLS["SIGSTORE_TUF_URL"])
    with caplog.at_level(logging.WARNING):
        assert signing_config(load_settings([])) is None
    assert "needs SIGSTORE_FULCIO_URL (--sigstore-fulcio-url), SIGSTORE_REKOR_URL" in caplog.text  # names the missing
    for name, value in URLS.items():
        monkeypatch.setenv(name, value)
    config = signing_config(load_settings([]))
    assert config is not None and config.method == "sigstore" and config.token_path == clean_env
    assert signing_config(load_settings(["--sign", "false"])) is None


def test_a_key_turns_signing_on_and_sign_false_still_wins(clean_env: Path, tmp_path: Path) -> None:
    key = key_file(tmp_path)
    assert signing_config(load_settings(["--signing-key-path", str(key)])) == SigningConfig("key", key_path=key)
    assert signing_config(load_settings(["--signing-key-path", str(key), "--sign", "false"])) is None


def test_sign_true_needs_a_method_and_a_token(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="missing setting SIGSTORE_TUF_URL .*MODEL_SYNC_SIGN"):
        signing_config(load_settings(["--sign"]))
    for name, value in URLS.items():
        monkeypatch.setenv(name, value)
    clean_env.unlink()
    with pytest.raises(ConfigError, match="MODEL_SYNC_SIGNING_IDENTITY_TOKEN_PATH.*no identity token"):
        signing_config(load_settings(["--sign"]))


@respx.mock
def test_keyless_wiring_token_urls_and_trust_root(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from model_signing._signing import sign_sigstore
    from sigstore.models import ClientTrustConfig

    for name, value in {**URLS, "SIGSTORE_TSA_URL": "https://tsa.sigstore.example"}.items():
        monkeypatch.setenv(name, value)
    config = signing_config(load_settings([]))
    assert config is not None
    root = respx.get("https://tuf.sigstore.example/root.json").mock(return_value=httpx.Response(200, content=b"{}"))
    staging = ClientTrustConfig.staging(offline=True)  # a real trusted root, from sigstore's own cache
    asked: list[tuple[str, bytes]] = []

    def from_tuf(url: str, offline: bool = False, bootstrap_root: Path | None = None) -> ClientTrustConfig:
        assert bootstrap_root is not None
        asked.append((url, bootstrap_root.read_bytes()))
        return staging

    built: dict[str, Any] = {}

    class Signer:  # reads the trust config as it is built, as model-signing's does
        def __init__(self, **kwargs: Any) -> None:
            built.update(kwargs, trust=json.loads(Path(kwargs["trust_config"]).read_text()))

    monkeypatch.setattr(ClientTrustConfig, "from_tuf", staticmethod(from_tuf))
    monkeypatch.setattr(sign_sigstore, "Signer", Signer)
    keyless.sigstore_signer(config)

    assert root.called and asked == [("https://tuf.sigstore.example", b"{}")]
    assert built["identity_token"] == clean_env.read_text()
    assert (built["oidc_issuer"], built["client_id"]) == ("https://kubernetes.default.svc", "sigstore")
    assert built["use_ambient_credentials"] is False
    trust = built["trust"]
    assert not Path(built["trust_config"]).exists()  # nothing left behind
    signing = trust["signingConfig"]
    assert [u["url"] for u in signing["caUrls"]] == ["https://fulcio.sigstore.example"]
    assert [u["url"] for u in signing["rekorTlogUrls"]] == ["https://rekor.sigstore.example"]
    assert [u["url"] for u in signing["tsaUrls"]] == ["https://tsa.sigstore.example/api/v1/timestamp"]
    assert [u["url"] for u in signing["oidcUrls"]] == ["https://kubernetes.default.svc"]
    assert trust["trustedRoot"] == json.loads(staging._inner.to_json())["trustedRoot"]
    parsed = ClientTrustConfig.from_json(json.dumps(trust))  # sigstore's own parser accepts it
    assert parsed.signing_config is not None


def test_a_token_that_is_no_jwt_is_one_clear_line() -> None:
    with pytest.raises(Exception, match="identity token is not a JWT"):
        keyless.token_claims("not-a-token")
