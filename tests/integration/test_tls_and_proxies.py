"""Where a cluster puts its trust and its proxy, through the real process (``python -m job``):

* OCI registries: a CA that sits only in a containers-certs.d directory (``MODEL_SYNC_OCI_CERT_DIR``, the
  layout the Kubeflow UI backend mounts at ``/etc/containers/certs.d/<host:port>/ca.crt``) is trusted for the
  destination, its base image and a source, with verification on; without it, one line naming the registry
  and where its CA can go.
* S3: ``AWS_CA_BUNDLE`` is honoured for an https endpoint signed by a private CA.
* Proxies: ``HTTP(S)_PROXY`` carries every client's traffic (Model Registry, S3, OCI) through a real forward
  proxy (tinyproxy), ``NO_PROXY`` entries bypass it, including the ``*.svc.cluster.local`` spelling.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.jobs import (
    FAST,
    get_artifact,
    new_artifact,
    oci_env,
    put_tree,
    pvc_env,
    read_modelcar,
    read_s3,
    registry_env,
    run_job,
    s3_env,
    write_tree,
)
from tests.servers.proxy import ForwardProxy
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server, fresh_bucket, moto_server
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

MODEL = {"config.json": b'{"a": 1}', "weights/w.bin": b"w" * 70_000}


def update_env(registry: ModelRegistryStandin, address: str | None = None) -> dict[str, str]:
    return {
        **FAST,
        **registry_env(address or registry.url),
        "MODEL_SYNC_MODEL_UPLOAD_INTENT": "update_artifact",
        "MODEL_SYNC_MODEL_ARTIFACT_ID": new_artifact(registry.api_url),
    }


# --- OCI: containers-certs.d ------------------------------------------------------------------------


def tls_push_env(reg: Registry, reference: str, cert_dir: Path) -> dict[str, str]:
    return {
        **oci_env("DESTINATION", reference, base=reg.base),
        "MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY": "true",
        "MODEL_SYNC_DESTINATION_OCI_USERNAME": str(reg.username),
        "MODEL_SYNC_DESTINATION_OCI_PASSWORD": str(reg.password),
        "MODEL_SYNC_OCI_CERT_DIR": str(cert_dir),
    }


@pytest.fixture
def certs_d(registry_htpasswd: Registry, tmp_path: Path) -> Path:
    """A certs.d directory holding the TLS registry's CA under its ``host:port``, and nothing else trusts it."""
    assert registry_htpasswd.ca_cert is not None
    host_dir = tmp_path / "certs.d" / registry_htpasswd.host
    host_dir.mkdir(parents=True)
    (host_dir / "ca.crt").write_bytes(registry_htpasswd.ca_cert.read_bytes())
    return tmp_path / "certs.d"


def test_a_ca_in_certs_d_is_trusted_for_destination_base_image_and_source(
    registry_standin: ModelRegistryStandin,
    registry_htpasswd: Registry,
    seaweedfs_s3: S3Server,
    certs_d: Path,
    tmp_path: Path,
) -> None:
    reg = registry_htpasswd
    reference = f"{reg.host}/certsd/m{uuid.uuid4().hex[:6]}:1"
    env = {**update_env(registry_standin), **pvc_env(write_tree(tmp_path / "model", MODEL))}
    pushed = run_job({**env, **tls_push_env(reg, reference, certs_d)}, tmp_path)
    assert pushed.result()["uri"] == f"oci://{reference}"
    # ... and back out of it, as a source, verified against the same certs.d only
    bucket = fresh_bucket(seaweedfs_s3, "certsd")
    source = {
        **oci_env("SOURCE", reference),
        "MODEL_SYNC_SOURCE_OCI_ENABLE_TLS_VERIFY": "true",
        "MODEL_SYNC_SOURCE_OCI_USERNAME": str(reg.username),
        "MODEL_SYNC_SOURCE_OCI_PASSWORD": str(reg.password),
        "MODEL_SYNC_OCI_CERT_DIR": str(certs_d),
    }
    copied = run_job(
        {**update_env(registry_standin), **source, **s3_env("DESTINATION", seaweedfs_s3, bucket, "m")}, tmp_path
    )
    assert copied.code == 0, copied.stderr[-3000:]
    assert read_s3(seaweedfs_s3, bucket, "m") == MODEL


def test_without_its_ca_a_registry_fails_once_naming_where_the_ca_goes(
    registry_standin: ModelRegistryStandin, registry_htpasswd: Registry, tmp_path: Path
) -> None:
    reg = registry_htpasswd
    empty = tmp_path / "certs.d"
    empty.mkdir()
    env = {**update_env(registry_standin), **pvc_env(write_tree(tmp_path / "model", MODEL))}
    run = run_job({**env, **tls_push_env(reg, f"{reg.host}/certsd/none:1", empty)}, tmp_path)
    run.assert_one_line_failure(code=1)
    assert (
        f"the TLS certificate of {reg.host} is not trusted: put its CA in {empty / reg.host / 'ca.crt'}, "
        "or set the CA bundle (MODEL_SYNC_DESTINATION_OCI_CA_BUNDLE)"
    ) in run.message
    assert "retrying" not in run.stderr  # a certificate that does not verify will not verify on a retry
    assert get_artifact(registry_standin.api_url, env["MODEL_SYNC_MODEL_ARTIFACT_ID"])["state"] != "PENDING"


# --- S3: AWS_CA_BUNDLE ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto over https with a certificate for 127.0.0.1 that only its own file vouches for."""
    folder = tmp_path_factory.mktemp("moto-tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with moto_server(tls=(cert, key)) as server:
        yield server


def test_s3_honours_aws_ca_bundle(registry_standin: ModelRegistryStandin, moto_tls: S3Server, tmp_path: Path) -> None:
    assert moto_tls.ca_bundle is not None
    bucket = fresh_bucket(moto_tls, "cabundle")
    env = {
        **update_env(registry_standin),
        **pvc_env(write_tree(tmp_path / "model", MODEL)),
        **s3_env("DESTINATION", moto_tls, bucket, "m"),
    }
    trusted = run_job({**env, "AWS_CA_BUNDLE": str(moto_tls.ca_bundle)}, tmp_path)
    assert trusted.result()["uri"] == f"s3://{bucket}/m/"
    assert read_s3(moto_tls, bucket, "m") == MODEL
    untrusted = run_job(
        {**update_env(registry_standin), **{k: v for k, v in env.items() if "ARTIFACT_ID" not in k}}, tmp_path
    )
    untrusted.assert_one_line_failure(code=1)
    assert "certificate" in untrusted.message.lower() and "AWS_CA_BUNDLE" in untrusted.message


# --- proxies ---------------------------------------------------------------------------------------


def localhost(url_or_host: str) -> str:
    return url_or_host.replace("127.0.0.1", "localhost")


def proxy_env(proxy: ForwardProxy, no_proxy: str) -> dict[str, str]:
    return {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url, "http_proxy": proxy.url, "https_proxy": proxy.url,
            "NO_PROXY": no_proxy, "no_proxy": no_proxy}  # fmt: skip


@pytest.fixture
def s3_to_oci_via_localhost(
    registry_standin: ModelRegistryStandin, seaweedfs_s3: S3Server, registry_plain: Registry
) -> tuple[dict[str, str], list[str]]:
    """An s3 -> oci update_artifact whose three servers are addressed as ``localhost:PORT``; returns the env
    and the three ``localhost:PORT`` origins."""
    bucket = fresh_bucket(seaweedfs_s3, "proxy")
    put_tree(seaweedfs_s3, bucket, "m/", MODEL)
    s3_origin = localhost(seaweedfs_s3.endpoint_url)
    oci_host = localhost(registry_plain.host)
    env = {
        **update_env(registry_standin, localhost(registry_standin.url)),
        **s3_env("SOURCE", seaweedfs_s3, bucket, "m/", endpoint=s3_origin),
        **oci_env("DESTINATION", f"{oci_host}/proxied/m{uuid.uuid4().hex[:6]}:1", base=localhost(registry_plain.base)),
    }
    origins = [localhost(registry_standin.url).removeprefix("http://"), s3_origin.removeprefix("http://"), oci_host]
    return env, origins


def test_every_client_goes_through_the_proxy(
    forward_proxy: ForwardProxy,
    s3_to_oci_via_localhost: tuple[dict[str, str], list[str]],
    registry_plain: Registry,
    tmp_path: Path,
) -> None:
    env, origins = s3_to_oci_via_localhost
    forward_proxy.clear()
    run = run_job({**env, **proxy_env(forward_proxy, "*.svc.cluster.local")}, tmp_path)
    uri = run.result()["uri"]
    targets = " ".join(target for _, target in forward_proxy.requests())
    for origin in origins:  # the Model Registry, S3 and the OCI registry
        assert origin in targets, (origin, forward_proxy.requests()[:20])
    repository, tag = uri.removeprefix(f"oci://{origins[2]}/").split(":")
    assert read_modelcar(registry_plain.host, repository, tag) == MODEL


def test_no_proxy_entries_bypass_the_proxy(
    forward_proxy: ForwardProxy, s3_to_oci_via_localhost: tuple[dict[str, str], list[str]], tmp_path: Path
) -> None:
    env, _ = s3_to_oci_via_localhost
    forward_proxy.clear()
    run = run_job({**env, **proxy_env(forward_proxy, "*.svc.cluster.local, localhost")}, tmp_path)
    assert run.code == 0, run.stderr[-3000:]
    assert forward_proxy.requests() == []


def test_a_star_dot_no_proxy_entry_keeps_in_cluster_traffic_off_the_proxy(
    forward_proxy: ForwardProxy, registry_standin: ModelRegistryStandin, tmp_path: Path
) -> None:
    """``*.svc.cluster.local`` as the upstream sample writes it: the in-cluster Model Registry is never asked
    through the proxy (the name does not resolve here, so the job fails, but directly)."""
    env = {
        **FAST,
        **registry_env("http://model-registry-service.kubeflow.svc.cluster.local:8080"),
        "MODEL_SYNC_MODEL_UPLOAD_INTENT": "update_artifact",
        "MODEL_SYNC_MODEL_ARTIFACT_ID": "1",
        "MODEL_SYNC_RETRY_ATTEMPTS": "1",
        **pvc_env(write_tree(tmp_path / "model", MODEL)),
        **oci_env("DESTINATION", "127.0.0.1:9/x/m:1"),
    }
    forward_proxy.clear()
    run = run_job({**env, **proxy_env(forward_proxy, "*.svc.cluster.local")}, tmp_path)
    run.assert_one_line_failure(code=1)
    assert "model-registry-service.kubeflow.svc.cluster.local" in run.message
    assert forward_proxy.requests() == []
