"""Hostile settings (issue "hostile inputs", points 9 and 10): each is a ConfigError naming the setting or the
file, raised by the settings chain, the typed view or the plan, before anything connects.

The same inputs run as ``python -m job`` in tests/integration/test_bad_input.py (exit 2, one line, no network).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from job.config import build_job_config
from job.errors import ConfigError
from job.pipeline import check_references
from job.settings.chain import load_settings
from job.settings.checks import check_bucket, check_url, path_problem
from job.settings.credentials import read_docker_config, read_uri_headers
from job.settings.metadata import load_metadata

BASE = ["--registry-server-address", "http://127.0.0.1:8080", "--model-artifact-id", "1"]
S3_SRC = ["--source-aws-bucket", "models", "--source-aws-key", "m/", "--source-aws-access-key-id", "AK",
          "--source-aws-secret-access-key", "SK"]  # fmt: skip
S3_DST = ["--destination-type", "s3", "--destination-aws-bucket", "out", "--destination-aws-access-key-id", "AK",
          "--destination-aws-secret-access-key", "SK"]  # fmt: skip
OCI_DST = ["--destination-oci-uri", "127.0.0.1:5000/models/m:v1"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("MODEL_SYNC_", "AWS_", "KF_PIPELINES", "HF_")) or name == "TERMINATION_MESSAGE_PATH":
            monkeypatch.delenv(name)


def job(argv: list[str], environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return build_job_config(load_settings(argv), environ or {})


def fails(argv: list[str], names: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        config = job(argv, environ)
        check_references(config)
    message = str(err.value)
    assert names in message and "\n" not in message, message
    return message


# --- point 9: addresses, ports, paths --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--registry-server-address", "http://[::1"], "MODEL_SYNC_REGISTRY_SERVER_ADDRESS"),
        (["--registry-server-address", "[::1"], "MODEL_SYNC_REGISTRY_SERVER_ADDRESS"),
        (["--registry-server-address", "http://127.0.0.1:99999"], "MODEL_SYNC_REGISTRY_SERVER_ADDRESS"),
        (["--registry-server-address", "127.0.0.1:-1"], "MODEL_SYNC_REGISTRY_SERVER_ADDRESS"),
        (["--registry-server-address", "http://127.0.0.1:0"], "MODEL_SYNC_REGISTRY_SERVER_ADDRESS"),
        (["--registry-server-address", "http://" + "a" * 100_000], "MODEL_SYNC_REGISTRY_SERVER_ADDRESS"),
        (["--registry-port", "99999"], "MODEL_SYNC_REGISTRY_PORT"),
        (["--registry-port", "-1"], "MODEL_SYNC_REGISTRY_PORT"),
        (["--source-type", "uri", "--source-uri", "http://[::1/x"], "MODEL_SYNC_SOURCE_URI"),
        (["--source-type", "uri", "--source-uri", "https://h:99999/x"], "MODEL_SYNC_SOURCE_URI"),
        (["--source-type", "uri", "--source-uri", "https://h/a b"], "MODEL_SYNC_SOURCE_URI"),
        (["--destination-aws-endpoint", "http://[::1"], "MODEL_SYNC_DESTINATION_AWS_ENDPOINT"),
        (["--destination-aws-endpoint", "http://127.0.0.1:99999"], "MODEL_SYNC_DESTINATION_AWS_ENDPOINT"),
        (["--destination-aws-endpoint", "minio.local:9000"], "MODEL_SYNC_DESTINATION_AWS_ENDPOINT"),
        (["--destination-aws-endpoint", "ftp://minio.local"], "MODEL_SYNC_DESTINATION_AWS_ENDPOINT"),
        (["--source-type", "pvc", "--source-path", "/" + "p" * 3000], "MODEL_SYNC_SOURCE_PATH"),
        (["--storage-path", "/" + "p" * 3000], "MODEL_SYNC_STORAGE_PATH"),
        (["--metadata-configmap-path", "/" + "p/" * 2100], "MODEL_SYNC_METADATA_CONFIGMAP_PATH"),
        (["--registry-custom-ca", "/" + "c" * 3000], "MODEL_SYNC_REGISTRY_CUSTOM_CA"),
        (["--destination-s3-credentials-path", "/" + "s" * 3000], "MODEL_SYNC_DESTINATION_S3_CREDENTIALS_PATH"),
    ],
)
def test_hostile_address_port_or_path_names_the_setting(argv: list[str], names: str) -> None:
    message = fails([*BASE, *S3_SRC, *S3_DST, *argv], names)
    assert "a" * 300 not in message and "p" * 300 not in message  # a huge value is not echoed


def test_a_bad_address_is_not_echoed() -> None:
    # An address may carry a token (https://user:token@host): say what is wrong with it, not what it is.
    message = fails([*BASE, *S3_SRC, *S3_DST, "--registry-server-address", "http://u:hunter2@[::1"], "ADDRESS")
    assert "hunter2" not in message


def test_addresses_lose_surrounding_white_space(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_SYNC_REGISTRY_SERVER_ADDRESS", "http://127.0.0.1:8080\n")
    monkeypatch.setenv("MODEL_SYNC_DESTINATION_AWS_ENDPOINT", " http://127.0.0.1:9000\r\n")
    monkeypatch.setenv("MODEL_SYNC_SOURCE_AWS_BUCKET", "models\n")
    config = job(["--model-artifact-id", "1", *S3_SRC[2:], *S3_DST])
    assert config.registry.base_url == "http://127.0.0.1:8080"
    assert config.destination.endpoint == "http://127.0.0.1:9000"  # type: ignore[union-attr]
    assert config.source.bucket == "models"  # type: ignore[union-attr]


def test_an_ipv6_registry_keeps_its_brackets() -> None:
    config = job(["--registry-server-address", "http://[::1]:8080", "--model-artifact-id", "1", *S3_SRC, *S3_DST])
    assert config.registry.base_url == "http://[::1]:8080"


def test_hf_endpoint_is_checked() -> None:
    argv = [*BASE, *S3_DST, "--source-type", "uri", "--source-uri", "hf://org/m"]
    with pytest.raises(ConfigError, match="env var HF_ENDPOINT: not a valid URL"):
        job(argv, {"HF_ENDPOINT": "https://[::1"})


# --- point 9: unreadable credential files and metadata ---------------------------------------


def _uri_secret(tmp_path: Path) -> Path:
    secret = tmp_path / "uri-secret"
    secret.mkdir()
    (secret / "URI").write_text("https://models.example.invalid/m.bin\n")
    return secret


def test_headers_that_cannot_be_read_name_the_setting(tmp_path: Path) -> None:
    secret = _uri_secret(tmp_path)
    setting = "MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH"
    (secret / "HEADERS").mkdir()
    with pytest.raises(ConfigError, match=f"^{setting}: .*HEADERS: Is a directory"):
        read_uri_headers(secret, setting=setting)
    (secret / "HEADERS").rmdir()
    os.symlink(tmp_path / "gone", secret / "HEADERS")
    with pytest.raises(ConfigError, match=f"^{setting}: .*HEADERS: No such file"):
        read_uri_headers(secret, setting=setting)
    (secret / "HEADERS").unlink()
    (secret / "HEADERS").write_bytes(b"X-Key: \xff\n")
    with pytest.raises(ConfigError, match=f"^{setting}: .*HEADERS is not UTF-8"):
        read_uri_headers(secret, setting=setting)


def test_a_file_the_job_may_not_read_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, who reads a mode-0600 file of another uid anyway: simulate the PermissionError.
    secret = _uri_secret(tmp_path)
    (secret / "HEADERS").write_text("X-Key: v\n")
    token = tmp_path / "token"
    token.write_text("t")
    real_read_text = Path.read_text

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        if self.name in ("HEADERS", "token", ".dockerconfigjson", "ModelVersion.custom_properties"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", refuse)
    argv = [*BASE, *S3_DST, "--source-type", "uri", "--source-uri-credentials-path", str(secret)]
    fails(argv, "MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH")
    argv = [*BASE, *S3_SRC, *S3_DST, "--registry-user-token-envvar", "T"]
    message = fails(argv, "MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR", {"T": str(token)})
    assert "Permission denied" in message
    config = tmp_path / ".dockerconfigjson"
    config.write_text("{}")
    with pytest.raises(ConfigError, match="^SETTING: cannot read .*Permission denied"):
        read_docker_config(config, setting="SETTING")
    metadata = tmp_path / "cm"
    metadata.mkdir()
    (metadata / "ModelVersion.custom_properties").write_text("{}")
    with pytest.raises(ConfigError, match="ModelVersion.custom_properties in .*Permission denied"):
        load_metadata(metadata)


def test_docker_config_not_utf8_or_nested_too_deep(tmp_path: Path) -> None:
    config = tmp_path / ".dockerconfigjson"
    config.write_bytes(b'{"auths": {"\xff": {}}}')
    with pytest.raises(ConfigError, match="^SETTING: .* is not UTF-8 text$"):
        read_docker_config(config, setting="SETTING")
    config.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="^SETTING: .*nested too deep"):
        read_docker_config(config, setting="SETTING")


def test_an_s3_secret_key_that_is_a_directory_names_the_setting(tmp_path: Path) -> None:
    secret = tmp_path / "s3"
    (secret / "AWS_SECRET_ACCESS_KEY").mkdir(parents=True)
    (secret / "AWS_ACCESS_KEY_ID").write_text("AK")
    with pytest.raises(ConfigError, match="MODEL_SYNC_SOURCE_S3_CREDENTIALS_PATH.*AWS_SECRET_ACCESS_KEY: Is a dir"):
        load_settings(["--source-s3-credentials-path", str(secret)])


@pytest.mark.parametrize("depth", [100_000, sys.getrecursionlimit() - 10])
def test_custom_properties_nested_too_deep(tmp_path: Path, depth: int) -> None:
    # 100,000 levels stop json's scanner; just under the recursion limit stops it or the encoder of a struct value.
    (tmp_path / "ModelVersion.custom_properties").write_text('{"k": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(ConfigError, match=r"^ModelVersion.custom_properties in .*: invalid JSON: nested too deep"):
        load_metadata(tmp_path)


def test_custom_properties_nested_a_little_are_fine(tmp_path: Path) -> None:
    (tmp_path / "ModelVersion.custom_properties").write_text(json.dumps({"k": [[[1]]]}))
    assert load_metadata(tmp_path).model_version.custom_properties


# --- point 10: image references, S3 endpoints and buckets ------------------------------------


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--destination-oci-uri", "127.0.0.1:5000/Models/m:1"], "MODEL_SYNC_DESTINATION_OCI_URI"),
        (["--destination-oci-uri", "::::"], "MODEL_SYNC_DESTINATION_OCI_URI"),
        (["--destination-oci-uri", "127.0.0.1:5000/:1"], "MODEL_SYNC_DESTINATION_OCI_URI"),
        (["--destination-oci-uri", "oci://"], "MODEL_SYNC_DESTINATION_OCI_URI"),
        (["--destination-oci-uri", "127.0.0.1:5000/m\nx:1"], "MODEL_SYNC_DESTINATION_OCI_URI"),
        ([*OCI_DST, "--destination-oci-base-image", "BusyBox"], "MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE"),
    ],
)
def test_a_bad_destination_reference_names_the_setting(argv: list[str], names: str) -> None:
    fails([*BASE, *S3_SRC, *argv], names)


@pytest.mark.parametrize("reference", ["quay.io/Org/m:1", "quay.io/m:1\n:2", "::::", "quay.io/", "oci://"])
def test_a_bad_source_reference_names_the_setting(reference: str) -> None:
    fails([*BASE, *S3_DST, "--source-type", "oci", "--source-oci-uri", reference], "MODEL_SYNC_SOURCE_OCI_URI")


def test_good_references_pass() -> None:
    check_references(
        job([*BASE, *OCI_DST, "--source-type", "oci", "--source-oci-uri", "oci://quay.io/org/m@sha256:" + "a" * 64])
    )


@pytest.mark.parametrize(
    "bucket",
    ["a" * 256, "-models", ".models", "bad bucket", "a/b", "tab\there"],
)
def test_a_bucket_no_s3_implementation_can_have_names_the_setting(bucket: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid setting MODEL_SYNC_X: bucket name"):
        check_bucket(bucket, "MODEL_SYNC_X")
    fails([*BASE, *S3_SRC, *S3_DST, f"--destination-aws-bucket={bucket}"], "MODEL_SYNC_DESTINATION_AWS_BUCKET")
    fails([*BASE, *S3_SRC, *S3_DST, f"--source-aws-bucket={bucket}"], "MODEL_SYNC_SOURCE_AWS_BUCKET")


@pytest.mark.parametrize("bucket", ["abc", "a" * 63, "models-2024", "my.models.v1", "0models9"])
def test_buckets_inside_the_rules_pass(bucket: str) -> None:
    assert check_bucket(bucket, "X") == bucket


def test_source_endpoint_port_out_of_range() -> None:
    fails(
        [*BASE, *S3_SRC, *S3_DST, "--source-aws-endpoint", "http://127.0.0.1:99999"], "MODEL_SYNC_SOURCE_AWS_ENDPOINT"
    )


def test_check_url_accepts_what_works() -> None:
    for url in ("http://127.0.0.1:9000", "https://s3.eu-west-1.amazonaws.com", "http://[::1]:9000/", "https://h/p?q=1"):
        assert check_url(url, "X", ("http", "https")).hostname


def test_path_problem() -> None:
    assert path_problem(Path("/var/run/model")) is None
    assert path_problem(Path("/" + "a" * 256)) is not None
    assert path_problem(Path("/a" * 2100)) is not None


# --- never a raw ExceptionGroup ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (ExceptionGroup("unhandled errors in a TaskGroup", [ConfigError("bad setting X")]), 2, "bad setting X"),
        (
            ExceptionGroup("outer", [ExceptionGroup("inner", [ValueError("boom")])]),
            1,
            "internal error: ValueError: boom",
        ),
    ],
)
def test_an_exception_group_shows_its_first_error(
    error: Exception, code: int, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import job.__main__ as main

    def raise_group(*args: object) -> None:
        raise error

    termination = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(termination))
    monkeypatch.setattr(main, "build_job_config", raise_group)
    # run() configures logging for a process: put back what it changes, for the tests that run after this one.
    root = logging.getLogger()
    handlers = list(root.handlers)
    levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    root_level = root.level
    try:
        assert main.run([], {"TERMINATION_MESSAGE_PATH": str(termination)}) == code
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert termination.read_text() == line
