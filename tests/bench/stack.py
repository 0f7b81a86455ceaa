"""The bench's local stack: the source servers, the model in them, the Model Registry stand-in, and how model-sync
is started against them.

:meth:`Bench.setup` starts, all on 127.0.0.1, a source SeaweedFS (the model under ``s3://models/m/``), a source CNCF
distribution (the busybox base image and, for oci -> s3, a modelcar of the model pushed by model-sync), an http
server (busybox httpd) serving the model as a ``.tar.gz``, and the stand-in the job records into; for the rows
that need ``many``, the many-small-files model (:meth:`tests.bench.model.Model.many`) under ``s3://models/many/``.
A piece that cannot start (a server helper raises :class:`tests.servers.ServerUnavailable`) is kept in
``setup_errors`` and fails only the rows that need it. Every run's fresh destination is started by
:func:`tests.bench.runs.execute`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.bench.measure import run_step
from tests.bench.model import MiB, Model
from tests.bench.peers import VENV_BIN, S3Endpoint, Step
from tests.servers import free_port, listening
from tests.servers.registry import Registry, build_base_layout, distribution
from tests.servers.registry import _with_base as push_base
from tests.servers.s3 import S3Server, seaweedfs
from tests.standin.model_registry import ModelRegistryStandin

SRC_BUCKET, DST_BUCKET = "models", "dst"
MODEL_PREFIX, BIG_PREFIX, MANY_PREFIX, TINY_PREFIX, DST_PREFIX = "m/", "big/", "many/", "tiny/", "m/"
SOURCE_IMAGE = "models/source:v1"
SKOPEO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")
MANY_STEP_TIMEOUT = 900.0
"""A step's limit on the many-files model: skopeo 1.9's copy grows faster than its layer count (oci -> dir of an
olot layout: 5.4 CPU-s at 250 layers, 16.5 at 500), and pushing 2,005 layers takes it minutes on 2 cores."""


def say(text: str) -> None:
    """A progress line."""
    print(text, flush=True)


def quietly(cm: contextlib.AbstractContextManager[Any], stack: contextlib.ExitStack) -> Any:
    """Enter a server helper's context without its "ready at" line on our stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return stack.enter_context(cm)


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """busybox httpd (C, sendfile) serving ``folder``, else ``python -m http.server``; yields the base URL."""
    port = free_port()
    busybox = shutil.which("busybox")
    if busybox:
        argv = [busybox, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(folder)]
    else:
        argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(folder), str(port)]
    with listening(argv, port, argv[0]):
        yield f"http://127.0.0.1:{port}"


def endpoint(server: S3Server) -> S3Endpoint:
    """The peers' view of an S3 server."""
    return S3Endpoint(server.endpoint_url, server.access_key, server.secret_key)


MODEL_SYNC_COMMAND: list[str] = []
"""``--model-sync``: a command run instead of the console script (to compare a change)."""


def model_sync_argv() -> list[str]:
    """``--model-sync``'s command, else the ``model-sync`` console script of this venv, else ``python -m job``."""
    if MODEL_SYNC_COMMAND:
        return list(MODEL_SYNC_COMMAND)
    script = VENV_BIN / "model-sync"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "job"]


def reset_skopeo_cache() -> None:
    """Delete skopeo's blob-info cache, or a repeated push would skip blobs it believes are there."""
    with contextlib.suppress(OSError):
        SKOPEO_CACHE.unlink(missing_ok=True)


def s3_keys(side: str, server: S3Server) -> dict[str, str]:
    return {
        f"MODEL_SYNC_{side}_AWS_ENDPOINT": server.endpoint_url,
        f"MODEL_SYNC_{side}_AWS_REGION": "us-east-1",
        f"MODEL_SYNC_{side}_AWS_ACCESS_KEY_ID": server.access_key,
        f"MODEL_SYNC_{side}_AWS_SECRET_ACCESS_KEY": server.secret_key,
    }


class Bench:
    """The stack and the model every row's runs share, and the settings of the run (``args``)."""

    def __init__(self, args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> None:
        self.args, self.work, self.stack = args, work, stack
        self.model = Model.make(args.size_mib)
        self._many: Model | None = None
        self.tiny = Model.tiny()
        self.step_timeout: float = 60.0 + 150.0 * args.size_mib / 1024
        self.src_s3: S3Server | None = None
        self.src_oci: Registry | None = None
        self.standin: ModelRegistryStandin | None = None
        self.http_url: str | None = None
        self.setup_errors: dict[str, str] = {}
        self.shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else work

    # -- setup ---------------------------------------------------------------------------------------------

    def setup(self, needs: set[str]) -> None:
        """Start the servers and put the model where rows with these ``needs`` read it; failures are kept per piece.

        ``model``: the ``--size-mib`` model in the source S3 (every row but the many-files and start ones);
        ``many``: the many-small-files model there; ``tiny``: the 8-byte model (the start rows).
        """
        started = time.monotonic()
        self.standin = self.stack.enter_context(ModelRegistryStandin())
        self._try("s3", lambda: self._setup_s3(needs))
        if "many" in needs and "s3" not in self.setup_errors:
            self._try("many", self._setup_many)
        if "tiny" in needs and "s3" not in self.setup_errors:
            assert self.src_s3 is not None
            self._try("tiny", lambda: self.tiny.upload(self.src_s3.client(), SRC_BUCKET, TINY_PREFIX))
        self._try("registry", self._setup_registry)
        if "targz" in needs and self.model.root is not None:
            self._try("targz", self._setup_targz)
        if "image" in needs:
            self._try("image", self._setup_image)
        if "imagegz" in needs and "image" not in self.setup_errors:
            from tests.bench.gzip_rows import push_gzip_image  # imports this module: not at the top

            self._try("imagegz", lambda: push_gzip_image(self))
        say(f"setup done in {time.monotonic() - started:.1f} s" + "".join(f"; {k} FAILED" for k in self.setup_errors))

    def _try(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # tests.servers.ServerUnavailable included: a failed piece, not a crash
            self.setup_errors[what] = f"setup of {what} failed: {type(exc).__name__}: {exc}"
            say(self.setup_errors[what])

    def _setup_s3(self, needs: set[str]) -> None:
        if needs & {"disk", "targz", "image"}:
            t = time.monotonic()
            (self.work / "model").mkdir()
            self.model.write(self.work / "model")
            say(
                f"model: {self.model.total / MiB:.0f} MiB, {len(self.model.files)} files, written in {time.monotonic() - t:.1f} s"
            )
        self.src_s3 = quietly(seaweedfs(buckets=(SRC_BUCKET,)), self.stack)
        if "model" in needs:
            t = time.monotonic()
            self.model.upload(self.src_s3.client(timeout=120), SRC_BUCKET, MODEL_PREFIX)
            say(f"model uploaded to s3://{SRC_BUCKET}/{MODEL_PREFIX} in {time.monotonic() - t:.1f} s")

    def _setup_many(self) -> None:
        assert self.src_s3 is not None
        t = time.monotonic()
        self.many.upload(self.src_s3.client(timeout=120), SRC_BUCKET, MANY_PREFIX)
        say(
            f"many-files model: {self.many.total / MiB:.0f} MiB, {len(self.many.files)} files, uploaded to "
            f"s3://{SRC_BUCKET}/{MANY_PREFIX} in {time.monotonic() - t:.1f} s"
        )

    def _setup_registry(self) -> None:
        self.src_oci = quietly(distribution("plain"), self.stack)
        (self.work / "base").mkdir()
        build_base_layout(self.work / "base")
        push_base(self.src_oci, self.work / "base")

    def _setup_targz(self) -> None:
        www = self.work / "www"
        www.mkdir()
        t = time.monotonic()
        self.model.write_targz(www / "model.tar.gz")
        self.http_url = self.stack.enter_context(http_server(www)) + "/model.tar.gz"
        say(f"model.tar.gz written in {time.monotonic() - t:.1f} s")

    def _setup_image(self) -> None:
        """The oci -> s3 source: the model as a modelcar in the source registry, pushed by model-sync (pvc -> oci)."""
        if self.src_oci is None or self.model.root is None:
            raise RuntimeError("needs the source registry and the model on disk")
        env = self.model_sync_env(
            {"MODEL_SYNC_SOURCE_TYPE": "pvc", "MODEL_SYNC_SOURCE_PATH": str(self.model.root)},
            {
                "MODEL_SYNC_DESTINATION_TYPE": "oci",
                "MODEL_SYNC_DESTINATION_OCI_URI": f"{self.src_oci.host}/{SOURCE_IMAGE}",
                "MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE": self.src_oci.base,
                "MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY": "false",
            },
            self.work,
        )
        result = run_step(Step("push source image", model_sync_argv(), env), watch=[], timeout=self.step_timeout)
        if result.returncode != 0:
            raise RuntimeError(f"model-sync pvc->oci exited {result.returncode}: {result.tail[-1500:]}")
        say(f"source modelcar {self.src_oci.host}/{SOURCE_IMAGE} pushed in {result.wall:.1f} s")

    @property
    def many(self) -> Model:
        """The many-small-files model (built on first use: its small files' bytes are held in memory)."""
        if self._many is None:
            self._many = Model.many()
        return self._many

    def model_of(self, needs: frozenset[str]) -> Model:
        """The model a row with these ``needs`` syncs."""
        return self.many if "many" in needs else self.tiny if "tiny" in needs else self.model

    def timeout_of(self, needs: frozenset[str]) -> float:
        """Seconds a step of a row with these ``needs`` may take: ``MANY_STEP_TIMEOUT`` for the many-files rows."""
        return MANY_STEP_TIMEOUT if "many" in needs else self.step_timeout

    # -- model-sync ------------------------------------------------------------------------------------------

    def new_artifact(self) -> str:
        """A fresh RegisteredModel/ModelVersion/ModelArtifact in the stand-in; the run updates the artifact."""
        assert self.standin is not None
        api = self.standin.api_url

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            request = urllib.request.Request(
                api + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                doc: dict[str, Any] = json.load(response)
                return doc

        model = post("/registered_models", {"name": f"bench-{time.time_ns()}"})
        version = post(f"/registered_models/{model['id']}/versions", {"name": "v1", "registeredModelId": model["id"]})
        artifact = post(
            f"/model_versions/{version['id']}/artifacts",
            {"artifactType": "model-artifact", "name": "model", "state": "UNKNOWN"},
        )
        return str(artifact["id"])

    def model_sync_env(self, source: dict[str, str], dest: dict[str, str], work: Path) -> dict[str, str]:
        """The environment of one model-sync run, as a Job manifest would set it (update_artifact intent)."""
        assert self.standin is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_SYNC_")}
        env.update(source)
        env.update(dest)
        env.update(
            {
                "PYTHONDONTWRITEBYTECODE": "1",  # no .pyc writes counted as the job's disk use
                "MODEL_SYNC_MODEL_UPLOAD_INTENT": "update_artifact",
                "MODEL_SYNC_MODEL_ARTIFACT_ID": self.new_artifact(),
                "MODEL_SYNC_REGISTRY_SERVER_ADDRESS": self.standin.url,
                "MODEL_SYNC_REGISTRY_IS_SECURE": "false",
                "MODEL_SYNC_STORAGE_PATH": str(work / "storage"),
                "TERMINATION_MESSAGE_PATH": str(self.shm / f"model-sync-bench-{os.getpid()}-{time.time_ns()}.log"),
            }
        )
        return env

    # -- sources and the pieces rows use -------------------------------------------------------------------------

    def s3_source(self, prefix: str = MODEL_PREFIX) -> dict[str, str]:
        self.need("s3")
        if prefix in (MANY_PREFIX, TINY_PREFIX):
            self.need("many" if prefix == MANY_PREFIX else "tiny")
        assert self.src_s3 is not None
        return {
            "MODEL_SYNC_SOURCE_TYPE": "s3",
            "MODEL_SYNC_SOURCE_AWS_BUCKET": SRC_BUCKET,
            "MODEL_SYNC_SOURCE_AWS_KEY": prefix,
            **s3_keys("SOURCE", self.src_s3),
        }

    def need(self, what: str) -> None:
        """Raise the setup error of ``what`` (``s3``, ``many``, ``tiny``, ``registry``, ``targz``, ``image``) if its setup
        failed."""
        if what in self.setup_errors:
            raise RuntimeError(self.setup_errors[what])

    def source_s3(self) -> S3Server:
        """The source SeaweedFS."""
        self.need("s3")
        assert self.src_s3 is not None
        return self.src_s3

    def base_image(self) -> str:
        """The busybox base image in the source registry."""
        self.need("registry")
        assert self.src_oci is not None
        return self.src_oci.base

    def source_image(self) -> str:
        """The model as a modelcar in the source registry (the oci -> s3 rows' source)."""
        self.need("image")
        assert self.src_oci is not None
        return f"{self.src_oci.host}/{SOURCE_IMAGE}"

    def oci_source(self) -> dict[str, str]:
        return {
            "MODEL_SYNC_SOURCE_TYPE": "oci",
            "MODEL_SYNC_SOURCE_OCI_URI": self.source_image(),
            "MODEL_SYNC_SOURCE_OCI_ENABLE_TLS_VERIFY": "false",
        }

    def uri_source(self) -> dict[str, str]:
        self.need("targz")
        if self.http_url is None:
            raise RuntimeError("no tar.gz served (the model was not written to disk)")
        return {"MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI": self.http_url}

    def model_root(self) -> Path:
        if self.model.root is None:
            raise RuntimeError("the model is not on local disk")
        return self.model.root

    def pvc_source(self) -> dict[str, str]:
        return {"MODEL_SYNC_SOURCE_TYPE": "pvc", "MODEL_SYNC_SOURCE_PATH": str(self.model_root())}
