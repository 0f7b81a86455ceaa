"""Real servers for tests, the demo and the benchmark, started on 127.0.0.1 and stopped after use.

Each module starts one kind of server as a context manager; ``tests/conftest.py`` turns them into
session fixtures. Under ``CI=true`` a server that cannot start fails the run instead of skipping:
a green CI must mean the tests that need real servers ran.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when CI=true (or 1): missing servers are failures, not skips."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def server_unavailable(what: str, why: str) -> NoReturn:
    """Skip the test on a developer machine, fail it in CI."""
    message = f"{what} is not available: {why}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


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
