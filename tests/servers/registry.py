"""OCI registries for tests: CNCF distribution 2.8 three ways, a token server, a busybox base image, skopeo.

Registries (``docker-registry serve CONFIG``, each with its own config, data dir and log under a temp
dir, on a free 127.0.0.1 port, stopped by PID):

* ``plain``: http, no auth (clients use ``tls_verify=False``, as with skopeo's ``--tls-verify=false``);
* ``htpasswd``: https with a self-signed cert (``subjectAltName=IP:127.0.0.1``) and a bcrypt htpasswd;
* ``token``: https, bearer tokens from :class:`TokenServer` (https too, same cert), an RS256 JWT signed by
  the cert's key with the cert in ``x5c``, granting what is asked when the password is right, and
  recording every scope it was asked for.

Every registry gets the test base image pushed with skopeo: ``base/busybox:latest`` (one layer: a static
busybox with ``sh``, ``ln``, ``sleep``, ``mkdir``, ``ls`` links and an *empty* ``models/`` directory) and
``base/busybox-multi:latest`` (an index: linux/amd64 and linux/arm64 with the same bytes).

skopeo is also the independent reader: :func:`skopeo_pull` copies an image into an OCI layout and
:func:`unpack_rootfs` flattens its layers (whiteouts honoured) into ``{path: TarEntry}``.

Session fixtures (in :mod:`tests.servers.pytest_plugin`): ``base_layout``, ``registry_plain``,
``registry_htpasswd``, ``registry_token``. Under ``CI=true`` a registry that cannot start fails the run
(``tests.servers.server_unavailable``).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import shutil
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import SecretStr

from job.config import OciLocation
from tests.servers import free_port, server_unavailable, stop_process, wait_for_port

Kind = Literal["plain", "htpasswd", "token"]
USERNAME = "model-sync"
PASSWORD = "s3cret-Pa55word"
SERVICE = "test-registry"
ISSUER = "test-token-issuer"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
BUSYBOX = Path("/bin/busybox")
BUSYBOX_LINKS = ("sh", "ln", "sleep", "mkdir", "ls")
BASE_REPO = "base/busybox"
BASE_MULTI_REPO = "base/busybox-multi"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass
class Registry:
    """A running distribution registry and how to reach it."""

    kind: Kind
    host: str
    root: Path
    log_path: Path
    username: str | None = None
    password: str | None = None
    ca_cert: Path | None = None
    cert_dir: Path | None = None
    token_server: TokenServer | None = None
    base: str = ""
    """``host/base/busybox:latest`` once pushed."""
    base_multi: str = ""
    """``host/base/busybox-multi:latest`` once pushed."""

    @property
    def tls(self) -> bool:
        return self.ca_cert is not None

    def location(self, reference: str, **changes: Any) -> OciLocation:
        """An :class:`OciLocation` for ``reference`` on this registry, with its login and TLS settings."""
        values: dict[str, Any] = {
            "reference": reference,
            "registry": self.host,
            "username": self.username,
            "password": SecretStr(self.password) if self.password else None,
            "tls_verify": self.tls,
            "ca_bundle": self.ca_cert,
            "base_image": self.base,
        }
        values.update(changes)
        return OciLocation(**values)

    def skopeo_args(self, side: Literal["src", "dest", ""]) -> list[str]:
        """skopeo's TLS and login flags for this registry (``side=""``: ``skopeo inspect``'s flags)."""
        flag = f"--{side}-" if side else "--"
        args = [f"{flag}cert-dir", str(self.cert_dir)] if self.tls else [f"{flag}tls-verify=false"]
        if self.username:
            args += [f"{flag}creds", f"{self.username}:{self.password}"]
        return args

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


# --- the token server -----------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenServer:
    """Docker's token protocol, enough for distribution: ``GET /token?service=&scope=..`` with basic auth."""

    def __init__(self, cert: Path, key: Path, users: dict[str, str]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert_obj = x509.load_pem_x509_certificate(cert.read_bytes())
        self._x5c = base64.b64encode(cert_obj.public_bytes(serialization.Encoding.DER)).decode("ascii")
        self._key = serialization.load_pem_private_key(key.read_bytes(), password=None)
        self._users = users
        self.requests: list[tuple[str | None, list[str]]] = []
        """(user, scopes) of every token request, in order."""
        self.port = free_port()
        self.realm = f"https://127.0.0.1:{self.port}/token"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="token-server", daemon=True)

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=STOP_TIMEOUT)

    def _user(self, header: str | None) -> str | None:
        if not header or not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if self._users.get(user) == password else None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(request.path).query)
        scopes = [s for value in query.get("scope", []) for s in value.split()]
        user = self._user(request.headers.get("Authorization"))
        self.requests.append((user, scopes))
        if user is None:
            body = json.dumps({"details": "bad or missing login"}).encode()
            request.send_response(401)
        else:
            body = json.dumps(
                {"token": self._jwt(user, query.get("service", [SERVICE])[0], scopes), "expires_in": 300}
            ).encode()
            request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def _jwt(self, user: str, service: str, scopes: Sequence[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        assert isinstance(self._key, rsa.RSAPrivateKey)
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


# --- distribution ---------------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _wait_ready(url: str, proc: subprocess.Popen[bytes], port: int) -> str | None:
    if not wait_for_port(port, timeout=START_TIMEOUT):
        return f"port {port} did not open within {START_TIMEOUT:.0f} s"
    context = ssl._create_unverified_context()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"it exited with code {proc.returncode}"
        try:
            urllib.request.urlopen(url + "/v2/", timeout=2, context=context)
            return None
        except urllib.error.HTTPError:
            return None  # 401: up, and asking for a login
        except OSError:
            time.sleep(0.05)
    return f"/v2/ did not answer within {START_TIMEOUT:.0f} s"


@contextlib.contextmanager
def distribution(kind: Kind) -> Iterator[Registry]:
    """Run ``docker-registry serve`` configured as ``kind`` (see the module docstring)."""
    binary = shutil.which("docker-registry")
    if binary is None:
        server_unavailable("CNCF distribution", "`docker-registry` is not installed (apt-get install docker-registry)")
    with tempfile.TemporaryDirectory(prefix=f"registry-{kind}-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        port = free_port()
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
        }
        registry = Registry(kind=kind, host=f"127.0.0.1:{port}", root=root, log_path=root / "registry.log")
        if kind != "plain":
            cert, key = _self_signed(root)
            registry.ca_cert = cert
            registry.cert_dir = root / "certs.d"
            registry.cert_dir.mkdir()
            shutil.copy(cert, registry.cert_dir / "ca.crt")
            registry.username, registry.password = USERNAME, PASSWORD
            config["http"]["tls"] = {"certificate": str(cert), "key": str(key)}
        if kind == "htpasswd":
            entry = subprocess.run(
                ["htpasswd", "-Bbn", USERNAME, PASSWORD], check=True, capture_output=True, text=True, timeout=30
            ).stdout.strip()
            (root / "htpasswd").write_text(entry + "\n")
            config["auth"] = {"htpasswd": {"realm": "basic-realm", "path": str(root / "htpasswd")}}
        if kind == "token":
            token_server = stack.enter_context(TokenServer(cert, key, {USERNAME: PASSWORD}))
            registry.token_server = token_server
            config["auth"] = {
                "token": {
                    "realm": token_server.realm,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(cert),
                }
            }
        config_path = root / "config.yml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        log = stack.enter_context(registry.log_path.open("wb"))
        proc = subprocess.Popen([binary, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
        try:
            scheme = "https" if registry.tls else "http"
            why = _wait_ready(f"{scheme}://{registry.host}", proc, port)
            if why is not None:
                tail = "\n".join(registry.log_path.read_text(errors="replace").splitlines()[-20:])
                server_unavailable(f"distribution ({kind})", f"{why}\n{tail}")
            yield registry
        finally:
            stop_process(proc, STOP_TIMEOUT)


# --- the base image -------------------------------------------------------------------------------


def _tar_gz(entries: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> tuple[bytes, bytes]:
    """(gzip bytes, uncompressed tar bytes) of ``entries``, reproducibly."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), tar_bytes


def tar_info(
    name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 0, mode: int = 0o644, link: str = ""
) -> tarfile.TarInfo:
    """A tar entry owned by root with a fixed mtime."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.linkname, info.mtime = kind, size, mode, link, 946684800
    return info


def busybox_layer() -> tuple[bytes, bytes]:
    """The base image's one layer (gzip, tar): bin/busybox, its links, and an empty models/ directory."""
    data = BUSYBOX.read_bytes()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (tar_info("bin/", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("bin/busybox", size=len(data), mode=0o755), data),
    ]
    entries += [(tar_info(f"bin/{name}", tarfile.SYMTYPE, mode=0o777, link="busybox"), None) for name in BUSYBOX_LINKS]
    entries.append((tar_info("models/", tarfile.DIRTYPE, mode=0o755), None))
    return _tar_gz(entries)


class OciLayout:
    """Write an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256``) for skopeo to push."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (folder / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.refs: list[dict[str, Any]] = []

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (self.folder / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data), **extra}

    def json_blob(self, document: dict[str, Any], media_type: str, **extra: Any) -> dict[str, Any]:
        return self.blob(json.dumps(document).encode(), media_type, **extra)

    def image(
        self,
        layers: Sequence[tuple[bytes, bytes, str]],
        *,
        arch: str = "amd64",
        config_extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store an image of ``(blob, uncompressed tar, media type)`` layers; return its manifest descriptor."""
        config = {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for _, t, _ in layers]},
            "history": [{"created_by": "test layer"} for _ in layers],
            **(config_extra or {}),
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": self.json_blob(config, "application/vnd.oci.image.config.v1+json"),
            "layers": [self.blob(blob, media_type) for blob, _, media_type in layers],
        }
        return self.json_blob(manifest, OCI_MANIFEST)

    def tag(self, descriptor: dict[str, Any], name: str) -> None:
        self.refs.append({**descriptor, "annotations": {"org.opencontainers.image.ref.name": name}})
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": self.refs}
        (self.folder / "index.json").write_text(json.dumps(index))


def build_base_layout(folder: Path) -> OciLayout:
    """The busybox base as ``latest`` (one platform) and ``multi`` (linux/amd64 + linux/arm64)."""
    layout = OciLayout(folder)
    blob, tar = busybox_layer()
    gz = "application/vnd.oci.image.layer.v1.tar+gzip"
    layout.tag(layout.image([(blob, tar, gz)]), "latest")
    entries = []
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        descriptor = layout.image([(blob, tar, gz)], arch=arch, config_extra={"variant": variant} if variant else None)
        platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
        entries.append({**descriptor, "platform": platform})
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    layout.tag(layout.json_blob(index, OCI_INDEX), "multi")
    return layout


# --- skopeo ---------------------------------------------------------------------------------------


def skopeo(*args: str, timeout: float = 120) -> str:
    """Run skopeo (``--insecure-policy``: no signature policy in tests) and return its stdout."""
    result = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args[:1])} failed: {result.stderr.strip()}")
    return result.stdout


def skopeo_push_layout(registry: Registry, layout: Path, tag: str, reference: str) -> None:
    """``skopeo copy --all oci:LAYOUT:TAG docker://REFERENCE`` with the registry's flags."""
    skopeo(
        "copy",
        "--all",
        "--quiet",
        "--preserve-digests",
        *registry.skopeo_args("dest"),
        f"oci:{layout}:{tag}",
        f"docker://{reference}",
    )


def skopeo_pull(registry: Registry, reference: str, folder: Path, *, arch: str | None = None) -> OciImage:
    """``skopeo copy docker://REFERENCE oci:FOLDER:pulled`` (one platform: ``arch`` or this machine's)."""
    extra = ["--override-arch", arch] if arch else []
    skopeo("copy", "--quiet", *extra, *registry.skopeo_args("src"), f"docker://{reference}", f"oci:{folder}:pulled")
    return OciImage.read(folder, "pulled")


def skopeo_inspect(registry: Registry, reference: str, *, raw: bool = False) -> dict[str, Any]:
    args = ["inspect", *(["--raw"] if raw else []), *registry.skopeo_args(""), f"docker://{reference}"]
    result: dict[str, Any] = json.loads(skopeo(*args))
    return result


@dataclass
class TarEntry:
    """One path of an unpacked rootfs."""

    kind: str  # "file", "dir", "symlink", "other"
    mode: int
    uid: int
    gid: int
    data: bytes = b""
    link: str = ""


@dataclass
class OciImage:
    """An image as skopeo wrote it into an OCI layout."""

    folder: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    layer_media_types: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path, ref: str) -> OciImage:
        index = json.loads((folder / "index.json").read_text())
        entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref)
        manifest = json.loads(cls._blob(folder, entry["digest"]))
        config = json.loads(cls._blob(folder, manifest["config"]["digest"]))
        return cls(folder, manifest, config, [layer["mediaType"] for layer in manifest["layers"]])

    @staticmethod
    def _blob(folder: Path, digest: str) -> bytes:
        return (folder / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()

    def layer_bytes(self, index: int) -> bytes:
        return self._blob(self.folder, self.manifest["layers"][index]["digest"])


def unpack_rootfs(image: OciImage) -> dict[str, TarEntry]:
    """Apply the image's layers in order (OCI whiteouts: ``.wh.<name>`` and ``.wh..wh..opq``)."""
    rootfs: dict[str, TarEntry] = {}
    for index in range(len(image.manifest["layers"])):
        with tarfile.open(fileobj=io.BytesIO(image.layer_bytes(index)), mode="r:*") as tar:
            members = tar.getmembers()
            for member in members:  # whiteouts apply to lower layers only: remove first, then add
                name = member.name.removeprefix("./").rstrip("/")
                parent, _, base = name.rpartition("/")
                if base == ".wh..wh..opq":
                    for path in [p for p in rootfs if p.startswith(parent + "/")]:
                        del rootfs[path]
                elif base.startswith(".wh."):
                    gone = (parent + "/" if parent else "") + base[4:]
                    for path in [p for p in rootfs if p == gone or p.startswith(gone + "/")]:
                        del rootfs[path]
            for member in members:
                name = member.name.removeprefix("./").rstrip("/")
                if name.rpartition("/")[2].startswith(".wh."):
                    continue
                if member.isdir():
                    entry = TarEntry("dir", member.mode, member.uid, member.gid)
                elif member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    entry = TarEntry("file", member.mode, member.uid, member.gid, data=extracted.read())
                elif member.issym():
                    entry = TarEntry("symlink", member.mode, member.uid, member.gid, link=member.linkname)
                else:
                    entry = TarEntry("other", member.mode, member.uid, member.gid, link=member.linkname)
                if entry.kind != "dir":
                    for path in [p for p in rootfs if p.startswith(name + "/")]:
                        del rootfs[path]
                rootfs[name] = entry
    return rootfs


def _with_base(registry: Registry, layout: Path) -> Registry:
    """Push the base images of ``layout`` to ``registry`` and record their references on it."""
    if shutil.which("skopeo") is None:
        server_unavailable("skopeo", "it is not installed (apt-get install skopeo)")
    registry.base = f"{registry.host}/{BASE_REPO}:latest"
    registry.base_multi = f"{registry.host}/{BASE_MULTI_REPO}:latest"
    skopeo_push_layout(registry, layout, "latest", registry.base)
    skopeo_push_layout(registry, layout, "multi", registry.base_multi)
    return registry
