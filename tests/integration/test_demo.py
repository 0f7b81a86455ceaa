"""``make demo`` keeps working: it runs a real create_model s3 -> oci sync on the local stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]


def test_demo_runs_end_to_end() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.demo"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "byte for byte equal to the source: True" in proc.stdout
    assert "storageUri: oci://" in proc.stdout
    assert "seaweed-test-secret" not in proc.stdout + proc.stderr  # the demo shows env, never the secret
