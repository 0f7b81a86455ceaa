"""The layout shows the architecture, and the checks that keep it so: each module's imports go only to its own
layer or the layers below it (backends -> protocols -> shared types), there is no import cycle, and no module
is long enough to hide a second one. ``python -m pytest tests/unit/test_architecture.py`` is the command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

JOB = Path(__file__).resolve().parents[2] / "job"
MAX_LINES = 400

# Lower layers first; a module may import its own layer and the layers above it in this list, never below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("shared types", ("job.errors", "job.model", "job.redaction", "job.logs")),
    (
        "shared helpers",
        (
            "job.tuning",
            "job.retry",
            "job.streams",
            "job.readahead",
            "job.cleanup",
            "job.mounts",
            "job.deflate",
            "job.http.proxy",
            "job.oci.certs",
        ),
    ),
    ("settings chain", ("job.settings",)),
    ("typed config", ("job.config",)),
    ("protocols and formats", ("job.http", "job.s3", "job.oci", "job.model_registry", "job.formats")),
    ("backends", ("job.sources", "job.destinations")),
    ("engine", ("job.engine",)),
    ("intents and the pipeline", ("job.intents", "job.backends", "job.signing", "job.pipeline", "job.serving")),
    ("entry points", ("job.__main__", "job.entrypoint", "job")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(JOB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank >= 0, f"{module} belongs to no layer"
    return rank


def imports_of(path: Path) -> set[str]:
    """Every ``job.*`` module imported anywhere in the file (function-level imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("job."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("job"):
            found.add(node.module)
    return found


MODULES = {module_name(p): p for p in sorted(JOB.rglob("*.py"))}


def test_nothing_imports_upward() -> None:
    wrong = []
    for module, path in MODULES.items():
        for target in imports_of(path):
            if layer_of(target) > layer_of(module):
                wrong.append(
                    f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    graph = {m: {t for t in imports_of(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_no_module_is_too_long() -> None:
    lengths = {str(p.relative_to(JOB.parent)): sum(1 for _ in p.open(encoding="utf-8")) for p in MODULES.values()}
    too_long = {p: n for p, n in lengths.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"


def test_a_newcomer_finds_each_part_by_its_folder() -> None:
    folders = {p.name for p in JOB.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert {
        "settings",
        "engine",
        "formats",
        "http",
        "s3",
        "oci",
        "model_registry",
        "sources",
        "destinations",
    } <= folders
