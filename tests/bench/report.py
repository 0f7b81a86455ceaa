"""The report: a progress line per run, the targets with PASS/MISS, the Markdown table (median wall, MB/s, CPU,
peak RSS, temp disk, peer / model-sync, the pushed image's layers) with each pipeline's steps and each server's
CPU, and what was measured (the commit, the tools' versions) for the JSON.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Sequence
from typing import Any

from tests.bench.model import MiB
from tests.bench.peers import REPO, VENV_BIN
from tests.bench.results import RowResult, RunResult

METADATA_NOISE = 64 * 1024
"""Bytes written that are not data: the kernel charges file-system metadata to the task that dirties it, e.g.
the atime update of a ``.pyc`` compiled just before the first run (relatime). Measured: one 4 KiB page in the
first of three runs; strace shows model-sync creating no file but its termination message (in /dev/shm)."""
RSS_LIMIT = 128 * MiB
"""Issue 16: peak RSS of s3->oci, s3->s3 and oci->s3 (it was 256 MiB for s3->oci before)."""
SPEEDUP_TARGET = 3.0
"""Issue 16: s3->oci at least this many times faster than the upstream-style pipeline."""
CPU_PER_GIB = {"s3-oci/model-sync": 1.5, "uri-oci/model-sync": 2.5}
"""Issue 16: client CPU-s per GiB moved, start-up included."""
FLAT_TOLERANCE = 0.10
GiB = 1024 * MiB


def progress_line(label: str, run: RunResult) -> str:
    """One run's figures as a progress line."""
    parts = [f"{label}: {run.wall:.2f} s"]
    if run.steps and not run.steps[0].in_process:
        parts.append(f"RSS {run.peak_rss / MiB:.0f} MiB, disk {max(run.disk_peak, run.write_bytes) / MiB:.0f} MiB")
        parts.append(f"CPU {run.cpu:.1f} s")
    parts.append(f"servers {run.server_cpu:.1f} CPU-s, other {run.other_cpu:.1f} CPU-s")
    if len(run.steps) > 1:
        parts.append("steps " + " + ".join(f"{step.name} {step.wall:.2f}" for step in run.steps))
    state = "ok" if run.ok else "FAILED: " + (run.error or "").splitlines()[0][:300]
    return ", ".join(parts) + f" {state}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MiB:.0f}"


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _route(row_id: str) -> str:
    """``s3-oci/model-sync`` -> ``s3->oci``."""
    return row_id.split("/")[0].replace("-", "->")


def _cpu_per_gib(row: RowResult | None) -> float | None:
    """A row's median client CPU seconds per GiB of its model, start included; None when not measured."""
    return row.cpu / (row.size / GiB) if row and row.cpu and row.size else None


def evaluate_targets(results: dict[str, RowResult], flat: RowResult | None, size_mib: int) -> list[dict[str, Any]]:
    """The issue's targets: what was measured, the limit, and whether it holds (``ok`` None: not measured).

    Entries with ``info`` true are information (ratios that explain the targets), never pass or miss.
    """
    targets: list[dict[str, Any]] = []

    def add(name: str, unit: str, measured: float | None, limit: float | None, ok: bool | None) -> None:
        info = name.startswith("information:")
        targets.append({"target": name, "measured": measured, "limit": limit, "unit": unit, "ok": ok, "info": info})

    def wall(row_id: str) -> float | None:
        result = results.get(row_id)
        return result.wall if result else None

    ms, up, floor = wall("s3-oci/model-sync"), wall("s3-oci/upstream"), wall("s3-oci/floor")
    ratio = up / ms if up and ms else None
    add(
        f"s3->oci {size_mib} MiB: upstream-style / model-sync >= {SPEEDUP_TARGET:g}x",
        "x",
        ratio,
        SPEEDUP_TARGET,
        None if ratio is None else ratio >= SPEEDUP_TARGET,
    )
    ms_row = results.get("s3-oci/model-sync")
    disk = max(ms_row.disk_peak or 0, ms_row.write_bytes or 0) if ms_row and ms_row.ok_runs else None
    scratch = ms_row.disk_peak or 0 if ms_row and ms_row.ok_runs else None
    add(
        f"s3->oci: model-sync temp disk == 0 (scratch dir peak; bytes written <= {METADATA_NOISE // 1024} KiB)",
        "bytes",
        disk,
        0,
        None if disk is None else scratch == 0 and disk <= METADATA_NOISE,
    )
    rss = ms_row.peak_rss if ms_row and ms_row.ok_runs else None
    for row_id in ("s3-oci/model-sync", "s3-s3/model-sync", "oci-s3/model-sync"):
        row = results.get(row_id)
        peak = row.peak_rss if row and row.ok_runs else None
        add(
            f"{_route(row_id)}: model-sync peak RSS <= {RSS_LIMIT // MiB} MiB",
            "MiB",
            None if peak is None else peak / MiB,
            RSS_LIMIT / MiB,
            None if peak is None else peak <= RSS_LIMIT,
        )
    for row_id, limit in CPU_PER_GIB.items():
        per_gib = _cpu_per_gib(results.get(row_id))
        add(
            f"{_route(row_id)}: model-sync client CPU <= {limit:g} s per GiB (start-up included)",
            "s",
            per_gib,
            limit,
            None if per_gib is None else per_gib <= limit,
        )
    if flat is not None:
        big = flat.peak_rss if flat.ok_runs else None
        growth = big / rss if big and rss else None
        add(
            f"s3->oci: peak RSS at {flat.size / MiB:.0f} MiB <= {1 + FLAT_TOLERANCE:.2f}x that at {size_mib} MiB",
            "x",
            growth,
            1 + FLAT_TOLERANCE,
            None if growth is None else growth <= 1 + FLAT_TOLERANCE,
        )
    s3ms, s5 = wall("s3-s3/model-sync"), results.get("s3-s3/s5cmd")
    upload = s5.step_median("upload") if s5 else None
    add(
        "s3->s3 across endpoints: model-sync <= s5cmd upload step alone",
        "s",
        s3ms,
        upload,
        None if not (s3ms and upload) else s3ms <= upload,
    )
    ocims, sk = wall("oci-s3/model-sync"), results.get("oci-s3/skopeo+s5cmd")
    pull_upload = sk.step_median("pull", "upload") if sk else None
    add(
        "oci->s3: model-sync <= skopeo pull + s5cmd upload",
        "s",
        ocims,
        pull_upload,
        None if not (ocims and pull_upload) else ocims <= pull_upload,
    )
    if ms and floor:
        add("information: s3->oci model-sync / registry floor", "x", ms / floor, None, None)
    for row_id, what in (("s3-oci/client-floor", "sockets + sha256"), ("uri-oci/client-floor", "+ inflate")):
        floor_per_gib = _cpu_per_gib(results.get(row_id))
        if floor_per_gib is not None:
            add(
                f"information: {_route(row_id)} client floor CPU per GiB ({what}, a bare start)",
                "s",
                floor_per_gib,
                None,
                None,
            )
    if flat is not None and ms_row and flat.cpu and ms_row.cpu and flat.size > ms_row.size:
        further = (flat.cpu - ms_row.cpu) / ((flat.size - ms_row.size) / GiB)
        add(
            "information: s3->oci model-sync CPU per further GiB (the flat run against this one)",
            "s",
            further,
            None,
            None,
        )
    start, libraries = results.get("start/model-sync"), results.get("start/libraries")
    if start and libraries and start.cpu and libraries.cpu:
        add("information: start, model-sync's 8-byte s3->oci run", "s", start.cpu, None, None)
        add("information: start, its libraries alone (imports + an S3 client)", "s", libraries.cpu, None, None)
    up_row = results.get("s3-oci/upstream")
    if ms_row and up_row and ms_row.cpu and up_row.cpu:
        add("information: s3->oci client CPU, upstream-style / model-sync", "x", up_row.cpu / ms_row.cpu, None, None)
    return targets


def render(results: Sequence[RowResult], targets: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The Markdown report: the table, each pipeline's steps, the targets."""
    by_id = {r.row.id: r for r in results}
    lines = [
        f"model-sync benchmark: {meta['size_mib']} MiB model ({meta['files']} files), median of {meta['runs']} run(s), "
        f"{meta['cpus']} CPUs, servers on 127.0.0.1",
        *([meta["many_model"]] if meta.get("many_model") else []),
        "",
        "| route | tool | median s | MB/s | CPU s | server CPU s | peak RSS MiB | temp disk MiB | disk written MiB "
        "| vs model-sync | runs ok | other CPU s | layers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for result in results:
        row = result.row
        versus = ""
        base = by_id.get(row.baseline or "")
        if base and base.wall and result.wall:
            versus = (
                f"{result.wall / base.wall:.2f}x slower"
                if result.wall >= base.wall
                else f"{base.wall / result.wall:.2f}x faster"
            )
        floor = by_id.get("s3-oci/floor")
        if row.id == "s3-oci/model-sync" and floor and floor.wall and result.wall:
            versus = f"{result.wall / floor.wall:.2f}x floor"
        ok = f"{len(result.ok_runs)}/{len(result.runs)}"
        rate = _num(result.mb_s, "{:.0f}" if (result.mb_s or 0) >= 10 else "{:.1f}")
        lines.append(
            f"| {row.route} | {row.tool} | {_num(result.wall)} | {rate} | {_num(result.cpu, '{:.1f}')} "
            f"| {_num(result.server_cpu, '{:.1f}')} | {_mib(result.peak_rss)} | {_mib(result.disk_peak)} "
            f"| {_mib(result.write_bytes)} | {versus} | {ok} | {_num(result.other_cpu, '{:.1f}')} "
            f"| {_num(result.layers, '{:.0f}')} |"
        )
    lines += [
        "",
        "CPU s: user+system seconds of the tool's process tree; server CPU s: what SeaweedFS, distribution and httpd "
        "spent meanwhile; peak RSS: largest sum of VmRSS over the tool's processes (a pipeline: its largest step); "
        "temp disk: peak size of the run's scratch dir; disk written: the tree's write_bytes; other CPU s: what the "
        "rest of the machine spent meanwhile (noise from other work); layers: of the pushed image, base included.",
    ]
    lines += ["", "Server CPU (median CPU s per run):", ""]
    for result in results:
        by = result.server_cpu_by()
        if by:
            shown = ", ".join(f"{name} {cpu:.1f}" for name, cpu in sorted(by.items(), key=lambda kv: -kv[1]))
            lines.append(f"- {result.row.route} {result.row.tool}: {shown}")
    lines += ["", "Steps (median s, and CPU s of the tool and of each server during the step):", ""]
    for result in results:
        names = result.step_names()
        if len(names) > 1:
            parts: list[str] = []
            for name in names:
                cpu, servers = result.step_cpu(name)
                cpus = ", ".join([f"CPU {_num(cpu, '{:.1f}')}", *(f"{k} {v:.1f}" for k, v in servers.items())])
                parts.append(f"{name} {_num(result.step_median(name))} ({cpus})")
            lines.append(f"- {result.row.route} {result.row.tool}: {'; '.join(parts)}")
    lines += ["", "Targets:", ""]
    for target in targets:
        measured, limit, unit = target["measured"], target["limit"], target["unit"]
        if target["info"]:
            lines.append(f"- {target['target']}: {_num(measured)} {unit}")
            continue
        mark = {True: "PASS", False: "MISS", None: "NOT MEASURED"}[target["ok"]]
        shown = "-" if measured is None else f"{measured:.0f}" if unit == "bytes" else _num(measured)
        lines.append(f"- {mark}: {target['target']}: {shown} {unit} (limit {_num(limit)} {unit})")
    failed = [r for r in results if not r.ok]
    if failed:
        lines += ["", "Failures:", ""]
        for result in failed:
            for run in result.runs:
                if run.error:
                    lines.append(f"- {result.row.id} run {run.index + 1}: {run.error.splitlines()[0][:300]}")
    return "\n".join(lines)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def job_revision() -> dict[str, Any]:
    """The commit measured and whether ``job/`` differs from it (read-only git calls, no index refresh)."""
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20, check=False)
        diff = subprocess.run(
            [*git, "diff", "--quiet", "HEAD", "--", "job"], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "job_modified": None}
    return {"commit": commit.stdout.strip() or None, "job_modified": diff.returncode == 1}


def tool_versions() -> dict[str, str]:
    """Versions of everything timed, for the JSON."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("olot", "boto3", "aiobotocore", "httpx"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    for name, argv in {
        "skopeo": ["skopeo", "--version"],
        "distribution": ["docker-registry", "--version"],
        "s5cmd": [str(VENV_BIN / "s5cmd"), "version"],
        "seaweedfs": [str(VENV_BIN / "weed"), "version"],
    }.items():
        versions[name] = _version(argv)
    return versions
