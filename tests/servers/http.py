"""A local http server for the ``uri`` source: files with ranges, failure modes, archives, and a Hub emulation.

Two stdlib ``ThreadingHTTPServer`` instances on 127.0.0.1 (port 0, so no race for a port): ``origin`` and ``cdn``,
two origins, so a test can check which headers follow a redirect to another host. Both serve the same routes;
every request is recorded (``requests``: server, path, query, headers) for assertions.

Routes:

* ``GET|HEAD /files/<path>``: a file under ``root``, with ``ETag``, ``If-Match`` (412), ``If-Range``, one
  ``Range`` (206/416) and ``Accept-Ranges: bytes``. Query options: ``ranges=0`` (no ``Accept-Ranges``, ``Range``
  ignored), ``ranges=ignore`` (``Accept-Ranges: bytes``, yet ``Range`` ignored: a 200 with the whole file),
  ``etag=0`` (no ``ETag``: ``Last-Modified``, the file's mtime, is the validator ``If-Range`` is compared with), ``length=0`` (no ``Content-Length``: the body ends when the connection closes), ``drop=N&once=KEY``
  (close the connection after N body bytes, the first time only for each KEY), ``type=`` (Content-Type),
  ``disposition=`` (a Content-Disposition filename). Unknown query keys are ignored (presigned-style noise).
* ``/private/<path>``: like ``/files``, but 401 without ``X-Api-Key: API_KEY`` or ``Authorization: Bearer API_TOKEN``.
* ``/redirect/<route>/<path>?to=cdn|origin``: a 302 to ``/<route>/<path>`` on that server, query kept.
* The Hub: ``/api/models/<repo>/revision/<rev>`` (the commit sha), ``/api/models/<repo>/tree/<rev>`` (recursive
  listing, ``HUB_PAGE`` entries a page, ``Link: <...>; rel="next"``), ``/<repo>/resolve/<rev>/<path>`` (plain files
  served; LFS files, ``*.safetensors``/``*.bin``, a 302 to ``cdn`` ``/lfs/<sha256>?Expires=..&Signature=..``). A
  private repository wants ``Authorization: Bearer HF_TOKEN`` and otherwise answers 401 ``RepoNotFound``, like the Hub.

Fixture ``http_server`` (session, in :mod:`tests.servers.pytest_plugin`): both servers, with :data:`MODEL_FILES`
laid out as a tree and packed into every archive kind, the malicious archives, and the Hub repositories.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx

from tests.servers import server_unavailable, wait_for_port

API_KEY = "k3y-never-logged-7f1c"
API_TOKEN = "t0ken-never-logged-91ab"
HF_TOKEN = "hf_never_logged_5e2d"
HUB_PAGE = 2
CHUNK = 64 * 1024

_rng = random.Random(20240601)
MODEL_FILES: dict[str, bytes] = {
    "config.json": b'{"architectures": ["Tiny"], "hidden_size": 8}\n',
    "weights/model.safetensors": _rng.randbytes(3 * 1024 * 1024 + 17),
    "weights/empty.bin": b"",
    "tokenizer/vocab/vocab.txt": b"\n".join(f"tok{i}".encode() for i in range(5000)),
    "README.md": b"# tiny\n",
}
"""The model every archive and tree holds: nested dirs, a 0-byte file, one file of a few MiB."""
SINGLE = _rng.randbytes(2 * 1024 * 1024 + 3)


def tar_bytes(files: Mapping[str, bytes], *, gz: bool = False, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar (or tar.gz) of ``files`` with a directory entry for each folder, as ``tar -c`` writes them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=fmt) as tar:
        dirs = sorted({str(Path(name).parent) for name in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_with(entries: list[tarfile.TarInfo], files: Mapping[str, bytes] | None = None, *, gz: bool = False) -> bytes:
    """A tar of ``files`` followed by hand-made entries (links, devices, unsafe names)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in entries:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    return buf.getvalue()


def tar_entry(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", size: int = 0) -> tarfile.TarInfo:
    """One hand-made tar entry."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size
    return info


def zip_bytes(
    files: Mapping[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED, links: Mapping[str, str] | None = None
) -> bytes:
    """A zip of ``files`` (plus unix symlinks ``name -> target``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _lfs(path: str) -> bool:
    return path.endswith((".safetensors", ".bin"))


@dataclass
class HubRepo:
    """A model repository: its revisions (name -> files); ``private`` wants the token."""

    revisions: dict[str, dict[str, bytes]]
    private: bool = False

    def commit(self, revision: str) -> str:
        return hashlib.sha1(f"{id(self)}:{revision}".encode()).hexdigest()

    def find(self, revision: str) -> dict[str, bytes] | None:
        for name, files in self.revisions.items():
            if revision in (name, self.commit(name)):
                return files
        return None


@dataclass(frozen=True)
class Seen:
    """One request as a server received it."""

    server: str
    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class _State:
    root: Path
    repos: dict[str, HubRepo] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)
    urls: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that vanishes cannot park a thread for longer
    state: _State
    name: str

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self.state.lock:
            self.state.requests.append(
                Seen(
                    self.name,
                    self.command,
                    unquote(parts.path),
                    parts.query,
                    {k.lower(): v for k, v in self.headers.items()},
                )
            )
        path = unquote(parts.path)
        try:
            if path.startswith("/files/"):
                self._file(path.removeprefix("/files/"), query, head)
            elif path.startswith("/private/"):
                key, auth = self.headers.get("X-Api-Key"), self.headers.get("Authorization")
                if key != API_KEY and auth != f"Bearer {API_TOKEN}":
                    return self._error(401, "missing or wrong credentials")
                self._file(path.removeprefix("/private/"), query, head)
            elif path.startswith("/redirect/"):
                target = self.state.urls[query.get("to", "cdn")] + "/" + quote(path.removeprefix("/redirect/"))
                self._redirect(f"{target}?{parts.query}")  # the query goes along (a test's tag, say)
            elif path.startswith("/api/models/"):
                self._hub_api(path.removeprefix("/api/models/"), query)
            elif path.startswith("/lfs/") and path.removeprefix("/lfs/") in self.state.blobs:
                self._serve(self.state.blobs[path.removeprefix("/lfs/")], query, head)
            elif "/resolve/" in path:
                self._hub_resolve(path.strip("/"), head)
            else:
                self._error(404, "no such route")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # --- plain files ------------------------------------------------------------------------------------------

    def _file(self, rel: str, query: dict[str, str], head: bool) -> None:
        file = (self.state.root / rel).resolve()
        if not file.is_relative_to(self.state.root) or not file.is_file():
            return self._error(404, f"{rel} not found")
        st = file.stat()
        modified = formatdate(st.st_mtime, usegmt=True)
        self._serve(file.read_bytes(), query, head, etag=f'"{st.st_size:x}-{st.st_mtime_ns:x}"', modified=modified)

    def _serve(
        self, data: bytes, query: dict[str, str], head: bool, *, etag: str | None = None, modified: str | None = None
    ) -> None:
        etag = etag or '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
        validator: str | None = etag
        if query.get("etag") == "0":  # a server that dates its files and tags none
            etag, validator = None, modified
        ranges = query.get("ranges") not in ("0", "ignore")
        if_match = self.headers.get("If-Match")
        if etag and if_match and if_match != "*" and etag not in [t.strip() for t in if_match.split(",")]:
            return self._error(412, "precondition failed")
        start, end, status = 0, len(data), 200
        wanted = self.headers.get("Range")
        if ranges and wanted and self.headers.get("If-Range", validator) == validator:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            first, last = (m.group(1), m.group(2)) if m else ("", "")
            if first:
                start, end = int(first), min(len(data), int(last) + 1) if last else len(data)
            elif last:
                start = max(0, len(data) - int(last))
            if not m or start >= len(data) or start >= end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = memoryview(data)[start:end]
        self.send_response(status)
        self.send_header("Content-Type", query.get("type", "application/octet-stream"))
        if etag:
            self.send_header("ETag", etag)
        elif modified:
            self.send_header("Last-Modified", modified)
        if query.get("ranges") != "0":
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if "disposition" in query:
            self.send_header("Content-Disposition", f"attachment; filename=\"{query['disposition']}\"")
        if query.get("length") == "0":
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        drop = int(query.get("drop", -1))
        with self.state.lock:
            if drop >= 0 and query.get("once", "") in self.state.dropped:
                drop = -1
            elif drop >= 0:
                self.state.dropped.add(query.get("once", ""))
        for pos in range(0, len(body), CHUNK):
            piece = body[pos : pos + CHUNK]
            if 0 <= drop < pos + len(piece):
                self.wfile.write(piece[: max(0, drop - pos)])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(piece)

    def _redirect(self, location: str, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _error(self, status: int, message: str, *, code: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Request-Id", "req-test-1")
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # --- the Hub ----------------------------------------------------------------------------------------------

    def _repo(self, repo_id: str) -> HubRepo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and self.headers.get("Authorization") != f"Bearer {HF_TOKEN}"):
            # The Hub does not tell a private repository from a missing one.
            self._error(401, "Repository Not Found", code="RepoNotFound")
            return None
        return repo

    def _json(self, doc: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _hub_api(self, rest: str, query: dict[str, str]) -> None:
        m = re.fullmatch(r"([^/]+/[^/]+)/(revision|tree)/([^/]+)", rest)
        if not m:
            return self._error(404, "no such API route")
        repo = self._repo(m.group(1))
        if repo is None:
            return
        files = repo.find(m.group(3))
        if files is None:
            return self._error(404, f"Invalid rev id: {m.group(3)}", code="RevisionNotFound")
        if m.group(2) == "revision":
            sha = repo.commit(next(n for n, f in repo.revisions.items() if f is files))
            return self._json({"id": m.group(1), "sha": sha, "siblings": [{"rfilename": p} for p in files]})
        recursive = query.get("recursive", "").lower() in ("true", "1")
        entries: list[dict[str, Any]] = []
        for d in sorted({str(p) for name in files for p in Path(name).parents} - {"."}):
            if recursive or "/" not in d:
                entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
        for name, data in sorted(files.items()):
            if not recursive and "/" in name:
                continue
            entry: dict[str, Any] = {
                "type": "file",
                "oid": hashlib.sha1(data).hexdigest(),
                "size": len(data),
                "path": name,
            }
            if _lfs(name):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        cursor = int(base64.b64decode(query.get("cursor", "MA==")))
        headers = {}
        if cursor + HUB_PAGE < len(entries):
            nxt = base64.b64encode(str(cursor + HUB_PAGE).encode()).decode()
            link = f"{self.state.urls[self.name]}/api/models/{rest}?recursive={query.get('recursive', '')}&expand=false&cursor={quote(nxt)}"
            headers["Link"] = f'<{link}>; rel="next"'
        self._json(entries[cursor : cursor + HUB_PAGE], headers)

    def _hub_resolve(self, rest: str, head: bool) -> None:
        m = re.fullmatch(r"([^/]+/[^/]+)/resolve/([^/]+)/(.+)", rest)
        if not m:
            return self._error(404, "no such route")
        repo = self._repo(m.group(1))
        if repo is None:
            return
        files = repo.find(m.group(2))
        data = None if files is None else files.get(m.group(3))
        if data is None:
            return self._error(404, "Entry not found", code="EntryNotFound")
        if not _lfs(m.group(3)):
            return self._serve(data, {}, head, etag='"' + hashlib.sha1(data).hexdigest() + '"')
        sha = hashlib.sha256(data).hexdigest()
        with self.state.lock:
            self.state.blobs[sha] = data
        self._redirect(
            f"{self.state.urls['cdn']}/lfs/{sha}?Expires=9999999999&Signature=cdn-signature-secret",
            {"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)), "X-Repo-Commit": m.group(2)},
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a keep-alive connection left open by a test must not hold up shutdown

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients closing early is expected here
            super().handle_error(request, client_address)


@dataclass
class HttpTestServer:
    """Both servers, the served ``root`` and the request log."""

    root: Path
    origin: str
    cdn: str
    state: _State

    @property
    def requests(self) -> list[Seen]:
        return self.state.requests

    def url(self, path: str, *, server: str = "origin") -> str:
        return (self.origin if server == "origin" else self.cdn) + path

    def seen(self, path_prefix: str, *, server: str | None = None) -> list[Seen]:
        """Requests whose path starts with ``path_prefix`` (on ``server``, or either)."""
        return [r for r in list(self.requests) if r.path.startswith(path_prefix) and server in (None, r.server)]

    def add_repo(self, repo_id: str, repo: HubRepo) -> None:
        self.state.repos[repo_id] = repo

    def write(self, rel: str, data: bytes) -> str:
        """Put ``data`` at ``root/rel``; returns ``/files/rel``."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return "/files/" + rel


EVIL_TAR = {
    "dotdot": tar_entry("../evil.txt", size=4),
    "absolute": tar_entry("/etc/evil.txt", size=4),
    "symlink": tar_entry("escape", tarfile.SYMTYPE, link="../../etc/passwd"),
    "abs-symlink": tar_entry("escape", tarfile.SYMTYPE, link="/etc/passwd"),
    "hardlink": tar_entry("escape", tarfile.LNKTYPE, link="../outside"),
    "device": tar_entry("dev/null", tarfile.CHRTYPE),
}
"""Malicious tars by name -> the entry that must be refused (its name is in the error)."""
EVIL_ZIP = {"dotdot": ("../evil.txt", ""), "absolute": ("/etc/evil.txt", ""), "symlink": ("escape", "../../etc/passwd")}
"""Malicious zips by name -> (entry name, symlink target or "" for a file)."""


def populate(server: HttpTestServer) -> None:
    """The standard content: the model as a tree, every archive kind, the malicious archives, Hub repos."""
    for name, data in MODEL_FILES.items():
        server.write(f"model/{name}", data)
    server.write("single/model.safetensors", SINGLE)
    server.write("single/my model v2.bin", SINGLE[:1000])
    server.write("archives/model.tar", tar_bytes(MODEL_FILES))
    server.write("archives/model.tar.gz", tar_bytes(MODEL_FILES, gz=True))
    server.write("archives/model-gnu.tgz", tar_bytes(MODEL_FILES, gz=True, fmt=tarfile.GNU_FORMAT))
    server.write("archives/model.zip", zip_bytes(MODEL_FILES))
    server.write("archives/model-stored.zip", zip_bytes(MODEL_FILES, compression=zipfile.ZIP_STORED))
    server.write("archives/blob", tar_bytes(MODEL_FILES, gz=True))  # no extension: Content-Type decides
    links = [
        tar_entry("weights/current.safetensors", tarfile.SYMTYPE, link="model.safetensors"),
        tar_entry("config-copy.json", tarfile.LNKTYPE, link="config.json"),
        tar_entry("tok", tarfile.SYMTYPE, link="tokenizer/vocab"),
    ]
    server.write("archives/links.tar", tar_with(links, MODEL_FILES))
    server.write("archives/links.tar.gz", tar_with(links, MODEL_FILES, gz=True))
    server.write(
        "archives/links.zip", zip_bytes(MODEL_FILES, links={"weights/current.safetensors": "model.safetensors"})
    )
    for name, entry in EVIL_TAR.items():
        server.write(f"evil/{name}.tar", tar_with([entry], {"ok.txt": b"ok"}))
    for name, (entry_name, link) in EVIL_ZIP.items():
        files = {"ok.txt": b"ok"} if link else {"ok.txt": b"ok", entry_name: b"evil"}
        server.write(f"evil/{name}.zip", zip_bytes(files, links={entry_name: link} if link else None))
    hub_files = {**MODEL_FILES, "sub/dir/tokenizer.json": b'{"tok": 1}'}
    server.add_repo(
        "acme/tiny", HubRepo({"main": hub_files, "v1": {"config.json": b'{"v": 1}\n', "model.bin": SINGLE}})
    )
    server.add_repo("acme/private", HubRepo({"main": {"model.safetensors": SINGLE[:5000]}}, private=True))


@contextmanager
def http_servers() -> Iterator[HttpTestServer]:
    """Start ``origin`` and ``cdn`` on 127.0.0.1, populated; stop both on exit."""
    with tempfile.TemporaryDirectory(prefix="http-src-") as tmp:
        state = _State(root=Path(tmp).resolve())
        servers: list[ThreadingHTTPServer] = []
        threads: list[threading.Thread] = []
        try:
            for name in ("origin", "cdn"):
                handler = type(f"Handler_{name}", (_Handler,), {"state": state, "name": name})
                httpd = _Server(("127.0.0.1", 0), handler)
                servers.append(httpd)
                state.urls[name] = f"http://127.0.0.1:{httpd.server_address[1]}"
                thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
                thread.start()
                threads.append(thread)
                if not wait_for_port(httpd.server_address[1], timeout=5):
                    server_unavailable("local http server", f"{name} did not accept connections")
        except OSError as exc:
            for httpd in servers:
                httpd.server_close()
            server_unavailable("local http server", str(exc))
        server = HttpTestServer(root=state.root, origin=state.urls["origin"], cdn=state.urls["cdn"], state=state)
        try:
            populate(server)
            yield server
        finally:
            for httpd in servers:
                httpd.shutdown()
                httpd.server_close()
            for thread in threads:
                thread.join(timeout=5)
            shutil.rmtree(tmp, ignore_errors=True)


def range_responder(
    data: bytes, *, ranges: bool = True, etag: str | None = '"v1"', headers: Mapping[str, str] | None = None
) -> Any:
    """A respx side effect serving ``data`` like ``/files`` does: one ``Range`` (206/416), ``If-Match``, ETag.

    Records each request it answers in the returned function's ``requests`` list.
    """
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        base = {**({"ETag": etag} if etag else {}), **({"Accept-Ranges": "bytes"} if ranges else {}), **(headers or {})}
        if_match = request.headers.get("If-Match")
        if if_match and if_match != etag:
            return httpx.Response(412, headers=base)
        wanted = request.headers.get("Range")
        if not (ranges and wanted):
            return httpx.Response(200, headers=base, content=data)
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted)
        assert m, wanted
        if m.group(1):
            start, end = int(m.group(1)), min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
        else:
            start, end = max(0, len(data) - int(m.group(2))), len(data)
        if start >= len(data) or start >= end:
            return httpx.Response(416, headers={**base, "Content-Range": f"bytes */{len(data)}"})
        return httpx.Response(
            206, headers={**base, "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}, content=data[start:end]
        )

    respond.requests = seen  # type: ignore[attr-defined]
    return respond
