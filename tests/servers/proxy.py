"""A forward HTTP proxy for tests: Debian's ``tinyproxy`` on 127.0.0.1, with its request log.

Clients that honour ``HTTP_PROXY``/``HTTPS_PROXY`` send absolute-form requests (``GET http://host/path``) or
``CONNECT host:port`` to it; :meth:`ForwardProxy.requests` reads them back from tinyproxy's log, so a test can
tell which servers a job reached through the proxy and which it reached directly (``NO_PROXY``).

Session fixture: ``forward_proxy`` (in :mod:`tests.servers.pytest_plugin`). Under ``CI=true`` a proxy that cannot
start fails the run.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port, server_unavailable, stop_process, wait_for_port

_REQUEST = re.compile(r"Request \(file descriptor \d+\): (?P<method>[A-Z]+) (?P<target>\S+) HTTP/")


@dataclass
class ForwardProxy:
    """A running tinyproxy."""

    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, str]]:
        """``(method, target)`` of every request since the last :meth:`clear`, oldest first."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [(m["method"], m["target"]) for m in _REQUEST.finditer(text)]

    def clear(self) -> None:
        """Forget the requests so far (tinyproxy appends to the emptied file)."""
        self.log_path.write_text("")


@contextlib.contextmanager
def tinyproxy() -> Iterator[ForwardProxy]:
    """Run ``tinyproxy -d -c CONFIG`` on a free port of 127.0.0.1 (allowing 127.0.0.1 only)."""
    binary = shutil.which("tinyproxy")
    if binary is None:
        server_unavailable("tinyproxy", "not installed (apt-get install tinyproxy; `make test` does)")
    with tempfile.TemporaryDirectory(prefix="tinyproxy-") as tmp:
        port, log_path = free_port(), Path(tmp) / "tinyproxy.log"
        config = Path(tmp) / "tinyproxy.conf"
        config.write_text(
            f'Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile "{log_path}"\nLogLevel Info\n'
            "MaxClients 64\nDisableViaHeader Yes\nAllow 127.0.0.1\n"
        )
        proc = subprocess.Popen([binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not wait_for_port(port, timeout=10):
                server_unavailable("tinyproxy", f"port {port} did not open within 10 s")
            yield ForwardProxy(port, log_path)
        finally:
            stop_process(proc)
