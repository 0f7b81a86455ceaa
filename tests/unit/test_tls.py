"""containers-certs.d for OCI registries (job.oci.certs): CAs and client certificates found by registry host, checked
with real TLS handshakes against a local server that trusts only its private CA and asks for a client cert."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from job.errors import ConfigError
from job.oci.certs import certs_d_dir, registry_ssl_context, untrusted_hint

EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", *EC, "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(extra + "\n")
        _openssl("req", *EC, "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))  # fmt: skip
    return d


@pytest.fixture
def mtls_server(pki: Path) -> Iterator[tuple[int, list[str]]]:
    """A TLS server on 127.0.0.1 presenting the CA-signed certificate and requiring a CA-signed client cert;
    yields its port and the client subjects it saw."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    seen: list[str] = []

    def serve() -> None:
        for _ in range(4):  # bounded: at most as many handshakes as the tests make
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    seen.append(dict(x[0] for x in tls.getpeercert()["subject"])["commonName"])
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], seen
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() the thread waits in
    listener.close()
    thread.join(timeout=10)


def _handshake(context: ssl.SSLContext, port: int) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.recv(2)


def test_ca_and_client_certificate_from_the_registry_s_certs_d_directory(
    pki: Path, mtls_server: tuple[int, list[str]], tmp_path: Path
) -> None:
    port, seen = mtls_server
    host_dir = tmp_path / "certs.d" / f"127.0.0.1:{port}"
    host_dir.mkdir(parents=True)
    (host_dir / "ca.crt").write_bytes((pki / "ca.pem").read_bytes())
    (host_dir / "client.cert").write_bytes((pki / "client.pem").read_bytes())
    (host_dir / "client.key").write_bytes((pki / "client.key").read_bytes())
    context = registry_ssl_context(ca_bundle=None, cert_dir=tmp_path / "certs.d", hosts=[f"127.0.0.1:{port}"])
    assert _handshake(context, port) == b"ok"
    assert seen == ["client"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_without_the_ca_the_handshake_fails(mtls_server: tuple[int, list[str]], tmp_path: Path) -> None:
    port, _ = mtls_server
    context = registry_ssl_context(ca_bundle=None, cert_dir=tmp_path / "empty", hosts=[f"127.0.0.1:{port}"])
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, port)


def test_another_registry_s_directory_is_not_used(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "certs.d" / "other.example:5000"
    other.mkdir(parents=True)
    (other / "ca.crt").write_bytes((pki / "ca.pem").read_bytes())
    assert certs_d_dir(tmp_path / "certs.d", ["127.0.0.1:5000", "registry.example"]) is None
    assert certs_d_dir(tmp_path / "certs.d", ["x", "other.example:5000"]) == other
    assert certs_d_dir(tmp_path / "certs.d", ["..", "."]) is None


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"ca.crt": "not a certificate"}, r"TLS file .*ca\.crt: cannot load it"),
        ({"client.cert": "x"}, r"client certificate .*client\.cert: the key client\.key is missing"),
        ({"client.key": "x"}, r"client key .*client\.key: the certificate client\.cert is missing"),
    ],
)
def test_a_broken_certs_d_file_is_a_config_error_naming_it(files: dict[str, str], message: str, tmp_path: Path) -> None:
    host_dir = tmp_path / "r.example"
    host_dir.mkdir()
    for name, text in files.items():
        (host_dir / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        registry_ssl_context(ca_bundle=None, cert_dir=tmp_path, hosts=["r.example"])


def test_the_hint_says_where_a_ca_can_go() -> None:
    hint = untrusted_hint("reg.example:5000", Path("/etc/containers/certs.d"), "MODEL_SYNC_SOURCE_OCI_CA_BUNDLE")
    assert hint == (
        "the TLS certificate of reg.example:5000 is not trusted: put its CA in "
        "/etc/containers/certs.d/reg.example:5000/ca.crt, or set the CA bundle (MODEL_SYNC_SOURCE_OCI_CA_BUNDLE)"
    )
