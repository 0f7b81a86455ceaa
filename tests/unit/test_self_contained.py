"""The repository is self-contained: no file names a path outside it.

A checkout on another machine has only what git holds, so a file that reads, or a doc that cites, something
under the workspace's shared directory or this checkout's absolute path breaks there (``make test`` once
stopped at collection on a missing spec file). Reference material the project needs is copied in, e.g.
``tests/standin/spec/`` and ``tests/standin/BEHAVIOURS.md``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Built from pieces so that this file does not name them itself. Not followed by a name character, so that a
# relative link such as "../shared_pass.py" (job/formats/shared_pass.py) is not taken for the shared directory.
_OUTSIDE = ("/work" + "/shared", ".." + "/shared", "/work" + "/main")
OUTSIDE_PATH = re.compile("(?:" + "|".join(re.escape(p) for p in _OUTSIDE) + r")(?![\w-])")


def repository_files() -> list[str]:
    """Every file git tracks or would track (untracked but not ignored), relative to the repository root."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: the file list comes from git ls-files")
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout
    return sorted({name.decode() for name in listing.split(b"\0") if name})


def offences(relative: str) -> list[str]:
    """``path:line: text`` for each line of a text file naming an outside path; a symlink's target counts."""
    path = REPO_ROOT / relative
    if path.is_symlink():
        target = os.readlink(path)
        return [f"{relative}: symlink to {target}"] if OUTSIDE_PATH.search(target) else []
    if not path.is_file():  # tracked but deleted in the work tree
        return []
    data = path.read_bytes()
    if b"\0" in data:  # binary
        return []
    text = data.decode("utf-8", errors="replace")
    return [
        f"{relative}:{number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), 1)
        if OUTSIDE_PATH.search(line)
    ]


def test_the_pattern_catches_outside_paths_only() -> None:
    for outside in _OUTSIDE:
        assert OUTSIDE_PATH.search(f"see {outside}/reference/spec.yaml")
        assert OUTSIDE_PATH.search(f"`{outside}`")
    assert not OUTSIDE_PATH.search("[shared pass](../shared_pass.py)")
    assert not OUTSIDE_PATH.search("tests/standin/spec/model-registry.v1alpha3.openapi.yaml")


def test_no_file_names_a_path_outside_the_repository() -> None:
    found = [line for f in repository_files() for line in offences(f)]
    assert not found, "paths outside the repository:\n" + "\n".join(found)


_NO_OUTSIDE_READS = """
import os, sys
outside = [os.path.realpath(p) for p in sys.argv[1:]]
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if any(path == o or path.startswith(o + os.sep) for o in outside):
            raise PermissionError(f"read outside the repository: {path}")
sys.addaudithook(hook)
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--collect-only", "tests"]))
"""


def test_collection_reads_nothing_outside_the_repository() -> None:
    """As on a machine without the workspace's shared directory: collecting every test opens no file there."""
    shared = REPO_ROOT.parent / "shared"
    result = subprocess.run(
        [sys.executable, "-c", _NO_OUTSIDE_READS, str(shared)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "read outside the repository" not in result.stdout + result.stderr
