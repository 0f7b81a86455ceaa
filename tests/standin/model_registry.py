"""A stand-in for the Kubeflow Model Registry REST server (v1 and v1alpha3), for tests and the demo.

It follows the official spec (tests/standin/spec/model-registry.v1alpha3.openapi.yaml) and, where the real
server differs, the real server as documented in tests/standin/BEHAVIOURS.md ("§N" below).
Stdlib only. Run it in the foreground::

    poetry run python -m tests.standin.model_registry --host 127.0.0.1 --port 8080 [--require-token T]

or use :class:`ModelRegistryStandin` from a test (``start()`` serves on a background thread).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from tests.standin.registry_core import JSON, ApiError, OpRequest, RegistryStore, go_json, parse_body

__all__ = ["BASE_PATH", "BASE_PATHS", "ModelRegistryStandin", "RecordedRequest", "main"]

BASE_PATHS = {"v1alpha3": "/api/model_registry/v1alpha3", "v1": "/api/model_registry/v1"}
"""The two API generations: the same routes and bodies under another prefix (kubeflow/hub issue 2992). A
stand-in serves both unless told otherwise, as a server in the middle of that move would; one started with
a single generation answers the other's paths with chi's plain-text 404, as a real server of that
generation does."""
BASE_PATH = BASE_PATHS["v1alpha3"]
_JSON_TYPE = "application/json; charset=UTF-8"
_TEXT_TYPE = "text/plain; charset=utf-8"
_ID = r"(?P<id>[^/]+)"

# (method, path below BASE_PATH, RegistryStore operation, takes a body). Routing is chi-like: a known path
# with another method gets 405, anything else the plain-text 404 (§ intro).
_ROUTES: tuple[tuple[str, str, str, bool], ...] = (
    ("GET", "/registered_models", "list_registered_models", False),
    ("POST", "/registered_models", "create_registered_model", True),
    ("GET", f"/registered_models/{_ID}", "get_registered_model", False),
    ("PATCH", f"/registered_models/{_ID}", "update_registered_model", True),
    ("GET", "/registered_model", "find_registered_model", False),
    ("GET", f"/registered_models/{_ID}/versions", "list_registered_model_versions", False),
    ("POST", f"/registered_models/{_ID}/versions", "create_registered_model_version", True),
    ("GET", "/model_versions", "list_model_versions", False),
    ("POST", "/model_versions", "create_model_version", True),
    ("GET", f"/model_versions/{_ID}", "get_model_version", False),
    ("PATCH", f"/model_versions/{_ID}", "update_model_version", True),
    ("GET", "/model_version", "find_model_version", False),
    ("GET", f"/model_versions/{_ID}/artifacts", "list_model_version_artifacts", False),
    ("POST", f"/model_versions/{_ID}/artifacts", "upsert_model_version_artifact", True),
    ("GET", "/model_artifacts", "list_model_artifacts", False),
    ("POST", "/model_artifacts", "create_model_artifact", True),
    ("GET", f"/model_artifacts/{_ID}", "get_model_artifact", False),
    ("PATCH", f"/model_artifacts/{_ID}", "update_model_artifact", True),
    ("GET", "/model_artifact", "find_model_artifact", False),
    ("GET", "/artifacts", "list_artifacts", False),
    ("POST", "/artifacts", "create_artifact", True),
    ("GET", f"/artifacts/{_ID}", "get_artifact", False),
    ("PATCH", f"/artifacts/{_ID}", "update_artifact", True),
    ("GET", "/artifact", "find_artifact", False),
)
_COMPILED = {
    version: tuple((m, re.compile(re.escape(base) + p + r"\Z"), op, b) for m, p, op, b in _ROUTES)
    for version, base in BASE_PATHS.items()
}


class RecordedRequest(NamedTuple):
    """One request as the stand-in saw it (``headers`` keys are lower-case; ``json`` is None without a
    JSON body, the raw text if the body was not JSON)."""

    method: str
    path: str
    query: dict[str, list[str]]
    json: JSON
    headers: dict[str, str]
    status: int


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int | None
    body: JSON
    times: int
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(status: int, body: JSON) -> _Reply:
    # Go's json.Encoder adds a newline after the value.
    return _Reply(status, (go_json(body) + "\n").encode(), _JSON_TYPE)


def _error_reply(error: ApiError) -> _Reply:
    return _json_reply(error.status, {"code": error.code, "message": error.message})  # §5


def _text_reply(status: int, text: str) -> _Reply:
    # Go's http.Error: text/plain, nosniff, a trailing newline (chi's 404, kube-rbac-proxy's 401).
    return _Reply(status, (text + "\n").encode(), _TEXT_TYPE, {"X-Content-Type-Options": "nosniff"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    standin: ModelRegistryStandin


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as clients (httpx, aiohttp) expect
    timeout = 60
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms delayed-ACK stalls
    server_version = "model-registry-standin"
    sys_version = ""

    def do_GET(self) -> None:
        """Serve any method through the stand-in."""
        self.server.standin._handle(self)

    do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def read_body(self) -> bytes:
        """Read the whole request body (Content-Length or chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, reply: _Reply) -> None:
        """Write a reply; HEAD gets no body."""
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request on stderr, only when the stand-in was asked to log."""
        if self.server.standin.log_requests:
            super().log_message(format, *args)


class ModelRegistryStandin:
    """The stand-in server: an in-memory registry behind ``ThreadingHTTPServer``, with fault injection and a
    request log for tests.

    ``require_token`` emulates the kube-rbac-proxy in front of the real server: requests without
    ``Authorization: Bearer <token>`` get 401 ``Unauthorized`` in plain text. It may be changed while running.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        require_token: str | None = None,
        log_requests: bool = False,
        api_versions: Sequence[str] = tuple(BASE_PATHS),
    ) -> None:
        """Configure the server; nothing listens before :meth:`start` (or :meth:`serve_forever`).

        ``api_versions``: the API generations served (``v1alpha3``, ``v1``; both by default).
        """
        unknown = set(api_versions) - set(BASE_PATHS)
        if unknown or not api_versions:
            raise ValueError(f"api_versions must be some of {', '.join(BASE_PATHS)}, got {list(api_versions)}")
        self.api_versions = tuple(api_versions)
        self.host, self._port = host, port
        self.require_token = require_token
        self.log_requests = log_requests
        self.store = RegistryStore()
        self._log: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._meta_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    def _bind(self) -> _Server:
        if self._server is None:
            self._server = _Server((self.host, self._port), _Handler)
            self._server.standin = self
            self._port = int(self._server.server_address[1])  # a restart after stop() keeps the same URL
        return self._server

    def start(self) -> str:
        """Listen (port 0 picks a free port) and serve on a daemon thread; return :attr:`url`.

        After :meth:`stop`, ``start()`` listens again on the same port with the store kept (a server restart).
        """
        server = self._bind()
        if self._thread is None:
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="model-registry-standin", daemon=True
            )
            self._thread.start()
        return self.url

    def serve_forever(self) -> None:
        """Listen and serve on the calling thread until :meth:`stop` or KeyboardInterrupt."""
        try:
            self._bind().serve_forever(poll_interval=0.2)
        finally:
            self._close()

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._close()

    def _close(self) -> None:
        if self._server is not None:
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ModelRegistryStandin:
        """Start on entering a ``with`` block."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop on leaving a ``with`` block."""
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (once started; the requested one before)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port``: the server address, as the job and the Kubeflow client want it."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """:attr:`url` plus the base path of the first generation served (``/api/model_registry/v1alpha3``
        by default)."""
        return self.api_url_for(self.api_versions[0])

    def api_url_for(self, version: str) -> str:
        """:attr:`url` plus the base path of API generation ``version`` (``v1`` or ``v1alpha3``)."""
        return self.url + BASE_PATHS[version]

    # -- test API ------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the request log, oldest first."""
        with self._meta_lock:
            return list(self._log)

    def calls(self, method: str | None = None, path_regex: str | None = None) -> list[RecordedRequest]:
        """The logged requests with this method (any if None) whose path matches ``path_regex`` (re.search)."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper()) and (path_regex is None or re.search(path_regex, r.path))
        ]

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._meta_lock:
            self._log.clear()

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        body: JSON = None,
        times: int = 1,
        *,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` ("*" for any) and ``path_regex`` (re.search
        on the path, query excluded) with ``status`` instead of serving them.

        ``body``: None → ``{"code": <status text>, "message": "injected fault"}``; a str → plain text;
        anything else → JSON. ``headers`` are added (e.g. Retry-After). ``delay`` seconds are slept first.
        Faults apply before the token check and are matched in the order they were added.
        """
        self._add_fault(_Fault(method.upper(), re.compile(path_regex), status, body, times, dict(headers or {}), delay))

    def delay_next(self, method: str, path_regex: str, seconds: float, times: int = 1) -> None:
        """Sleep ``seconds`` before serving the next ``times`` matching requests normally (timeout tests)."""
        self._add_fault(_Fault(method.upper(), re.compile(path_regex), None, None, times, delay=seconds))

    def _add_fault(self, fault: _Fault) -> None:
        if fault.times < 1:
            raise ValueError("times must be >= 1")
        with self._meta_lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        with self._meta_lock:
            self._faults.clear()

    def reset(self) -> None:
        """Empty the store (ids restart at 1), the request log and the pending faults; keep require_token."""
        self.store.reset()
        with self._meta_lock:
            self._log.clear()
            self._faults.clear()

    # -- request handling ----------------------------------------------------------------------------------

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._meta_lock:
            for fault in self._faults:
                if fault.method in ("*", method) and fault.path.search(path):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _handle(self, handler: _Handler) -> None:
        parts = urlsplit(handler.path)
        path, method = unquote(parts.path), handler.command
        query = parse_qs(parts.query, keep_blank_values=True)
        raw = handler.read_body()
        try:
            reply = self._respond(method, path, query, raw, handler)
        except ApiError as exc:
            reply = _error_reply(exc)
        except Exception as exc:  # a stand-in bug: answer 500 like the real server's catch-all (§5)
            reply = _error_reply(ApiError(500, f"stand-in error: {exc!r}"))
        try:
            body: JSON = parse_body(raw) if raw.strip() else None
        except ApiError:
            body = raw.decode("utf-8", "replace")
        with self._meta_lock:
            self._log.append(
                RecordedRequest(
                    method, path, query, body, {k.lower(): v for k, v in handler.headers.items()}, reply.status
                )
            )
        handler.send(reply)

    def _respond(self, method: str, path: str, query: dict[str, list[str]], raw: bytes, handler: _Handler) -> _Reply:
        fault = self._take_fault(method, path)
        if fault is not None:
            time.sleep(fault.delay)
            if fault.status is not None:
                if isinstance(fault.body, str):
                    reply = _text_reply(fault.status, fault.body)
                else:
                    reply = _json_reply(
                        fault.status,
                        fault.body
                        if fault.body is not None
                        else {"code": ApiError(fault.status, "").code, "message": "injected fault"},
                    )
                reply.headers.update(fault.headers)
                return reply
        if self.require_token is not None and handler.headers.get("Authorization") != f"Bearer {self.require_token}":
            return _text_reply(401, "Unauthorized")  # kube-rbac-proxy in front of the server (§ intro)
        # §2: the validation middleware runs before routing and rejects NUL bytes in query values and bodies.
        for name, values in query.items():
            if any("\x00" in v or "\\u0000" in v for v in values):
                raise ApiError(
                    400,
                    f"Invalid {name} query parameter: invalid {name} parameter: contains null "
                    "bytes which are not allowed",
                )
        if b"\x00" in raw or b"\\u0000" in raw:
            raise ApiError(400, "Request body contains null bytes which are not allowed")
        allowed = []
        routes = (route for version in self.api_versions for route in _COMPILED[version])
        for route_method, pattern, op, has_body in routes:
            match = pattern.match(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            request = OpRequest(
                match.groupdict().get("id") or "",
                {k: v[0] for k, v in query.items()},
                parse_body(raw) if has_body else None,
            )
            status, body = getattr(self.store, op)(request)
            return _json_reply(status, body)
        if allowed:  # chi: known path, other method → 405 with an empty body
            return _Reply(405, headers={"Allow": ", ".join(allowed)})
        return _text_reply(404, "404 page not found")  # chi's NotFound (§ intro)


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: serve in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.standin.model_registry", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080, 0 = any free port)")
    parser.add_argument("--require-token", metavar="TOKEN", help="answer 401 unless 'Authorization: Bearer TOKEN'")
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    parser.add_argument(
        "--api-version",
        action="append",
        choices=tuple(BASE_PATHS),
        help="serve only this API generation (repeatable; default: both v1alpha3 and v1)",
    )
    args = parser.parse_args(argv)
    standin = ModelRegistryStandin(
        args.host,
        args.port,
        require_token=args.require_token,
        log_requests=not args.quiet,
        api_versions=args.api_version or tuple(BASE_PATHS),
    )
    signal.signal(signal.SIGTERM, _stop_on_signal)
    standin._bind()
    served = " and ".join(standin.api_url_for(v) for v in standin.api_versions)
    print(f"model registry stand-in listening on {served}", file=sys.stderr, flush=True)
    try:
        standin.serve_forever()
    except KeyboardInterrupt:
        print("model registry stand-in stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
