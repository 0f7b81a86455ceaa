"""README promises that tests keep honest: the opening commands and the settings table."""

from __future__ import annotations

from pathlib import Path

from job.settings.table import BEGIN, END, render

README = Path(__file__).parents[2] / "README.md"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text(encoding="utf-8").split("\n\n", 3)[:3]
    opening = "\n".join(head)
    assert "make demo" in opening and "make test" in opening


def test_settings_table_matches_the_settings_model() -> None:
    text = README.read_text(encoding="utf-8")
    block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()
    assert block == render(), "README settings table is stale: run `python -m job.settings.table --write README.md`"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    run = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "exec make test" in run
