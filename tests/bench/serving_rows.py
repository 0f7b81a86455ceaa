"""The serving rows: a storage initializer filling a fresh directory, as KServe's init container fills
``/mnt/models``. model-sync's initializer mode (``model-sync <storage-uri> <dest-dir>``) is measured against
KServe's own initializer, ``kserve-storage``'s ``Storage.download(uri, out_dir)`` (the venv ``make consumers``
puts under ``.tools/consumers/kserve``, see :mod:`tests.consumers.kserve`), on the same uri:

* ``s3-dir/*``: ``s3://models/m/``, the ``--size-mib`` model in the source S3, with the env KServe sets
  (``AWS_ENDPOINT_URL``, the keys, ``AWS_DEFAULT_REGION``, ``S3_VERIFY_SSL=0``), which model-sync reads too;
* ``oci-dir/*``: ``oci://<source registry>/models/source:v1``, the modelcar of that model the oci -> s3 rows read
  (pushed by model-sync at setup), on a plain-http registry (``MODEL_SYNC_SOURCE_OCI_ENABLE_TLS_VERIFY=false``,
  ``KSERVE_OCI_INSECURE_REGISTRY=true``).

Each run is one process tree, measured like every other row (interpreter start-up included): model-sync's
console script, and the kserve venv's python running :data:`KSERVE_SCRIPT`. Both get the same base environment
(this one without ``MODEL_SYNC_*``/``AWS_*``, and a ``HOME`` and ``TMPDIR`` of their own in the run's scratch
dir; ``S3_MAX_FILE_CONCURRENCY`` passes through, kserve's processes for s3://, default 4). The directory exists
and is empty before the run (an emptyDir) and lies outside the scratch dir, so "temp disk" shows only what a tool
stages elsewhere. The check: the directory holds exactly the model's files, each with its size and sha256, and
nothing else (no ``.part``/temp file or folder left behind).

Opt-in (``--only 's3-dir/*,oci-dir/*'``), so ``make bench``'s default table and its smoke test keep their rows.
Without the kserve venv its rows fail with the reason (run ``make consumers``); the other rows run.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path, PurePosixPath

from tests.bench.model import Model
from tests.bench.peers import MissingTool, Step
from tests.bench.rows import Row, Run
from tests.bench.stack import MODEL_PREFIX, SRC_BUCKET, Bench, model_sync_argv
from tests.consumers import CONSUMER_VENVS
from tests.consumers.kserve import OCI_INSECURE_ENV
from tests.consumers.kserve import s3_env as kserve_s3_env

KSERVE_VENV = CONSUMER_VENVS / "kserve"
KSERVE_SCRIPT = """
import sys, tarfile
if sys.argv[1].startswith("oci://") and not hasattr(tarfile, "data_filter"):
    sys.exit("Python " + sys.version.split()[0] + " has no tarfile filter='data' (kserve's oci:// needs >= 3.11.4)")
from kserve_storage import Storage
Storage.download(sys.argv[1], sys.argv[2])
"""
"""What the storage-initializer container runs, in short: ``Storage.download(uri, out_dir)``."""
HASH_CHUNK = 8 * 1024 * 1024


def kserve_python() -> Path:
    """The kserve venv's interpreter; :class:`MissingTool` (the row's error, not the bench's) when absent."""
    python = KSERVE_VENV / "bin" / "python"
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise MissingTool(f"kserve-storage is not installed: {python} is missing (run `make consumers`)")
    return python


def kserve_label() -> str:
    """``kserve-storage <version>``, from the venv's dist-info (no interpreter started)."""
    found = sorted(KSERVE_VENV.glob("lib/python3*/site-packages/kserve_storage-*.dist-info"))
    version = found[-1].name.removeprefix("kserve_storage-").removesuffix(".dist-info") if found else "(missing)"
    return f"kserve-storage {version} Storage.download"


def _base_env(run: Run) -> dict[str, str]:
    """Both initializers' environment before their own variables: this one without model-sync's or AWS'
    variables, no bytecode writes, and a HOME and TMPDIR in the run's scratch dir (watched for temp disk)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_SYNC_", "AWS_"))}
    for name in ("home", "tmp"):
        (run.work / name).mkdir(exist_ok=True)
    env.update({"HOME": str(run.work / "home"), "TMPDIR": str(run.work / "tmp"), "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def _dest(run: Run) -> Path:
    assert run.dst_dir is not None
    return run.dst_dir


def model_sync_serve(run: Run, uri: str, env: dict[str, str]) -> list[Step]:
    """``model-sync <uri> <dir>`` (initializer mode) with ``env``; its termination message in ``/dev/shm``."""
    bench = run.bench
    full = {
        **_base_env(run),
        **env,
        "MODEL_SYNC_STORAGE_PATH": str(run.work / "storage"),
        "TERMINATION_MESSAGE_PATH": str(bench.shm / f"model-sync-bench-{os.getpid()}-{time.time_ns()}.log"),
    }
    return [Step("model-sync", [*model_sync_argv(), uri, str(_dest(run))], full)]


def kserve_serve(run: Run, uri: str, env: dict[str, str]) -> list[Step]:
    """The kserve venv's python running ``Storage.download(uri, dir)`` with ``env``."""
    argv = [str(kserve_python()), "-c", KSERVE_SCRIPT, uri, str(_dest(run))]
    return [Step("kserve-storage", argv, {**_base_env(run), **env})]


# --- the check -------------------------------------------------------------------------------------------------

_DIGESTS: dict[Path, dict[str, tuple[int, str]]] = {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_digests(model: Model) -> dict[str, tuple[int, str]]:
    """Every model file's (size, sha256), read once from the model on local disk."""
    if model.root is None:
        raise RuntimeError("the model is not on local disk: nothing to compare the directory with")
    if model.root not in _DIGESTS:
        _DIGESTS[model.root] = {name: (size, _sha256(model.root / name)) for name, size in model.files.items()}
    return _DIGESTS[model.root]


def check_dir(run: Run) -> None:
    """The directory holds exactly the model: every file with its size and sha256, and nothing else (no file,
    folder or link that is not the model's: a ``.part`` or temp file left behind fails the run)."""
    root = _dest(run)
    want = model_digests(run.bench.model)
    folders = {str(p) for name in want for p in PurePosixPath(name).parents if str(p) != "."}
    found: dict[str, Path] = {}
    stray: list[str] = []
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or (name in dirs and rel not in folders):
                stray.append(rel + ("/" if name in dirs else ""))
            elif name in files:
                if path.is_file():
                    found[rel] = path
                else:
                    stray.append(rel)
    stray += sorted(set(found) - set(want))
    missing = sorted(set(want) - set(found))
    wrong = []
    for name, (size, sha) in want.items():
        if name not in found:
            continue
        got = found[name].stat().st_size
        if got != size:
            wrong.append(f"{name}: {got} bytes, expected {size}")
        elif _sha256(found[name]) != sha:
            wrong.append(f"{name}: sha256 differs")
    if missing or stray or wrong:
        raise AssertionError(
            f"{root} is not exactly the model: missing {missing[:3]}, extra {sorted(stray)[:5]}, wrong {wrong[:3]}"
        )


# --- the rows --------------------------------------------------------------------------------------------------


def serving_rows(bench: Bench) -> list[Row]:
    """s3 -> dir and oci -> dir: model-sync's initializer mode and kserve-storage on the same uri (opt-in)."""
    s3_uri = f"s3://{SRC_BUCKET}/{MODEL_PREFIX}"

    def s3_env() -> dict[str, str]:
        return kserve_s3_env(bench.source_s3())

    def oci_uri() -> str:
        return f"oci://{bench.source_image()}"

    kserve = kserve_label()
    ms_oci = {"MODEL_SYNC_SOURCE_OCI_ENABLE_TLS_VERIFY": "false"}
    return [
        Row(
            "s3-dir/model-sync",
            "s3->dir (initializer)",
            "model-sync",
            "dir",
            lambda r: model_sync_serve(r, s3_uri, s3_env()),
            check_dir,
            needs=frozenset({"disk"}),
            opt_in=True,
        ),
        Row(
            "s3-dir/kserve-storage",
            "s3->dir (initializer)",
            kserve,
            "dir",
            lambda r: kserve_serve(r, s3_uri, s3_env()),
            check_dir,
            baseline="s3-dir/model-sync",
            needs=frozenset({"disk"}),
            opt_in=True,
        ),
        Row(
            "oci-dir/model-sync",
            "oci->dir (initializer)",
            "model-sync",
            "dir",
            lambda r: model_sync_serve(r, oci_uri(), ms_oci),
            check_dir,
            needs=frozenset({"image"}),
            opt_in=True,
        ),
        Row(
            "oci-dir/kserve-storage",
            "oci->dir (initializer)",
            kserve,
            "dir",
            lambda r: kserve_serve(r, oci_uri(), dict(OCI_INSECURE_ENV)),
            check_dir,
            baseline="oci-dir/model-sync",
            needs=frozenset({"image"}),
            opt_in=True,
        ),
    ]
