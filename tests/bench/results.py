"""What a run of a row measured (:class:`RunResult`: its steps' figures summed or maxed) and what a row's runs
add up to in the table (:class:`RowResult`: medians over the successful runs); both as JSON.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.bench.measure import StepResult
from tests.bench.rows import Row


@dataclass
class RunResult:
    """One run of one row."""

    row: str
    index: int
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None
    noisy_retries: int = 0
    """Times this row was run again because other work disturbed it (the quietest run is kept)."""
    settle_wait: float = 0.0
    """Seconds waited before the run for the machine to go quiet."""
    settle_load: float = 0.0
    """Cores busy with other work when the run started (last ``settle`` window)."""
    layers: int | None = None
    """Layers of the pushed image, base included (OCI destinations, read by the row's check)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def wall(self) -> float:
        return sum(s.wall for s in self.steps)

    @property
    def server_cpu(self) -> float:
        """CPU seconds the servers (S3, registries, httpd) spent during the run."""
        return sum(sum(s.server_cpu.values()) for s in self.steps)

    @property
    def other_cpu(self) -> float:
        """CPU seconds spent on this machine during the run by processes not of this bench (noise)."""
        return sum(s.other_cpu for s in self.steps)

    def server_cpu_by(self) -> dict[str, float]:
        """CPU seconds per server over the run."""
        total: dict[str, float] = {}
        for step in self.steps:
            for name, cpu in step.server_cpu.items():
                total[name] = total.get(name, 0.0) + cpu
        return total

    @property
    def cpu(self) -> float:
        return sum(s.cpu for s in self.steps)

    @property
    def peak_rss(self) -> int:
        return max((s.peak_rss for s in self.steps), default=0)

    @property
    def disk_peak(self) -> int:
        return max((s.disk_peak for s in self.steps), default=0)

    @property
    def write_bytes(self) -> int:
        return sum(s.write_bytes for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        """The run's figures and each step's."""
        return {
            "index": self.index,
            "ok": self.ok,
            "error": self.error,
            "wall": round(self.wall, 3),
            "cpu": round(self.cpu, 3),
            "noisy_retries": self.noisy_retries,
            "settle_wait": round(self.settle_wait, 2),
            "settle_load": round(self.settle_load, 2),
            "server_cpu": round(self.server_cpu, 3),
            "other_cpu": round(self.other_cpu, 3),
            "peak_rss": self.peak_rss,
            "disk_peak": self.disk_peak,
            "write_bytes": self.write_bytes,
            "layers": self.layers,
            "steps": [s.to_json() for s in self.steps],
        }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class RowResult:
    """Every run of one row, and the figures the table shows."""

    row: Row
    size: int
    runs: list[RunResult] = field(default_factory=list)

    @property
    def ok_runs(self) -> list[RunResult]:
        return [r for r in self.runs if r.ok]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    @property
    def wall(self) -> float | None:
        return _median([r.wall for r in self.ok_runs])

    @property
    def cpu(self) -> float | None:
        return _median([r.cpu for r in self.ok_runs]) if self.row.steps else None

    @property
    def server_cpu(self) -> float | None:
        return _median([r.server_cpu for r in self.ok_runs])

    @property
    def other_cpu(self) -> float | None:
        return _median([r.other_cpu for r in self.ok_runs])

    def server_cpu_by(self) -> dict[str, float]:
        """Median CPU seconds per server over the successful runs (those that spent at least 0.15 s: an idle
        SeaweedFS spends about 0.01 s a second)."""
        names = sorted({name for r in self.ok_runs for name in r.server_cpu_by()})
        medians = {name: _median([r.server_cpu_by().get(name, 0.0) for r in self.ok_runs]) or 0.0 for name in names}
        return {name: cpu for name, cpu in medians.items() if cpu >= 0.15}

    @property
    def mb_s(self) -> float | None:
        wall = self.wall
        return self.size / wall / 1e6 if wall else None

    @property
    def peak_rss(self) -> int | None:
        return max((r.peak_rss for r in self.ok_runs), default=None) if self.row.steps else None

    @property
    def disk_peak(self) -> int | None:
        return max((r.disk_peak for r in self.ok_runs), default=None) if self.row.steps else None

    @property
    def write_bytes(self) -> int | None:
        return max((r.write_bytes for r in self.ok_runs), default=None) if self.row.steps else None

    @property
    def layers(self) -> int | None:
        """The pushed image's layer count (the most over the successful runs; it does not vary by run)."""
        return max((r.layers for r in self.ok_runs if r.layers is not None), default=None)

    def step_median(self, *names: str) -> float | None:
        """Median over runs of the summed wall time of the named steps."""
        values = [sum(s.wall for s in r.steps if s.name in names) for r in self.ok_runs]
        return _median(values)

    def step_cpu(self, name: str) -> tuple[float | None, dict[str, float]]:
        """Median CPU s of the named step: (the tool's, {server: its}) over the successful runs."""
        steps = [s for r in self.ok_runs for s in r.steps if s.name == name]
        servers = sorted({server for s in steps for server in s.server_cpu})
        by = {server: _median([s.server_cpu.get(server, 0.0) for s in steps]) or 0.0 for server in servers}
        return _median([s.cpu for s in steps]), {k: v for k, v in by.items() if v >= 0.15}

    def step_names(self) -> list[str]:
        return [s.name for s in self.ok_runs[0].steps] if self.ok_runs else []

    def to_json(self) -> dict[str, Any]:
        """The row, its summary and its runs."""
        return {
            "id": self.row.id,
            "route": self.row.route,
            "tool": self.row.tool,
            "baseline": self.row.baseline,
            "ok": self.ok,
            "bytes": self.size,
            "median_wall": self.wall,
            "mb_s": self.mb_s,
            "median_cpu": self.cpu,
            "median_server_cpu": self.server_cpu,
            "median_other_cpu": self.other_cpu,
            "median_server_cpu_by": self.server_cpu_by(),
            "peak_rss": self.peak_rss,
            "disk_peak": self.disk_peak,
            "write_bytes": self.write_bytes,
            "layers": self.layers,
            "step_medians": {name: self.step_median(name) for name in self.step_names()},
            "runs": [r.to_json() for r in self.runs],
        }
