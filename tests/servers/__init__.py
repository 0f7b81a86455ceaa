"""Real servers for tests, the demo and the benchmark, started on 127.0.0.1 and stopped after use.

Each module starts one kind of server as a context manager; :mod:`tests.servers.pytest_plugin` (loaded by
``tests/conftest.py``) turns them into session fixtures. A server that cannot start raises
:class:`ServerUnavailable`, which that plugin turns into a skip on a developer machine and into a failure under
``CI=true``: a green CI must mean the tests that need real servers ran. Nothing here imports pytest, so the demo
and the benchmark use these helpers as plain code (for them ``ServerUnavailable`` is an ordinary error).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import NoReturn


def in_ci() -> bool:
    """True when CI=true (or 1): missing servers are failures, not skips."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


class ServerUnavailable(RuntimeError):
    """A server or tool a test needs is missing or did not start; the message says which and why.

    Under pytest, :mod:`tests.servers.pytest_plugin` skips the test (fails it under ``CI=true``, see :func:`in_ci`).
    """


def server_unavailable(what: str, why: str) -> NoReturn:
    """Raise :class:`ServerUnavailable` ("<what> is not available: <why>"): pytest skips the test, or fails it in CI."""
    raise ServerUnavailable(f"{what} is not available: {why}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, *, timeout: float = 20.0, host: str = "127.0.0.1") -> bool:
    """Poll until ``host:port`` accepts TCP connections, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate ``proc`` (this process's own child, by PID); kill it if it does not exit in ``timeout`` s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@contextlib.contextmanager
def listening(argv: list[str], port: int, what: str, *, timeout: float = 10.0) -> Iterator[None]:
    """Run ``argv`` (quiet, no stdin) until the block ends; enter once it listens on 127.0.0.1:``port``, else
    ``RuntimeError`` naming ``what``. The process is stopped (:func:`stop_process`) either way."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_for_port(port, timeout=timeout):
            raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}")
        yield
    finally:
        stop_process(proc)
