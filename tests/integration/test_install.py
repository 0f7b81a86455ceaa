"""The image's install, for real: the Dockerfile's builder steps run outside Docker, the result as a non-root user.

There is no Docker engine here, so this test executes the builder stage itself: ENV, WORKDIR and
COPY as Docker would (honouring .dockerignore), and every RUN verbatim through ``/bin/sh -c``,
with the absolute paths it uses (``/opt/poetry``, ``/opt/venv``, the WORKDIR) mapped into a temp
dir. ``python`` and ``pip`` are this machine's (the workplace's pip reaches the package index);
everything else is the Dockerfile's own text. A change to the builder's steps is tested here as
soon as it is made.

The venv the final stage copies is then run the way the image runs it: as the image's numeric
user (uid 65532, which owns nothing), with the final stage's ENV, ``HOME=/nonexistent`` and cwd
``/``, so nothing can be written and the project checkout is not importable.

Slow (poetry and the runtime dependencies are downloaded and installed once per session, about
1-2 minutes); under CI=true anything that prevents it is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from packaging.utils import canonicalize_name

from job.settings.chain import Settings
from job.settings.names import env_name
from tests.servers import in_ci
from tests.unit.test_dockerfile import (
    REPO,
    VENV,
    Stage,
    dockerignore_patterns,
    dockerignored,
    load_lock,
    main_group,
    stages,
)

pytestmark = pytest.mark.integration

# pip's words for "the package index cannot be reached".
_NO_INDEX = re.compile(r"NewConnectionError|Temporary failure in name resolution|Network is unreachable|ProxyError")
RUN_AS_UID = 65532  # the Dockerfile's USER (checked by tests/unit/test_dockerfile.py)
# The base image's PATH after the final stage's ENV PATH=/opt/venv/bin:$PATH.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _unavailable(why: str) -> NoReturn:
    """Skip on a developer machine; fail under CI=true."""
    if in_ci():
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


def _mapper(root: Path, paths: set[str]) -> tuple[dict[str, Path], re.Pattern[str]]:
    mapping = {path: root / path.lstrip("/") for path in paths}
    alternatives = "|".join(re.escape(p) for p in sorted(mapping, key=len, reverse=True))
    return mapping, re.compile(rf"(?<![\w./-])({alternatives})(?![\w.-])")


@dataclass
class BuiltVenv:
    root: Path
    venv: Path
    env: dict[str, str]
    """The final stage's environment, /opt/venv mapped, HOME=/nonexistent."""
    run_as: list[str]
    """The command prefix that drops to the image's user (empty when not root)."""
    scratch: Path
    """A directory the image's user may write to (for the termination message)."""

    def run(self, *argv: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.run_as, *argv],
            env={**self.env, **(extra_env or {})},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
        )


def _base_python(run_as: list[str]) -> str:
    """A Python 3.11+ the image's user can execute: the venvs link to it, as the image's link to
    /usr/local/bin/python. (This interpreter may live where that user cannot go, e.g. under /root.)"""
    candidates = [getattr(sys, "_base_executable", sys.executable), "/usr/local/bin/python3", "/usr/bin/python3"]
    check = "import sys, venv, ensurepip; assert sys.version_info >= (3, 11); print(sys.base_prefix)"
    for candidate in dict.fromkeys(candidates):
        if not Path(candidate).is_file():
            continue
        as_root = subprocess.run([candidate, "-c", check], capture_output=True, text=True, timeout=60)
        as_user = subprocess.run([*run_as, candidate, "-c", check], capture_output=True, text=True, timeout=60)
        # Same installation seen by both (an unreadable prefix makes Python fall back to another stdlib).
        if as_root.returncode == as_user.returncode == 0 and as_root.stdout == as_user.stdout:
            return candidate
    _unavailable(f"no Python 3.11+ with venv and ensurepip that uid {RUN_AS_UID} can run among {candidates}")


def _run_builder(builder: Stage, root: Path, python: str) -> dict[str, Path]:
    """Execute the builder stage's instructions under ``root``; the path mapping back.

    ``python`` is the builder's ``python``; ``pip`` is the workplace's (this venv's).
    """
    runs = [run.value for run in builder.all("RUN")]
    absolute = {w.value for w in builder.all("WORKDIR")} | set(re.findall(r"(?<![\w./-])/opt/\w+", " ".join(runs)))
    mapping, pattern = _mapper(root, absolute)

    def mapped(text: str) -> str:
        return pattern.sub(lambda m: str(mapping[m[1]]), text)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "POETRY_", "PYTHON"))}
    shims = root / "builder-bin"
    shims.mkdir()
    (shims / "python").write_text(f'#!/bin/sh\nexec {python} "$@"\n')
    (shims / "python").chmod(0o755)
    env["PATH"] = f"{shims}:{Path(sys.executable).parent}:{env.get('PATH', BASE_PATH)}"
    ignore = dockerignore_patterns()
    workdir = root
    for instruction in builder.instructions:
        match instruction.keyword:
            case "ENV":
                for word in instruction.words():
                    name, _, value = word.partition("=")
                    env[name] = mapped(value)
            case "WORKDIR":
                workdir = mapping[instruction.value]
                workdir.mkdir(parents=True, exist_ok=True)
            case "COPY":
                *sources, dest = instruction.words()
                target = workdir / dest
                for source in sources:
                    _copy(REPO / source, target if dest != "./" else workdir / source, ignore)
            case "RUN":
                done = subprocess.run(
                    ["/bin/sh", "-c", mapped(instruction.value)],
                    cwd=workdir,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=1200,
                )
                if done.returncode != 0:
                    output = (done.stdout + done.stderr)[-4000:]
                    message = f"Dockerfile line {instruction.line} failed ({done.returncode}):\n{output}"
                    if _NO_INDEX.search(output):
                        _unavailable(message)  # no package index: a skip here, a failure in CI
                    pytest.fail(message, pytrace=False)
            case "ARG" | "LABEL":
                pass
            case other:
                raise AssertionError(f"builder instruction {other} is not run by this test: teach it")
    return mapping


def _copy(source: Path, target: Path, ignore: list[str]) -> None:
    if source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        return
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(REPO).as_posix()
        if path.is_file() and not dockerignored(relative, ignore):
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)


def _run_as_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []  # already not root
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={RUN_AS_UID}", f"--regid={RUN_AS_UID}", "--clear-groups", "--"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    _unavailable("running as root, and neither setpriv nor runuser is installed to drop privileges")


@pytest.fixture(scope="session")
def built() -> Iterator[BuiltVenv]:
    builder, final = stages()
    root = Path(tempfile.mkdtemp(prefix="model-sync-image-"))
    umask = os.umask(0o022)  # Docker's, whatever this shell's is: files readable by the image's user
    try:
        root.chmod(0o755)  # the image's user must reach the venv, as in the image
        run_as = _run_as_prefix()
        mapping = _run_builder(builder, root, _base_python(run_as))
        [copy] = final.all("COPY")
        assert copy.words() == ["--from=builder", VENV, VENV]
        venv = mapping[VENV]
        env = {"LANG": "C.UTF-8"}
        for name, value in final.assignments("ENV").items():
            env[name] = value.replace(VENV, str(venv)).replace("$PATH", BASE_PATH)
        env["HOME"] = "/nonexistent"  # nothing may need a home directory
        scratch = root / "scratch"
        scratch.mkdir()
        scratch.chmod(0o777)
        yield BuiltVenv(root=root, venv=venv, env=env, run_as=run_as, scratch=scratch)
    finally:
        os.umask(umask)
        shutil.rmtree(root, ignore_errors=True)


def test_venv_holds_exactly_the_lock_main_group_and_the_project(built: BuiltVenv) -> None:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "print(json.dumps([sys.prefix, {d.metadata['Name']: d.version for d in m.distributions()}]))\n"
    )
    done = built.run("python", "-c", code)  # `python` through the image's PATH
    assert done.returncode == 0, done.stderr
    prefix, distributions = json.loads(done.stdout)
    assert prefix == str(built.venv)
    installed = {canonicalize_name(name): version for name, version in distributions.items()}
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert installed == {**main_group(load_lock()), "model-sync": version}  # no pip, no poetry, no dev tool
    assert not (built.venv / "bin" / "pip").exists()


def test_every_module_imports_as_the_image_user(built: BuiltVenv) -> None:
    # Every backend's imports are satisfied by the main group alone (a dev-only import would fail here).
    code = (
        "import importlib, pkgutil, job\n"
        "names = [m.name for m in pkgutil.walk_packages(job.__path__, 'job.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(job.__file__, len(names))\n"
    )
    done = built.run("python", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(built.venv))  # the installed package, not the checkout


def test_help_lists_every_setting(built: BuiltVenv) -> None:
    done = built.run("model-sync", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: model-sync")
    for name in Settings.model_fields:
        assert env_name(name) in done.stdout, f"{env_name(name)} missing from --help"
    assert done.stderr == ""


def test_bad_setting_exits_2_with_one_line(built: BuiltVenv) -> None:
    message_file = built.scratch / "termination-log"
    done = built.run(
        "model-sync",
        "--source-type",
        "gcs",
        extra_env={"TERMINATION_MESSAGE_PATH": str(message_file)},
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "MODEL_SYNC_SOURCE_TYPE (--source-type)" in lines[0]
    message = message_file.read_text(encoding="utf-8")
    assert "\n" not in message
    assert lines[0].endswith(message)


def test_runs_as_the_image_user_who_cannot_write_the_venv(built: BuiltVenv) -> None:
    done = built.run("sh", "-c", f'id -u; touch "{built.venv}/written" 2>/dev/null && echo writable || echo read-only')
    assert done.returncode == 0, done.stderr
    uid, access = done.stdout.split()
    assert uid == str(RUN_AS_UID if os.geteuid() == 0 else os.geteuid())
    if os.geteuid() == 0:
        assert access == "read-only"  # so every run here worked without writing a byte (no .pyc, no cache)
