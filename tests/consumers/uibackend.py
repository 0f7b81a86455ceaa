"""Kubeflow's UI backend reading model-sync's termination message, with Go's own ``encoding/json``.

The UI backend (kubeflow/hub ``clients/ui/bff/internal/repositories/model_transfer_jobs.go``) unmarshals
the success message of a transfer job into a struct of three pointers, ``RegisteredModel``,
``ModelVersion`` and ``ModelArtifact``, each ``{ID string `json:"id"`}``. ``uibackend.go`` beside this
file holds that struct and prints the three ids it got as JSON (``""`` for an absent object).

:func:`ui_backend_ids` builds it once per process with Debian's ``golang-go`` (stdlib only, offline:
``GOPROXY=off``, ``GOCACHE``/``GOPATH`` in a temp dir removed at exit), then runs it on a message.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

from tests.consumers import run
from tests.servers import server_unavailable

SOURCE = Path(__file__).with_name("uibackend.go")
BUILD_TIMEOUT = 180.0
RUN_TIMEOUT = 30.0


@functools.cache
def uibackend_binary() -> Path:
    """Build ``uibackend.go`` (once per process) and return the binary's path."""
    go = shutil.which("go")
    if go is None:
        server_unavailable("the Go toolchain", "`go` is not installed (apt-get install golang-go)")
    folder = Path(tempfile.mkdtemp(prefix="consumer-go-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder),
        "GOCACHE": str(folder / "cache"),
        "GOPATH": str(folder / "gopath"),
        "GOENV": "off",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    binary = folder / "uibackend"
    run("go build uibackend.go", [go, "build", "-o", binary, SOURCE], timeout=BUILD_TIMEOUT, env=env, cwd=folder)
    return binary


def ui_backend_ids(message: str | bytes | Path) -> dict[str, str]:
    """The three ids the UI backend reads from a termination message (its text, or a file holding it).

    Returns ``{"RegisteredModel": id, "ModelVersion": id, "ModelArtifact": id}`` (``""`` where the object
    is absent). A message Go's decoder rejects raises :class:`~tests.consumers.ConsumerError` holding Go's
    error, e.g. ``json: cannot unmarshal number into Go struct field .RegisteredModel.id of type string``.
    """
    binary = uibackend_binary()
    if isinstance(message, Path):
        return _parse(run("uibackend", [binary, message], timeout=RUN_TIMEOUT).stdout)
    with tempfile.TemporaryDirectory(prefix="consumer-uibackend-") as folder:
        path = Path(folder) / "termination-log"
        path.write_bytes(message.encode() if isinstance(message, str) else message)
        return _parse(run("uibackend", [binary, path], timeout=RUN_TIMEOUT).stdout)


def _parse(stdout: str) -> dict[str, str]:
    ids: dict[str, str] = json.loads(stdout)
    return ids
