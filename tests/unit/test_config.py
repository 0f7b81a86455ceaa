"""Settings: the upstream interface, precedence CLI > env > credential files > defaults, typed view."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from job.config import build_job_config
from job.errors import ConfigError
from job.settings.chain import Settings, load_settings
from job.settings.names import arg_name, env_name

# Every env var and arg of the upstream README's table (Kubeflow's async-upload job README), verbatim.
UPSTREAM_ENV_VARS = """
MODEL_SYNC_SOURCE_TYPE MODEL_SYNC_SOURCE_S3_CREDENTIALS_PATH MODEL_SYNC_SOURCE_OCI_CREDENTIALS_PATH
MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH MODEL_SYNC_SOURCE_URI MODEL_SYNC_SOURCE_AWS_BUCKET MODEL_SYNC_SOURCE_AWS_KEY
MODEL_SYNC_SOURCE_AWS_REGION MODEL_SYNC_SOURCE_AWS_ACCESS_KEY_ID MODEL_SYNC_SOURCE_AWS_SECRET_ACCESS_KEY
MODEL_SYNC_SOURCE_AWS_ENDPOINT MODEL_SYNC_SOURCE_OCI_URI MODEL_SYNC_SOURCE_OCI_REGISTRY MODEL_SYNC_SOURCE_OCI_USERNAME
MODEL_SYNC_SOURCE_OCI_PASSWORD MODEL_SYNC_DESTINATION_TYPE MODEL_SYNC_DESTINATION_S3_CREDENTIALS_PATH
MODEL_SYNC_DESTINATION_OCI_CREDENTIALS_PATH MODEL_SYNC_DESTINATION_AWS_BUCKET MODEL_SYNC_DESTINATION_AWS_KEY
MODEL_SYNC_DESTINATION_AWS_REGION MODEL_SYNC_DESTINATION_AWS_ACCESS_KEY_ID MODEL_SYNC_DESTINATION_AWS_SECRET_ACCESS_KEY
MODEL_SYNC_DESTINATION_AWS_ENDPOINT MODEL_SYNC_DESTINATION_OCI_URI MODEL_SYNC_DESTINATION_OCI_REGISTRY
MODEL_SYNC_DESTINATION_OCI_USERNAME MODEL_SYNC_DESTINATION_OCI_PASSWORD MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE
MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY MODEL_SYNC_MODEL_UPLOAD_INTENT MODEL_SYNC_MODEL_ID
MODEL_SYNC_MODEL_VERSION_ID MODEL_SYNC_MODEL_ARTIFACT_ID MODEL_SYNC_STORAGE_PATH MODEL_SYNC_REGISTRY_SERVER_ADDRESS
MODEL_SYNC_REGISTRY_PORT MODEL_SYNC_REGISTRY_IS_SECURE MODEL_SYNC_REGISTRY_AUTHOR MODEL_SYNC_REGISTRY_USER_TOKEN
MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR MODEL_SYNC_REGISTRY_CUSTOM_CA MODEL_SYNC_REGISTRY_CUSTOM_CA_ENVVAR
MODEL_SYNC_REGISTRY_LOG_LEVEL MODEL_SYNC_METADATA_CONFIGMAP_PATH
""".split()

UPSTREAM_DEFAULTS = {
    "source_type": "s3",
    "destination_type": "oci",
    "destination_oci_base_image": "busybox:latest",
    "destination_oci_enable_tls_verify": True,
    "model_upload_intent": "update_artifact",
    "storage_path": Path("/tmp/model-sync"),
    "registry_port": 443,
    "registry_is_secure": True,
}

OURS = ["MODEL_SYNC_SOURCE_PATH", "MODEL_SYNC_SOURCE_OCI_ENABLE_TLS_VERIFY", "MODEL_SYNC_JOB_ID"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MODEL_SYNC_* from the developer's shell may leak into a test."""
    import os

    for name in list(os.environ):
        if name.startswith(("MODEL_SYNC_", "AWS_", "KF_PIPELINES")) or name == "TERMINATION_MESSAGE_PATH":
            monkeypatch.delenv(name)


def s3_secret(tmp_path: Path, name: str = "s3", **files: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    for key, value in files.items():
        (d / key).write_text(value)
    return d


def docker_config(tmp_path: Path, auths: dict[str, object], name: str = ".dockerconfigjson") -> Path:
    f = tmp_path / name
    f.write_text(json.dumps({"auths": auths}))
    return f


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- the interface ------------------------------------------------------------------------


@pytest.mark.parametrize("env", UPSTREAM_ENV_VARS + OURS)
def test_every_upstream_env_var_is_a_setting_with_its_arg(env: str) -> None:
    field = env.removeprefix("MODEL_SYNC_").lower()
    assert field in Settings.model_fields
    assert env_name(field) == env
    assert arg_name(field) == "--" + field.replace("_", "-")


def test_termination_message_path_reads_the_kubernetes_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings([]).termination_message_path == Path("/dev/termination-log")
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", "/tmp/tm")
    assert load_settings([]).termination_message_path == Path("/tmp/tm")


@pytest.mark.parametrize(("field", "default"), UPSTREAM_DEFAULTS.items())
def test_upstream_defaults(field: str, default: object) -> None:
    assert getattr(load_settings([]), field) == default


def test_every_arg_parses_as_upstream_spells_it() -> None:
    """Each upstream arg is accepted on the command line under its upstream name."""
    argv: list[str] = []
    for env in UPSTREAM_ENV_VARS:
        field = env.removeprefix("MODEL_SYNC_").lower()
        if field.endswith("credentials_path") or field in ("metadata_configmap_path",):
            continue  # these read files, tested below
        value = {"source_type": "uri", "destination_type": "s3", "model_upload_intent": "create_model",
                 "registry_log_level": "30"}.get(field)  # fmt: skip
        if value is None:
            annotation = str(Settings.model_fields[field].annotation)
            value = {"bool": "false", "int": "8443"}.get(annotation.removeprefix("<class '").removesuffix("'>"), "x")
        argv += [arg_name(field), value]
    settings = load_settings(argv)
    assert settings.source_type == "uri"
    assert settings.registry_is_secure is False
    assert settings.registry_port == 8443
    assert settings.registry_log_level == "WARNING"  # upstream's default was the number logging.WARNING


def test_help_lists_every_setting_with_its_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_settings(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for field in Settings.model_fields:
        assert arg_name(field) in out
        assert f"[env: {env_name(field)}]" in out


# --- precedence: one test per pair ---------------------------------------------------------


def test_cli_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_SYNC_SOURCE_AWS_BUCKET", "from-env")
    assert load_settings(["--source-aws-bucket", "from-cli"]).source_aws_bucket == "from-cli"


def test_cli_beats_credential_files(tmp_path: Path) -> None:
    creds = s3_secret(tmp_path, AWS_BUCKET="from-file", AWS_SECRET_ACCESS_KEY="file-secret")
    settings = load_settings(
        ["--source-s3-credentials-path", str(creds), "--source-aws-bucket", "from-cli",
         "--source-aws-secret-access-key", "cli-secret"]
    )  # fmt: skip
    assert settings.source_aws_bucket == "from-cli"
    assert settings.source_aws_secret_access_key is not None
    assert settings.source_aws_secret_access_key.get_secret_value() == "cli-secret"


def test_cli_beats_default() -> None:
    assert load_settings(["--destination-oci-base-image", "quay.io/x/base:1"]).destination_oci_base_image == (
        "quay.io/x/base:1"
    )


def test_env_beats_credential_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = s3_secret(tmp_path, AWS_REGION="file-region", AWS_ENDPOINT_URL="http://file")
    monkeypatch.setenv("MODEL_SYNC_DESTINATION_S3_CREDENTIALS_PATH", str(creds))
    monkeypatch.setenv("MODEL_SYNC_DESTINATION_AWS_REGION", "env-region")
    settings = load_settings([])
    assert settings.destination_aws_region == "env-region"
    assert settings.destination_aws_endpoint == "http://file"


def test_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_SYNC_REGISTRY_PORT", "8080")
    assert load_settings([]).registry_port == 8080


def test_credential_files_beat_default(tmp_path: Path) -> None:
    uri = tmp_path / "uri"
    uri.mkdir()
    (uri / "URI").write_text("https://example.invalid/model.tar.gz\n")
    assert load_settings(["--source-uri-credentials-path", str(uri)]).source_uri == (
        "https://example.invalid/model.tar.gz"
    )


def test_credentials_path_itself_follows_cli_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir = s3_secret(tmp_path, "env", AWS_BUCKET="env-dir")
    cli_dir = s3_secret(tmp_path, "cli", AWS_BUCKET="cli-dir")
    monkeypatch.setenv("MODEL_SYNC_SOURCE_S3_CREDENTIALS_PATH", str(env_dir))
    assert load_settings(["--source-s3-credentials-path", str(cli_dir)]).source_aws_bucket == "cli-dir"


# --- credential files --------------------------------------------------------------------


def test_s3_secret_dir_reads_every_key_and_strips_newlines(tmp_path: Path) -> None:
    creds = s3_secret(
        tmp_path,
        AWS_ACCESS_KEY_ID="AKIDEXAMPLE\n",
        AWS_SECRET_ACCESS_KEY="s3cr3t-value\n",
        AWS_DEFAULT_REGION="eu-west-1\n",
        AWS_S3_ENDPOINT="http://127.0.0.1:9000\n",
        AWS_S3_BUCKET="models\n",
    )
    s = load_settings(["--source-s3-credentials-path", str(creds)])
    assert s.source_aws_access_key_id is not None and s.source_aws_access_key_id.get_secret_value() == "AKIDEXAMPLE"
    assert s.source_aws_secret_access_key is not None
    assert s.source_aws_secret_access_key.get_secret_value() == "s3cr3t-value"
    assert (s.source_aws_region, s.source_aws_endpoint, s.source_aws_bucket) == (
        "eu-west-1",
        "http://127.0.0.1:9000",
        "models",
    )
    assert "s3cr3t-value" not in repr(s) and "s3cr3t-value" not in str(s.model_dump())


def test_s3_secret_prefers_the_primary_names(tmp_path: Path) -> None:
    creds = s3_secret(
        tmp_path, AWS_REGION="r1", AWS_DEFAULT_REGION="r2", AWS_ENDPOINT_URL="http://e1", AWS_S3_ENDPOINT="http://e2",
        AWS_BUCKET="b1", AWS_S3_BUCKET="b2",
    )  # fmt: skip
    s = load_settings(["--destination-s3-credentials-path", str(creds)])
    assert (s.destination_aws_region, s.destination_aws_endpoint, s.destination_aws_bucket) == ("r1", "http://e1", "b1")


@pytest.mark.parametrize(
    "key",
    ["registry.example.com:5000", "https://registry.example.com:5000", "registry.example.com:5000/v1/",
     "https://registry.example.com:5000/v1/"],
)  # fmt: skip
def test_dockerconfig_entry_matched_by_host_in_any_spelling(tmp_path: Path, key: str) -> None:
    cfg = docker_config(tmp_path, {key: {"auth": b64("robot:pa:ss")}})
    s = load_settings(
        ["--destination-oci-credentials-path", str(cfg), "--destination-oci-uri", "registry.example.com:5000/m:1"]
    )
    assert s.destination_oci_username == "robot"
    assert s.destination_oci_password is not None and s.destination_oci_password.get_secret_value() == "pa:ss"
    assert s.destination_oci_registry == "registry.example.com:5000"


def test_dockerconfig_username_password_and_mounted_dir(tmp_path: Path) -> None:
    secret_dir = tmp_path / "pull-secret"
    secret_dir.mkdir()
    docker_config(secret_dir, {"quay.io": {"username": "u", "password": "p4ss"}, "other.io": {"auth": b64("a:b")}})
    s = load_settings(["--source-oci-credentials-path", str(secret_dir), "--source-oci-registry", "quay.io"])
    assert s.source_oci_username == "u"
    assert s.source_oci_password is not None and s.source_oci_password.get_secret_value() == "p4ss"


def test_dockerconfig_cli_login_beats_file(tmp_path: Path) -> None:
    cfg = docker_config(tmp_path, {"quay.io": {"auth": b64("file-user:file-pass")}})
    s = load_settings(
        ["--destination-oci-credentials-path", str(cfg), "--destination-oci-uri", "quay.io/o/m:1",
         "--destination-oci-username", "cli-user"]
    )  # fmt: skip
    assert s.destination_oci_username == "cli-user"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"registries": {}}', 'no "auths" object'),
        ('{"auths": {"quay.io": {"auth": "!!!"}}}', "is not base64"),
        ('{"auths": {"quay.io": {"auth": "' + b64("nocolon") + '"}}}', "user:password"),
        ('{"auths": {"quay.io": {"email": "x@y"}}}', "neither"),
        ('{"auths": {"other.io": {"auth": "' + b64("a:b") + '"}}}', "no login for registry quay.io"),
    ],
)
def test_malformed_dockerconfig_is_a_config_error_naming_the_setting(
    tmp_path: Path, content: str, expected: str
) -> None:
    cfg = tmp_path / ".dockerconfigjson"
    cfg.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_settings(["--destination-oci-credentials-path", str(cfg), "--destination-oci-uri", "quay.io/o/m:1"])
    assert "MODEL_SYNC_DESTINATION_OCI_CREDENTIALS_PATH" in str(err.value)
    assert expected in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    "setting", ["source_s3_credentials_path", "destination_s3_credentials_path", "source_uri_credentials_path",
                "source_oci_credentials_path", "destination_oci_credentials_path"],
)  # fmt: skip
def test_missing_credentials_path_is_a_config_error(tmp_path: Path, setting: str) -> None:
    with pytest.raises(ConfigError, match=env_name(setting)) as err:
        load_settings([arg_name(setting), str(tmp_path / "not-mounted")])
    assert "does not exist" in str(err.value)


# --- the typed view ----------------------------------------------------------------------

BASE = ["--registry-server-address", "http://127.0.0.1:8080", "--model-artifact-id", "1"]
S3_SRC = ["--source-aws-bucket", "bkt", "--source-aws-key", "models/m/", "--source-aws-access-key-id", "AK",
          "--source-aws-secret-access-key", "SK"]  # fmt: skip
OCI_DST = ["--destination-oci-uri", "oci://127.0.0.1:5000/models/m:v1"]


def job(argv: list[str], environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return build_job_config(load_settings(argv), environ or {})


def test_s3_to_oci_typed() -> None:
    cfg = job(BASE + S3_SRC + OCI_DST)
    assert cfg.source.uri == "s3://bkt/models/m/"  # type: ignore[union-attr]
    assert cfg.destination.reference == "127.0.0.1:5000/models/m:v1"  # type: ignore[union-attr]
    assert cfg.destination.registry == "127.0.0.1:5000"  # type: ignore[union-attr]
    assert cfg.registry.base_url == "http://127.0.0.1:8080"
    assert cfg.registry.verify is False


@pytest.mark.parametrize(
    ("address", "extra", "expected"),
    [
        ("model-registry.kubeflow.svc", [], "https://model-registry.kubeflow.svc:443"),
        ("model-registry.kubeflow.svc", ["--registry-port", "8443"], "https://model-registry.kubeflow.svc:8443"),
        ("model-registry.kubeflow.svc", ["--registry-is-secure", "false", "--registry-port", "8080"],
         "http://model-registry.kubeflow.svc:8080"),
        ("https://mr.example.com", [], "https://mr.example.com:443"),
        ("http://127.0.0.1:8080", [], "http://127.0.0.1:8080"),
        ("http://mr:8080", ["--registry-port", "9090"], "http://mr:9090"),
    ],
)  # fmt: skip
def test_registry_base_url(address: str, extra: list[str], expected: str) -> None:
    cfg = job(["--registry-server-address", address, "--model-artifact-id", "1", *S3_SRC, *OCI_DST, *extra])
    assert cfg.registry.base_url == expected


def test_registry_token_sources(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    given = job([*BASE, *S3_SRC, *OCI_DST, "--registry-user-token", "t1"]).registry
    assert (given.token.get_secret_value(), given.token_file) == ("t1", None)  # type: ignore[union-attr]
    by_path = job([*BASE, *S3_SRC, *OCI_DST, "--registry-user-token-envvar", "MY_TOKEN"], {"MY_TOKEN": str(token_file)})
    assert by_path.registry.token.get_secret_value() == "file-token"
    assert by_path.registry.token_file == token_file  # read again when the kubelet rotates it
    by_value = job([*BASE, *S3_SRC, *OCI_DST, "--registry-user-token-envvar", "MY_TOKEN"], {"MY_TOKEN": "raw-token"})
    assert by_value.registry.token.get_secret_value() == "raw-token"
    assert by_value.registry.token_file is None
    kf = job([*BASE, *S3_SRC, *OCI_DST], {"KF_PIPELINES_SA_TOKEN_PATH": str(token_file)})
    assert kf.registry.token.get_secret_value() == "file-token"
    assert kf.registry.token_file == token_file
    with pytest.raises(ConfigError, match="MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR"):
        job([*BASE, *S3_SRC, *OCI_DST, "--registry-user-token-envvar", "UNSET_VAR"])


def test_registry_custom_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    secure = ["--registry-server-address", "mr.example.com", "--model-artifact-id", "1", *S3_SRC, *OCI_DST]
    assert job([*secure, "--registry-custom-ca", str(ca)]).registry.verify == str(ca)
    assert job([*secure, "--registry-custom-ca-envvar", "CA"], {"CA": str(ca)}).registry.verify == str(ca)
    assert job(secure).registry.verify is True
    with pytest.raises(ConfigError, match="MODEL_SYNC_REGISTRY_CUSTOM_CA"):
        job([*secure, "--registry-custom-ca", str(tmp_path / "missing.crt")])


def test_s3_keys_may_come_from_the_pod_identity() -> None:
    argv = [*BASE, "--source-aws-bucket", "bkt", "--source-aws-key", "k", *OCI_DST]
    with pytest.raises(ConfigError, match="MODEL_SYNC_SOURCE_AWS_ACCESS_KEY_ID"):
        job(argv)
    cfg = job(argv, {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks.amazonaws.com/token"})
    assert cfg.source.access_key_id is None  # type: ignore[union-attr]


# --- bad input: one line naming the setting, exit 2 ---------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--source-type", "gcs"], {}, "MODEL_SYNC_SOURCE_TYPE"),
        ([*BASE, "--source-aws-key", "k", *OCI_DST], {}, "MODEL_SYNC_SOURCE_AWS_BUCKET"),
        ([*BASE, "--destination-type", "s3", *S3_SRC], {}, "MODEL_SYNC_DESTINATION_AWS_BUCKET"),
        ([*BASE, *S3_SRC], {}, "MODEL_SYNC_DESTINATION_OCI_URI"),
        (["--model-artifact-id", "1", *S3_SRC, *OCI_DST], {}, "MODEL_SYNC_REGISTRY_SERVER_ADDRESS"),
        ([*BASE, "--source-type", "uri", *OCI_DST], {}, "MODEL_SYNC_SOURCE_URI"),
        ([*BASE, "--source-type", "uri", "--source-uri", "ftp://x/y", *OCI_DST], {}, "MODEL_SYNC_SOURCE_URI"),
        ([*BASE, "--source-type", "pvc", *OCI_DST], {}, "MODEL_SYNC_SOURCE_PATH"),
        ([*BASE, "--source-type", "pvc", "--source-path", "/nonexistent/model", *OCI_DST], {}, "MODEL_SYNC_SOURCE_PATH"),
        ([], {"MODEL_SYNC_REGISTRY_IS_SECURE": "maybe"}, "MODEL_SYNC_REGISTRY_IS_SECURE"),
        ([], {"MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY": "yes please"}, "MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY"),
        ([], {"MODEL_SYNC_REGISTRY_PORT": "https"}, "MODEL_SYNC_REGISTRY_PORT"),
        ([], {"MODEL_SYNC_MODEL_UPLOAD_INTENT": "delete_model"}, "MODEL_SYNC_MODEL_UPLOAD_INTENT"),
        ([], {"MODEL_SYNC_REGISTRY_LOG_LEVEL": "LOUD"}, "MODEL_SYNC_REGISTRY_LOG_LEVEL"),
        ([*BASE, *S3_SRC, *OCI_DST, "--destination-oci-username", "u"], {}, "MODEL_SYNC_DESTINATION_OCI_PASSWORD"),
        ([*BASE, *S3_SRC[:-2], *OCI_DST], {}, "MODEL_SYNC_SOURCE_AWS_SECRET_ACCESS_KEY"),
        (["--no-such-flag", "1"], {}, "--no-such-flag"),
        ([*BASE, *S3_SRC, *OCI_DST, "--metadata-configmap-path", "/nonexistent/cm"], {},
         "MODEL_SYNC_METADATA_CONFIGMAP_PATH"),
    ],
)  # fmt: skip
def test_bad_input_names_the_setting(
    argv: list[str], env: dict[str, str], names: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        job(argv)
    message = str(err.value)
    assert names in message
    assert "\n" not in message
    assert err.value.exit_code == 2


def test_invalid_values_are_not_echoed_for_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_SYNC_PARALLEL_FILES", "not-a-number-s3cr3t")
    with pytest.raises(ConfigError) as err:
        load_settings([])
    assert "s3cr3t" not in str(err.value)


def test_uri_secret_headers_and_hub_env(tmp_path: Path) -> None:
    secret = tmp_path / "uri-secret"
    secret.mkdir()
    (secret / "URI").write_text("https://models.example.invalid/m.tar.gz\n")
    (secret / "HEADERS").write_text("# for the model server\nAuthorization: Bearer hdr-token\nX-Team: nlp\n\n")
    argv = [*BASE, *OCI_DST, "--source-type", "uri", "--source-uri-credentials-path", str(secret)]
    cfg = job(argv, {"HF_ENDPOINT": "http://127.0.0.1:9/", "HF_TOKEN": "hf_tok"})
    assert cfg.source.uri == "https://models.example.invalid/m.tar.gz"  # type: ignore[union-attr]
    headers = {k: v.get_secret_value() for k, v in cfg.source.headers.items()}  # type: ignore[union-attr]
    assert headers == {"Authorization": "Bearer hdr-token", "X-Team": "nlp"}
    assert cfg.source.hf_endpoint == "http://127.0.0.1:9"  # type: ignore[union-attr]
    assert cfg.source.hf_token.get_secret_value() == "hf_tok"  # type: ignore[union-attr]
    assert "hdr-token" not in repr(cfg)
    (secret / "HEADERS").write_text("not a header line\n")
    with pytest.raises(ConfigError, match="MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH.*line 1"):
        job(argv)


def test_include_exclude_globs_are_comma_separated() -> None:
    cfg = job([*BASE, *S3_SRC, *OCI_DST, "--source-include", "*.json, *.safetensors", "--source-exclude", "onnx/"])
    assert cfg.include == ("*.json", "*.safetensors")
    assert cfg.exclude == ("onnx/",)


def test_dockerconfig_anonymous_entry_means_no_login(tmp_path: Path) -> None:
    """Upstream's own sample writes {"auth": ""} for a registry without auth: it must run unchanged."""
    cfg = docker_config(tmp_path, {"registry.example.com": {"auth": "", "email": "user@example.com"}})
    s = load_settings(
        ["--destination-oci-credentials-path", str(cfg), "--destination-oci-uri", "registry.example.com/m:1"]
    )
    assert (s.destination_oci_username, s.destination_oci_password) == (None, None)


def test_unknown_env_settings_are_reported_with_a_suggestion() -> None:
    from job.settings.names import unknown_env_settings

    notes = unknown_env_settings(
        {"MODEL_SYNC_SOURCE_AWS_BUKET": "x", "MODEL_SYNC_SOURCE_TYPE": "s3", "HOME": "/"}, Settings.model_fields
    )
    assert notes == ["MODEL_SYNC_SOURCE_AWS_BUKET (did you mean MODEL_SYNC_SOURCE_AWS_BUCKET?)"]


# --- secrets as they come out of `echo` ---------------------------------------------------------------


@pytest.mark.parametrize("field", ["registry_user_token", "source_aws_secret_access_key", "destination_oci_password"])
def test_secrets_lose_surrounding_white_space(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name(field), " tok-secret-1234\r\n")
    assert getattr(load_settings([]), field).get_secret_value() == "tok-secret-1234"


@pytest.mark.parametrize("value", ["zq8\nX-Injected: 1", "zq8\x1b[2Jtail", "zq8\x7f"])
def test_a_control_character_inside_a_secret_is_a_config_error_that_shows_nothing_of_it(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_SYNC_REGISTRY_USER_TOKEN", value)
    with pytest.raises(ConfigError) as err:
        load_settings([])
    message = str(err.value)
    assert message.startswith("invalid setting MODEL_SYNC_REGISTRY_USER_TOKEN (--registry-user-token): ")
    assert "control character" in message and "zq8" not in message and "Injected" not in message


def test_token_sources_and_hub_token_are_stripped_and_checked(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  file-token\r\n")
    by_path = job([*BASE, *S3_SRC, *OCI_DST, "--registry-user-token-envvar", "T"], {"T": str(token_file) + "\n"})
    assert by_path.registry.token.get_secret_value() == "file-token"  # type: ignore[union-attr]
    by_value = job([*BASE, *S3_SRC, *OCI_DST, "--registry-user-token-envvar", "T"], {"T": "raw-token\n"})
    assert by_value.registry.token.get_secret_value() == "raw-token"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"^MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR.*env var T: .*control character"):
        job([*BASE, *S3_SRC, *OCI_DST, "--registry-user-token-envvar", "T"], {"T": "raw\ntoken"})
    token_file.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        job([*BASE, *S3_SRC, *OCI_DST, "--registry-user-token-envvar", "T"], {"T": str(token_file)})
    hub = [*BASE, *OCI_DST, "--source-type", "uri", "--source-uri", "hf://org/m"]
    assert job(hub, {"HF_TOKEN": "hf_tok\n"}).source.hf_token.get_secret_value() == "hf_tok"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="env var HF_TOKEN: the value is not ASCII"):
        job(hub, {"HF_TOKEN": "hf_tök"})


def test_a_headers_value_with_a_control_character_or_not_ascii_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "uri-secret"
    secret.mkdir()
    (secret / "URI").write_text("https://models.example.invalid/m.bin\n")
    argv = [*BASE, *OCI_DST, "--source-type", "uri", "--source-uri-credentials-path", str(secret)]
    for bad, why in (("X-Key: caf\u00e9-secret\n", "not ASCII"), ("X-Key: a\tb\x01c\n", "control character")):
        (secret / "HEADERS").write_text(bad)
        with pytest.raises(
            ConfigError, match=f"MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH.*line 1 \\(X-Key\\).*{why}"
        ) as err:
            job(argv)
        assert "secret" not in str(err.value).split("line 1")[1]


def test_oci_and_http_sources_read_ahead_as_parallel_reads_and_read_ahead_mib_say() -> None:
    from job.backends import make_source
    from job.sources.oci import OciSource
    from job.sources.uri import UriSource

    argv = [
        "--registry-server-address", "http://127.0.0.1:9",
        "--source-type", "oci", "--source-oci-uri", "oci://127.0.0.1:5000/models/any:v1",
        "--destination-type", "oci", "--destination-oci-uri", "oci://127.0.0.1:5000/models/out:v1",
        "--destination-oci-base-image", "127.0.0.1:5000/base/busybox:latest",
        "--parallel-reads", "6", "--read-ahead-mib", "48",
    ]  # fmt: skip
    source = make_source(build_job_config(load_settings(argv), {}))
    assert isinstance(source, OciSource)
    ahead = source.client.read_ahead
    assert ahead is not None and (ahead.parallel, ahead.budget) == (6, 48 * 1024 * 1024)
    defaults = build_job_config(load_settings(argv[:-4]), {})
    assert (defaults.parallel_reads, defaults.read_ahead) == (4, 32 * 1024 * 1024)
    uri = argv[:2] + ["--source-type", "uri", "--source-uri", "https://example.com/m.bin"] + argv[6:]
    http = make_source(build_job_config(load_settings(uri), {}))
    assert isinstance(http, UriSource)
    ahead = http._client.read_ahead
    assert ahead is not None and (ahead.parallel, ahead.budget) == (6, 48 * 1024 * 1024)
