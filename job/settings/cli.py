"""The command line of the settings: every setting as a ``--kebab-case`` arg, its env var in the help."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic_settings import BaseSettings, CliSettingsSource

from job.errors import ConfigError
from job.settings.names import env_name

__all__ = ["cli_values"]


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"command line: {message} (see model-sync --help)")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each arg's env var, and a plain metavar instead of pydantic's type names."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=44, width=120)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.dest != "help":
            text += f" [env: {env_name(action.dest)}]"
        return text

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if action.choices:
            return "{" + ",".join(str(c) for c in action.choices) + "}"
        return "VALUE"


BARE_FLAGS = ("--sign",)
"""Upstream's tri-state flags: ``--sign`` alone means ``--sign true``."""


def bare_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``true`` after a bare :data:`BARE_FLAGS` flag (one followed by no value)."""
    out: list[str] = []
    for n, arg in enumerate(argv):
        out.append(arg)
        following = argv[n + 1] if n + 1 < len(argv) else None
        if arg in BARE_FLAGS and (following is None or following.startswith("--")):
            out.append("true")
    return out


def cli_values(settings_cls: type[BaseSettings], argv: Sequence[str]) -> dict[str, Any]:
    """The settings given as ``--kebab-case`` args (those not given are left out).

    No args (a Job that sets env vars only): nothing to parse, and the parser of every setting is not built (about
    20 ms of each start).
    """
    if not argv:
        return {}
    parser = _ArgumentParser(
        prog="model-sync",
        usage="model-sync [options]   (every option also reads its env var, shown in brackets)",
        description="Stream an ML model from a source to a destination and record it in Kubeflow Model Registry. "
        "Precedence: CLI args > env vars > credential files > defaults.",
        formatter_class=_HelpFormatter,
    )
    cli: CliSettingsSource[argparse.ArgumentParser] = CliSettingsSource(
        settings_cls, root_parser=parser, cli_parse_args=bare_flags(argv), cli_kebab_case=True, cli_implicit_flags=False
    )
    return {k: v for k, v in cli().items() if v is not None}
