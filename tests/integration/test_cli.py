"""The job as a process: exit codes, the termination message, one-line errors, no network on bad config."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


class Tripwire:
    """A TCP listener on 127.0.0.1 that counts connections: every server setting points here."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    t = Tripwire()
    yield t
    t.close()


def run_job(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[int, str, str, str]:
    """Run ``python -m job``; return exit code, stdout, stderr and the termination message."""
    termination = tmp_path / "termination-log"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_SYNC_", "AWS_", "KF_PIPELINES"))}
    base.update({"TERMINATION_MESSAGE_PATH": str(termination), "NO_PROXY": "*"})
    base.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "job", *args], env=base, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    message = termination.read_text() if termination.exists() else ""
    return proc.returncode, proc.stdout, proc.stderr, message


def common(port: int) -> dict[str, str]:
    return {
        "MODEL_SYNC_REGISTRY_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
        "MODEL_SYNC_SOURCE_AWS_BUCKET": "models",
        "MODEL_SYNC_SOURCE_AWS_KEY": "m/",
        "MODEL_SYNC_SOURCE_AWS_ENDPOINT": f"http://127.0.0.1:{port}",
        "MODEL_SYNC_SOURCE_AWS_ACCESS_KEY_ID": "AKIDTRIPWIRE",
        "MODEL_SYNC_SOURCE_AWS_SECRET_ACCESS_KEY": "tripwire-secret-key-value",
        "MODEL_SYNC_DESTINATION_OCI_URI": f"127.0.0.1:{port}/models/m:v1",
        "MODEL_SYNC_MODEL_ARTIFACT_ID": "1",
        "MODEL_SYNC_REGISTRY_USER_TOKEN": "tripwire-registry-token",
    }


def metadata_dir(d: Path, **files: str) -> Path:
    d.mkdir(parents=True)
    for key, value in files.items():
        (d / key).write_text(value)
    return d


# The list, plus a few more: each exits 2 with one line naming the setting, and connects nowhere.
CASES: dict[str, tuple[list[str], dict[str, str], str]] = {
    "unknown source type": (["--source-type", "gcs"], {}, "MODEL_SYNC_SOURCE_TYPE"),
    "missing bucket": ([], {"MODEL_SYNC_SOURCE_AWS_BUCKET": ""}, "MODEL_SYNC_SOURCE_AWS_BUCKET"),
    "create_model without metadata": (
        ["--model-upload-intent", "create_model"],
        {},
        "MODEL_SYNC_METADATA_CONFIGMAP_PATH",
    ),
    "update_artifact without artifact id": ([], {"MODEL_SYNC_MODEL_ARTIFACT_ID": ""}, "MODEL_SYNC_MODEL_ARTIFACT_ID"),
    "missing credentials path": (
        ["--source-s3-credentials-path", "/nonexistent/secret"],
        {},
        "MODEL_SYNC_SOURCE_S3_CREDENTIALS_PATH",
    ),
    "malformed .dockerconfigjson": (["--destination-oci-credentials-path", "{dockerconfig}"], {}, "MODEL_SYNC_DESTINATION_OCI_CREDENTIALS_PATH"),
    "malformed custom_properties JSON": (
        ["--model-upload-intent", "create_model", "--metadata-configmap-path", "{metadata}"],
        {},
        "ModelVersion.custom_properties",
    ),
    "invalid boolean": ([], {"MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY": "sometimes"}, "MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY"),
    "unknown argument": (["--source-bukket", "x"], {}, "--source-bukket"),
    "create_version without model id": (
        ["--model-upload-intent", "create_version", "--metadata-configmap-path", "{good_metadata}"],
        {},
        "MODEL_SYNC_MODEL_ID",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_config_errors_exit_2_with_one_line_and_no_network(case: str, tmp_path: Path, tripwire: Tripwire) -> None:
    args, env_extra, names = CASES[case]
    dockerconfig = tmp_path / "dockerconfig.json"
    dockerconfig.write_text('{"auths": {"127.0.0.1": {"auth": "not base64!"}}}')
    bad = metadata_dir(
        tmp_path / "bad",
        **{"RegisteredModel.name": "m", "ModelVersion.name": "v1", "ModelVersion.custom_properties": "{oops"},
    )
    good = metadata_dir(tmp_path / "good", **{"ModelVersion.name": "v1"})
    args = [a.format(dockerconfig=dockerconfig, metadata=bad, good_metadata=good) for a in args]
    code, stdout, stderr, message = run_job(args, {**common(tripwire.port), **env_extra}, tmp_path)
    assert code == 2, stderr
    assert names in message
    assert "\n" not in message.strip()
    assert message.strip() in stderr  # the same text in the log and the termination message
    assert "Traceback" not in stderr
    assert tripwire.connections == 0
    for secret in ("tripwire-secret-key-value", "tripwire-registry-token"):
        assert secret not in stderr + stdout + message


def test_help_exits_0_and_names_every_env_var(tmp_path: Path) -> None:
    code, stdout, _, _ = run_job(["--help"], {}, tmp_path)
    assert code == 0
    assert "MODEL_SYNC_SOURCE_AWS_BUCKET" in stdout and "TERMINATION_MESSAGE_PATH" in stdout


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "model-sync"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--destination-oci-base-image" in proc.stdout


def test_unreachable_registry_fails_with_exit_1_and_one_line(tmp_path: Path, tripwire: Tripwire) -> None:
    """A runtime failure (the registry's address closes every connection): exit 1, one line, no secret."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"w")
    env = {
        **common(tripwire.port),
        "MODEL_SYNC_SOURCE_TYPE": "pvc",
        "MODEL_SYNC_SOURCE_PATH": str(tmp_path / "model"),
        "MODEL_SYNC_DESTINATION_TYPE": "s3",
        "MODEL_SYNC_DESTINATION_AWS_BUCKET": "bkt",
        "MODEL_SYNC_DESTINATION_AWS_ACCESS_KEY_ID": "AKIDTRIPWIRE",
        "MODEL_SYNC_DESTINATION_AWS_SECRET_ACCESS_KEY": "tripwire-secret-key-value",
    }
    code, stdout, stderr, message = run_job([], env, tmp_path)
    assert code == 1, stderr
    assert message and "\n" not in message.strip()
    assert "Traceback" not in stderr
    for secret in ("tripwire-secret-key-value", "tripwire-registry-token"):
        assert secret not in stderr + stdout + message


def test_termination_message_on_success_is_upstream_json(tmp_path: Path) -> None:
    """Covered end to end with a real registry in test_pipeline_registry.py; here: the JSON keys."""
    from job.intents import Intent, IntentResult

    result = IntentResult(
        intent=Intent.CREATE_MODEL,
        registered_model_id="1",
        model_version_id="2",
        model_artifact_id="3",
        uri="oci://r/m:v1",
        digest="sha256:abc",
    )
    doc = result.to_termination_message()
    assert json.loads(json.dumps(doc)) == {
        "intent": "create_model",
        "RegisteredModel": {"id": "1"},
        "ModelVersion": {"id": "2"},
        "ModelArtifact": {"id": "3"},
        "uri": "oci://r/m:v1",
        "digest": "sha256:abc",
    }


def test_upstream_entrypoint_module_still_runs(tmp_path: Path) -> None:
    """Manifests written for the upstream image run ``python -m job.entrypoint``."""
    proc = subprocess.run(
        [sys.executable, "-m", "job.entrypoint", "--source-type", "gcs"], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "TERMINATION_MESSAGE_PATH": str(tmp_path / "tm")}, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "MODEL_SYNC_SOURCE_TYPE" in proc.stderr


def test_json_log_format_gives_json_lines(tmp_path: Path, tripwire: Tripwire) -> None:
    env = {**common(tripwire.port), "MODEL_SYNC_LOG_FORMAT": "json", "MODEL_SYNC_SOURCE_AWS_BUCKET": ""}
    code, _, stderr, message = run_job([], env, tmp_path)
    assert code == 2
    docs = [json.loads(line) for line in stderr.strip().splitlines()]
    assert docs[-1]["level"] == "ERROR" and docs[-1]["message"] == message
