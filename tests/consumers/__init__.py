"""Consumers: the real programs that read what model-sync writes, run on its output.

model-sync's own tests check its output against our reading of formats and APIs; that reading can be
wrong in the same way in the writer and in the check. A consumer is a program we did not write and that a
user of model-sync really runs on its output, so each helper here runs one of them, as that user's cluster
would, and hands back what it saw:

* :mod:`tests.consumers.podman`: podman + runc run a modelcar image the way KServe's pod does (the init
  check, the sidecar's ``/proc/$$/root/models`` link, a reader as uid 1010 through ``/mnt/models``).
* :mod:`tests.consumers.kserve`: KServe's storage initializer (PyPI ``kserve-storage``) downloads an
  ``s3://`` prefix or an ``oci://`` modelcar.
* :mod:`tests.consumers.uibackend`: the Go struct Kubeflow's UI backend parses the termination message with.
* :mod:`tests.consumers.kubeflow_client`: Kubeflow's Python client (``model-registry`` 0.3.14 / 0.3.18)
  reads back what the job recorded in the Model Registry.

Each Python consumer lives in a venv of its own under ``.tools/consumers/`` (``make consumers``, part of
``make install``), so its pins never touch poetry.lock. A consumer that is missing skips the test on a
developer machine and fails it under ``CI=true`` (:func:`tests.servers.server_unavailable`). Every
subprocess has a timeout; temp dirs and containers are removed after each call.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.servers import server_unavailable

REPO = Path(__file__).resolve().parents[2]
CONSUMER_VENVS = REPO / ".tools" / "consumers"
"""Where ``make consumers`` puts the consumers' venvs (``kserve``, ``mr-0.3.14``, ``mr-0.3.18``)."""


class ConsumerError(AssertionError):
    """A consumer refused our output, or failed on it: ``str()`` holds its own words (stderr's tail)."""

    def __init__(self, what: str, returncode: int | None, output: str) -> None:
        self.what, self.returncode, self.output = what, returncode, output
        code = "timed out" if returncode is None else f"exit code {returncode}"
        super().__init__(f"{what} failed ({code}):\n{tail(output)}")


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text`` (a consumer's log can be long; its error is at the end)."""
    return "\n".join(text.splitlines()[-lines:])


def venv_python(name: str) -> Path:
    """The interpreter of consumer venv ``name``; skip (fail in CI) when ``make consumers`` has not run."""
    python = CONSUMER_VENVS / name / "bin" / "python"
    if not python.is_file():
        server_unavailable(f"consumer venv {name}", f"{python} is missing (run `make consumers`)")
    return python


def run(
    what: str,
    args: Sequence[str | Path],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` for at most ``timeout`` s (killed after); raise :class:`ConsumerError` on a timeout, or
    on a non-zero exit when ``check``."""
    try:
        result = subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise ConsumerError(f"{what} (after {timeout:.0f} s)", None, out + err) from None
    if check and result.returncode != 0:
        raise ConsumerError(what, result.returncode, result.stdout + result.stderr)
    return result
