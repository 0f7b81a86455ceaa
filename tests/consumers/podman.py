"""Run a modelcar image the way KServe's pod runs it, with podman + runc (Debian: ``podman runc``).

What KServe (``pkg/webhook/admission/pod/`` utils ``CreateModelcarInitContainer`` /
``CreateModelcarContainer`` / ``ConfigureModelcarToContainer``) puts in the predictor pod, and what
:func:`run_modelcar` runs in its place:

1. **Init container** ``modelcar-init``, the image's default user: :data:`INIT_CHECK`, KServe's
   pre-fetch check (``[ -d /models ] && [ "$(ls -A /models)" ]``, with its OK/NOK lines). It fails on an
   image whose ``/models`` is missing or empty; when it fails, nothing else runs (:attr:`ModelcarRun.init_ok`).
2. **Sidecar** ``modelcar``, uid 1010 (KServe's ``uidModelcar``), an emptyDir on ``/mnt``:
   :data:`SIDECAR` = ``ln -sf /proc/$$/root/models /mnt/models && sleep infinity``. Run detached here, with
   a host temp dir (mode 0777, as an emptyDir) on ``/mnt``.
3. **Main container** (the model server), uid 1010, the same emptyDir on ``/mnt``, the pod's shared PID
   namespace (``shareProcessNamespace: true``): it reads the model through ``/mnt/models``, that is
   through ``/proc/<sidecar pid>/root/models``. Here: a second container started with
   ``--pid container:<sidecar>`` and the same ``/mnt`` (a faithful equivalent of the pod, not ``podman
   exec`` into the sidecar), running :data:`READER` from the same image, which prints the sha256 and size
   of every non-directory under ``/mnt/models/`` (``find -L``: links are followed as a model server would;
   a dangling one fails the read). The reader calls ``busybox find/sha256sum/stat`` explicitly, because
   the test base image (tests/servers/registry.py) links only the applets KServe needs. File names holding
   a newline are not supported. Then the sidecar is removed.

podman gets its own ``--root/--runroot/--tmpdir`` under a temp dir removed after each call, the
``overlay`` storage driver (as CRI-O's containers/storage: an image of more than 128 layers fails there
with ``max depth exceeded``; vfs has no such limit), ``--runtime runc`` (crun cannot set rlimits in this
sandbox), ``--network none``, explicit ``--ulimit``s (runc may not raise them here), and
``--tls-verify=false`` on the pull (a plain-http registry on 127.0.0.1; no registries.conf needed for a
fully qualified reference). Every podman call has a timeout.

A container that cannot start (podman exit code 125-127) gives :attr:`ModelcarRun.error` its stderr, e.g.
``mounting storage for container ...: max depth exceeded``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.consumers import ConsumerError, run, tail
from tests.servers import server_unavailable

MODELCAR_UID = 1010
"""KServe's ``storageInitializer.uidModelcar`` as its docs set it: the sidecar and the model server run as it."""

INIT_CHECK = (
    "echo 'Pre-fetching modelcar: ' && [ -d /models ] && [ \"$(ls -A /models)\" ]"
    " && echo 'OK ... Prefetched and valid (/models exists)'"
    " || (echo 'NOK ... Prefetched but modelcar is invalid (/models does not exist or is empty)' && exit 1)"
)
"""The init container's ``sh -c`` script, as the shell gets it (KServe's pod spec writes ``$`` as ``$$``); its
first ``echo`` leaves out the image name KServe puts there, which changes nothing checked."""

SIDECAR = "ln -sf /proc/$$/root/models /mnt/models && sleep infinity"
"""The modelcar sidecar's ``sh -c`` script."""

READER = (
    "cd /mnt/models/ || exit 2; busybox find -L . ! -type d -exec busybox sha256sum {} +; h=$?; echo '--sizes--';"
    " busybox find -L . ! -type d -exec busybox stat -L -c '%s %n' {} +; s=$?; [ $h = 0 ] && [ $s = 0 ]"
)
"""The main container's reader: ``HASH  ./path`` lines, a marker, then ``SIZE ./path`` lines; it reads every
file it can and exits non-zero if any could not be read."""

RUN_FLAGS = (
    "--runtime",
    "runc",
    "--network",
    "none",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=32768:32768",
    "--pull",
    "never",
)
PULL_TIMEOUT = 180.0
RUN_TIMEOUT = 120.0
STEP_TIMEOUT = 30.0
SIDECAR_READY_TIMEOUT = 15.0


@dataclass
class ModelcarRun:
    """What KServe's pod saw of one modelcar image."""

    image: str
    layers: int = 0
    """The image's layer count (``podman image inspect``: ``RootFS.Layers``), 0 when the pull failed."""
    init_ok: bool = False
    """KServe's init check passed (``/models`` exists and is not empty)."""
    init_output: str = ""
    """The init container's stdout and stderr (its OK/NOK line)."""
    error: str = ""
    """Why a step could not run: podman's or runc's words (pull failure, ``max depth exceeded``, ...)."""
    tree: dict[str, str] = field(default_factory=dict)
    """``{path relative to /models: sha256 hex}`` as the model server (uid 1010) read it via ``/mnt/models``."""
    sizes: dict[str, int] = field(default_factory=dict)
    """``{path relative to /models: size in bytes}``, the same files."""

    @property
    def served(self) -> bool:
        """Every step ran: the model server could read the whole tree."""
        return self.init_ok and not self.error


def _digest(value: bytes | Path) -> str:
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    sha = hashlib.sha256()
    with value.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


class _Podman:
    """podman with its own storage under ``folder`` (``--root``, ``--runroot``, ``--tmpdir``, overlay)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.base = [
            "podman",
            "--root",
            str(folder / "root"),
            "--runroot",
            str(folder / "runroot"),
            "--tmpdir",
            str(folder / "tmp"),
            "--storage-driver",
            "overlay",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]

    def __call__(
        self, what: str, *args: str, timeout: float = STEP_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(f"podman {what}", [*self.base, *args], timeout=timeout, check=check)

    def cleanup(self) -> None:
        """Remove every container of this storage, then anything still mounted under the folder."""
        with contextlib.suppress(ConsumerError):
            self("rm", "rm", "--all", "--force", "--time", "0", check=False)
        for mount in _mounts_under(self.folder):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=STEP_TIMEOUT, check=False)


def _mounts_under(folder: Path) -> list[str]:
    """Mount points below ``folder`` (deepest first), from /proc/self/mountinfo."""
    prefix = str(folder.resolve()) + "/"
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


@contextlib.contextmanager
def _podman() -> Iterator[_Podman]:
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            server_unavailable(tool, "it is not installed (apt-get install podman runc)")
    folder = Path(tempfile.mkdtemp(prefix="consumer-podman-"))
    podman = _Podman(folder)
    try:
        yield podman
    finally:
        podman.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def _could_not_start(result: subprocess.CompletedProcess[str]) -> bool:
    # podman's own exit codes: 125 podman failed, 126 the command could not be invoked (runc or the
    # storage refused the container), 127 not found. Our scripts exit 0 or 1 themselves.
    return result.returncode >= 125


def _parse_reader(output: str) -> tuple[dict[str, str], dict[str, int]]:
    hashes_text, _, sizes_text = output.partition("--sizes--\n")
    tree: dict[str, str] = {}
    for line in hashes_text.splitlines():
        digest, _, name = line.partition("  ")
        tree[name.removeprefix("./")] = digest
    sizes: dict[str, int] = {}
    for line in sizes_text.splitlines():
        size, _, name = line.partition(" ")
        sizes[name.removeprefix("./")] = int(size)
    return tree, sizes


def _wait_for_link(podman: _Podman, container: str, link: Path) -> str:
    """Wait until the sidecar made ``/mnt/models``; return "" or why not (its state and logs)."""
    deadline = time.monotonic() + SIDECAR_READY_TIMEOUT
    while time.monotonic() < deadline:
        if link.is_symlink():
            return ""
        state = podman("inspect", "inspect", "--format", "{{.State.Status}}", container, check=False)
        if state.stdout.strip() not in ("created", "running", "configured", ""):
            break
        time.sleep(0.05)
    logs = podman("logs", "logs", container, check=False)
    return (
        f"the sidecar made no /mnt/models link within {SIDECAR_READY_TIMEOUT:.0f} s: {tail(logs.stdout + logs.stderr)}"
    )


def run_modelcar(
    image_ref: str,
    expected: Mapping[str, bytes | Path] | None = None,
    *,
    tls_verify: bool = False,
    uid: int = MODELCAR_UID,
) -> ModelcarRun:
    """Pull ``image_ref`` into a private podman storage and run it as KServe's pod does (module docstring).

    Returns a :class:`ModelcarRun`: layer count, the init check's outcome, the tree the model server read,
    and ``error`` when a container could not start. With ``expected`` (``{path under /models: bytes or a
    local file}``), also assert that every step ran and that the tree read is exactly that (paths and
    sha256), and raise :class:`AssertionError` naming the differences otherwise.
    """
    result = ModelcarRun(image=image_ref)
    with _podman() as podman:
        pull = podman(
            "pull",
            "pull",
            "--quiet",
            f"--tls-verify={str(tls_verify).lower()}",
            image_ref,
            timeout=PULL_TIMEOUT,
            check=False,
        )
        if pull.returncode != 0:
            result.error = f"pull failed: {tail(pull.stderr)}"
            return _checked(result, expected)
        inspect = podman("image inspect", "image", "inspect", "--format", "{{json .RootFS.Layers}}", image_ref)
        result.layers = len(json.loads(inspect.stdout) or [])

        init = podman(
            "run (init)", "run", "--rm", *RUN_FLAGS, image_ref, "sh", "-c", INIT_CHECK, timeout=RUN_TIMEOUT, check=False
        )
        result.init_output = (init.stdout + init.stderr).strip()
        if _could_not_start(init):
            result.error = init.stderr.strip()
            return _checked(result, expected)
        result.init_ok = init.returncode == 0
        if not result.init_ok:
            return _checked(result, expected)

        emptydir = podman.folder / "mnt"
        emptydir.mkdir()
        os.chmod(emptydir, 0o777)  # an emptyDir is writable by the pod's users
        volume = f"{emptydir}:/mnt"
        user = ["--user", str(uid)]
        sidecar = podman(
            "run (sidecar)",
            "run",
            "--detach",
            "--name",
            "modelcar",
            *user,
            "--volume",
            volume,
            *RUN_FLAGS,
            image_ref,
            "sh",
            "-c",
            SIDECAR,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        if sidecar.returncode != 0:
            result.error = f"the sidecar did not start: {sidecar.stderr.strip()}"
            return _checked(result, expected)
        result.error = _wait_for_link(podman, "modelcar", emptydir / "models")
        if result.error:
            return _checked(result, expected)

        reader = podman(
            "run (model server)",
            "run",
            "--rm",
            "--name",
            "main",
            *user,
            "--pid",
            "container:modelcar",
            "--volume",
            volume,
            *RUN_FLAGS,
            image_ref,
            "sh",
            "-c",
            READER,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        if reader.returncode != 0:
            result.error = (
                f"the model server could not read /mnt/models (exit code {reader.returncode}): {tail(reader.stderr)}"
            )
        result.tree, result.sizes = _parse_reader(reader.stdout)
        podman("rm (sidecar)", "rm", "--force", "--time", "0", "modelcar", check=False)
    return _checked(result, expected)


def _checked(result: ModelcarRun, expected: Mapping[str, bytes | Path] | None) -> ModelcarRun:
    if expected is None:
        return result
    if not result.served:
        raise AssertionError(
            f"KServe would not serve {result.image}: init_ok={result.init_ok}, error={result.error!r},"
            f" init output:\n{result.init_output}"
        )
    want = {path: _digest(value) for path, value in expected.items()}
    if result.tree != want:
        missing = sorted(set(want) - set(result.tree))
        extra = sorted(set(result.tree) - set(want))
        changed = sorted(p for p in set(want) & set(result.tree) if want[p] != result.tree[p])
        raise AssertionError(
            f"/models of {result.image} as the model server read it differs: missing {missing}, unexpected"
            f" {extra}, different content {changed}"
        )
    return result
