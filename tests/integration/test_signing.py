"""Signed runs through the real process, verified by the real verifier (OpenSSF ``model_signing verify``).

The job signs pvc -> oci with a key, s3 -> s3 with a certificate chain; the model is then read back with
clients that are not model-sync's (the registry's HTTP API and ``tarfile``; boto3) into a directory, and
``model_signing verify key|certificate`` checks it as it is. One flipped byte makes it fail.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.jobs import (
    FAST,
    OCI_MANIFEST,
    get_artifact,
    oci_env,
    put_tree,
    pvc_env,
    read_modelcar,
    read_s3,
    registry_env,
    run_job,
    s3_env,
    update_artifact_env,
    write_tree,
)
from tests.servers.http import HttpTestServer, tar_bytes
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

MODEL = {
    "config.json": b'{"architectures": ["Signed"]}',
    "weights/model 1.safetensors": bytes(range(256)) * 2000,
    "sub/deep/empty.bin": b"",
    ".gitattributes": b"*.safetensors filter=lfs\n",  # copied, not signed: the verifier ignores it
    "sub/.gitattributes": b"nested: signed\n",
}
VERIFIER = Path(sys.executable).parent / "model_signing"


def pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate(subject: str, key: Any, issuer: tuple[str, Any] | None, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = (issuer[0], issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A signing key and its public key; a root CA, and a leaf certificate for the key, issued by it."""
    folder = tmp_path_factory.mktemp("signing-keys")
    key = ec.generate_private_key(ec.SECP256R1())
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = certificate("model-sync test root", root_key, None, ca=True)
    leaf = certificate("model-sync signer", key, ("model-sync test root", root_key), ca=False)
    files = {
        "key.pem": pem_key(key),
        "pub.pem": key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "root.pem": root.public_bytes(serialization.Encoding.PEM),
        "leaf.pem": leaf.public_bytes(serialization.Encoding.PEM),
        "rsa.pem": pem_key(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "garbage.pem": b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name.removesuffix(".pem"): folder / name for name in files}


def verify(model: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real verifier's CLI on a directory, with ``model.sig`` inside it."""
    command = [str(VERIFIER), "verify", *args[:1], "--signature", str(model / "model.sig"), *args[1:], str(model)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def to_dir(files: dict[str, bytes], root: Path) -> Path:
    return write_tree(root, files)


def test_pvc_to_oci_signed_with_a_key_verifies_and_is_attached_as_a_referrer(
    keys: dict[str, Path], registry_standin: ModelRegistryStandin, registry_plain: Registry, tmp_path: Path
) -> None:
    model = write_tree(tmp_path / "model", {**MODEL, "model.sig": b"an old signature"})
    reference = f"{registry_plain.host}/signed/m-{uuid.uuid4().hex[:6]}:1"
    env = {**FAST, **registry_env(registry_standin.url), **update_artifact_env(registry_standin.api_url),
           **pvc_env(model), **oci_env("DESTINATION", reference, base=registry_plain.base),
           "MODEL_SYNC_SIGNING_KEY_PATH": str(keys["key"])}  # fmt: skip
    run = run_job(env, tmp_path)
    result = run.result()
    assert "replaced by this run's signature" in run.stderr
    host, _, rest = reference.partition("/")
    repository, _, tag = rest.partition(":")
    pulled = read_modelcar(host, repository, tag)
    assert {k: v for k, v in pulled.items() if k != "model.sig"} == MODEL
    served = to_dir(pulled, tmp_path / "served")
    checked = verify(served, "key", "--public_key", str(keys["pub"]))
    assert checked.returncode == 0, checked.stderr
    # The artifact records the signature's sha256.
    artifact = get_artifact(registry_standin.api_url, result["ModelArtifact"]["id"])
    signature = "sha256:" + hashlib.sha256(pulled["model.sig"]).hexdigest()
    assert artifact["customProperties"]["model_sync.signature"]["string_value"] == signature
    # The signature is a referrer of the image, by digest: distribution 2.8 has no referrers API, so it is
    # listed in the fallback index under the tag sha256-<hex of the image digest>.
    with httpx.Client(base_url=f"http://{host}/v2/{repository}", timeout=30) as api:
        accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
        index = api.get(f"/manifests/{result['digest'].replace(':', '-')}", headers=accept).raise_for_status().json()
        [entry] = index["manifests"]
        assert entry["artifactType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
        referrer = api.get(f"/manifests/{entry['digest']}", headers={"Accept": OCI_MANIFEST}).raise_for_status().json()
        assert referrer["subject"]["digest"] == result["digest"]
        blob = api.get(f"/blobs/{referrer['layers'][0]['digest']}").raise_for_status().content
        assert blob == pulled["model.sig"]
    # One flipped byte fails the real verifier.
    weights = served / "weights" / "model 1.safetensors"
    weights.write_bytes(b"\xff" + weights.read_bytes()[1:])
    failed = verify(served, "key", "--public_key", str(keys["pub"]))
    assert failed.returncode != 0 and "model 1.safetensors" in failed.stdout + failed.stderr


def test_a_tar_gz_read_once_and_signed_verifies(
    keys: dict[str, Path], registry_standin: ModelRegistryStandin, registry_plain: Registry,
    http_server: HttpTestServer, tmp_path: Path,
) -> None:  # fmt: skip
    # A one-pass source: every file hashed as it is listed and put, the archive's own model.sig left out.
    archive = http_server.write(
        f"signed/{uuid.uuid4().hex[:8]}.tar.gz", tar_bytes({**MODEL, "model.sig": b"old"}, gz=True)
    )
    reference = f"{registry_plain.host}/signed/tgz-{uuid.uuid4().hex[:6]}:1"
    env = {**FAST, **registry_env(registry_standin.url), **update_artifact_env(registry_standin.api_url),
           "MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI": http_server.url(archive),
           **oci_env("DESTINATION", reference, base=registry_plain.base),
           "MODEL_SYNC_SIGNING_KEY_PATH": str(keys["key"])}  # fmt: skip
    run = run_job(env, tmp_path)
    run.result()
    assert "as the source lists them" in run.stderr and "replaced by this run's signature" in run.stderr
    host, _, rest = reference.partition("/")
    repository, _, tag = rest.partition(":")
    pulled = read_modelcar(host, repository, tag)
    assert {k: v for k, v in pulled.items() if k != "model.sig"} == MODEL
    checked = verify(to_dir(pulled, tmp_path / "served"), "key", "--public_key", str(keys["pub"]))
    assert checked.returncode == 0, checked.stderr


def test_s3_to_s3_signed_with_a_certificate_verifies_against_the_root(
    keys: dict[str, Path], registry_standin: ModelRegistryStandin, seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    bucket = fresh_bucket(seaweedfs_s3, "signed")
    put_tree(seaweedfs_s3, bucket, "in/", MODEL)
    env = {**FAST, **registry_env(registry_standin.url), **update_artifact_env(registry_standin.api_url),
           **s3_env("SOURCE", seaweedfs_s3, bucket, "in/"), **s3_env("DESTINATION", seaweedfs_s3, bucket, "out"),
           "MODEL_SYNC_SIGNING_KEY_PATH": str(keys["key"]), "MODEL_SYNC_SIGNING_CERTIFICATE_PATH": str(keys["leaf"]),
           "MODEL_SYNC_SIGNING_CERTIFICATE_CHAIN_PATH": str(keys["root"])}  # fmt: skip
    run_job(env, tmp_path).result()
    stored = read_s3(seaweedfs_s3, bucket, "out")
    assert set(stored) == {*MODEL, "model.sig"}
    served = to_dir(stored, tmp_path / "served")
    checked = verify(served, "certificate", "--certificate_chain", str(keys["root"]))
    assert checked.returncode == 0, checked.stderr
    (served / "config.json").write_bytes(b'{"architectures": ["Tampered"]}')
    assert verify(served, "certificate", "--certificate_chain", str(keys["root"])).returncode != 0
    payload = json.loads(__import__("base64").b64decode(json.loads(stored["model.sig"])["dsseEnvelope"]["payload"]))
    assert sorted(r["name"] for r in payload["predicate"]["resources"]) == sorted(
        p for p in MODEL if p != ".gitattributes"
    )


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"MODEL_SYNC_SIGNING_KEY_PATH": "{garbage}"}, "MODEL_SYNC_SIGNING_KEY_PATH"),
        ({"MODEL_SYNC_SIGNING_KEY_PATH": "{rsa}"}, "elliptic-curve key"),
        ({"MODEL_SYNC_SIGNING_KEY_PATH": "/no/such/key.pem"}, "does not exist"),
        ({"MODEL_SYNC_SIGNING_KEY_PATH": "{key}", "MODEL_SYNC_SIGNING_CERTIFICATE_PATH": "{leaf}"},
         "MODEL_SYNC_SIGNING_CERTIFICATE_CHAIN_PATH"),
        ({"MODEL_SYNC_SIGNING_KEY_PATH": "{key}", "MODEL_SYNC_SIGNING_CERTIFICATE_PATH": "{root}",
          "MODEL_SYNC_SIGNING_CERTIFICATE_CHAIN_PATH": "{root}"}, "not for MODEL_SYNC_SIGNING_KEY_PATH"),
        ({"MODEL_SYNC_SIGN": "true"}, "MODEL_SYNC_SIGN"),
    ],
)  # fmt: skip
def test_bad_signing_settings_exit_2_before_any_connection(
    keys: dict[str, Path],
    registry_standin: ModelRegistryStandin,
    registry_plain: Registry,
    tmp_path: Path,
    settings: dict[str, str],
    needle: str,
) -> None:
    model = write_tree(tmp_path / "model", {"a.json": b"{}"})
    env = {**FAST, **registry_env(registry_standin.url), "MODEL_SYNC_MODEL_UPLOAD_INTENT": "update_artifact",
           "MODEL_SYNC_MODEL_ARTIFACT_ID": "1", **pvc_env(model),
           **oci_env("DESTINATION", f"{registry_plain.host}/signed/bad:1", base=registry_plain.base),
           **{k: v.format(**{n: str(p) for n, p in keys.items()}) for k, v in settings.items()}}  # fmt: skip
    before = len(registry_standin.requests)
    run = run_job(env, tmp_path)
    run.assert_one_line_failure(code=2)
    assert needle in run.message
    assert len(registry_standin.requests) == before
    assert "PRIVATE KEY" not in run.output


async def test_a_signing_failure_after_the_transfer_aborts_and_leaves_nothing_pending(
    keys: dict[str, Path],
    registry_standin: ModelRegistryStandin,
    registry_plain: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import job.signing.epilogue
    from job.config import build_job_config
    from job.errors import ModelSyncError
    from job.pipeline import plan_job, sync
    from job.settings.chain import load_settings

    def broken(*_: object) -> bytes:
        raise ModelSyncError("signing the model (key method): the signer broke")

    monkeypatch.setattr(job.signing.epilogue, "sign_digests", broken)
    model = write_tree(tmp_path / "model", MODEL)
    artifact = update_artifact_env(registry_standin.api_url)["MODEL_SYNC_MODEL_ARTIFACT_ID"]
    reference = f"{registry_plain.host}/signed/broken:1"
    argv = ["--registry-server-address", registry_standin.url, "--model-upload-intent", "update_artifact",
            "--model-artifact-id", artifact, "--source-type", "pvc", "--source-path", str(model),
            "--destination-type", "oci", "--destination-oci-uri", reference,
            "--destination-oci-base-image", registry_plain.base, "--destination-oci-enable-tls-verify", "false",
            "--signing-key-path", str(keys["key"])]  # fmt: skip
    with pytest.raises(ModelSyncError, match="the signer broke"):
        await sync(plan_job(build_job_config(load_settings(argv), {})))
    assert get_artifact(registry_standin.api_url, artifact)["state"] == "ABANDONED"  # had no uri: not PENDING
    tag = httpx.get(f"http://{registry_plain.host}/v2/signed/broken/manifests/1", timeout=30)
    assert tag.status_code == 404  # nothing committed under the tag
