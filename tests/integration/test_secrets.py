"""Secrets never reach stdout, stderr or the termination message, whatever fails and however loud the logs are.

Each case runs ``python -m job`` at DEBUG (one in JSON lines) with distinctive secret values in every place a
secret can come from (settings, a mounted S3 Secret, a ``.dockerconfigjson``, the URI Secret's ``HEADERS``,
``HF_TOKEN``, a presigned URL's query, the registry token), makes something fail where that secret is in use
(a refused signature, a refused login, a hostile proxy echoing the ``Authorization`` header back, a refused
API key on a presigned URL, an unreachable endpoint), and scans everything the job wrote for every secret, and for the
base64 form a Basic ``Authorization`` header carries. One case succeeds, so that the happy path is scanned too.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.jobs import (
    FAST,
    Run,
    oci_env,
    put_tree,
    pvc_env,
    registry_env,
    run_job,
    s3_env,
    update_artifact_env,
    write_tree,
)
from tests.servers import free_port
from tests.servers.faultproxy import FaultProxy, status
from tests.servers.http import HttpTestServer
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

S3_KEY_ID = "AKIDSECRETSCAN7Q2W"
S3_SECRET = "s3-secret-Zq8vX2mN4pL6"
OCI_USER = "scan-user"
OCI_PASSWORD = "oci-pass-Hk3Jd9Wq"
REGISTRY_TOKEN = "mr-token-Yb5Rt7Uc1Vx"
API_KEY = "hdr-key-Pw4Ne8Ls"
HF_TOKEN = "hf_secretscan_Tq6Mz"
SIGNATURE = "presig-Fv2Gh7Jk"
SECRETS = [S3_KEY_ID, S3_SECRET, OCI_PASSWORD, REGISTRY_TOKEN, API_KEY, HF_TOKEN, SIGNATURE,
           base64.b64encode(f"{OCI_USER}:{OCI_PASSWORD}".encode()).decode()]  # fmt: skip
LOUD = {**FAST, "MODEL_SYNC_LOG_LEVEL": "DEBUG", "MODEL_SYNC_REGISTRY_LOG_LEVEL": "DEBUG",
        "MODEL_SYNC_REGISTRY_USER_TOKEN": REGISTRY_TOKEN}  # fmt: skip


@dataclass
class Ctx:
    tmp: Path
    registry: ModelRegistryStandin
    registry_proxy: FaultProxy
    s3: S3Server
    oci_tls: Registry
    http: HttpTestServer
    bucket: str

    def base(self, source: dict[str, str] | None = None) -> dict[str, str]:
        """update_artifact of a fresh artifact, pvc -> S3 on SeaweedFS (with the real keys) unless replaced."""
        source = source or pvc_env(write_tree(self.tmp / "model", {"w.bin": b"w" * 1000}))
        return {**LOUD, **registry_env(self.registry.url), **update_artifact_env(self.registry.api_url), **source,
                **s3_env("DESTINATION", self.s3, self.bucket, f"{uuid.uuid4().hex[:8]}/out/m")}  # fmt: skip


def wrong_s3_keys(ctx: Ctx) -> dict[str, str]:
    return {**ctx.base(), "MODEL_SYNC_DESTINATION_AWS_ACCESS_KEY_ID": S3_KEY_ID,
            "MODEL_SYNC_DESTINATION_AWS_SECRET_ACCESS_KEY": S3_SECRET}  # fmt: skip


def wrong_s3_keys_json_logs(ctx: Ctx) -> dict[str, str]:
    return {**wrong_s3_keys(ctx), "MODEL_SYNC_LOG_FORMAT": "json"}


def s3_secret_dir_unreachable(ctx: Ctx) -> dict[str, str]:
    secret = write_tree(ctx.tmp / "s3-secret", {"AWS_ACCESS_KEY_ID": S3_KEY_ID.encode(),
                                                "AWS_SECRET_ACCESS_KEY": S3_SECRET.encode()})  # fmt: skip
    env = {k: v for k, v in ctx.base().items() if "DESTINATION_AWS_ACCESS" not in k and "SECRET_ACCESS" not in k}
    return {**env, "MODEL_SYNC_DESTINATION_S3_CREDENTIALS_PATH": str(secret),
            "MODEL_SYNC_DESTINATION_AWS_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # fmt: skip


def _oci_tls(ctx: Ctx) -> dict[str, str]:
    reg = ctx.oci_tls
    return {**ctx.base(), **oci_env("DESTINATION", f"{reg.host}/sec/m{uuid.uuid4().hex[:6]}:1", base=reg.base),
            "MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY": "true", "MODEL_SYNC_DESTINATION_OCI_CA_BUNDLE": str(reg.ca_cert)}  # fmt: skip


def wrong_oci_password(ctx: Ctx) -> dict[str, str]:
    return {
        **_oci_tls(ctx),
        "MODEL_SYNC_DESTINATION_OCI_USERNAME": OCI_USER,
        "MODEL_SYNC_DESTINATION_OCI_PASSWORD": OCI_PASSWORD,
    }


def wrong_docker_config(ctx: Ctx) -> dict[str, str]:
    auth = base64.b64encode(f"{OCI_USER}:{OCI_PASSWORD}".encode()).decode()
    config = ctx.tmp / "dockerconfig.json"
    config.write_text(json.dumps({"auths": {ctx.oci_tls.host: {"auth": auth}}}))
    return {**_oci_tls(ctx), "MODEL_SYNC_DESTINATION_OCI_CREDENTIALS_PATH": str(config)}


def token_echoed_by_a_proxy(ctx: Ctx) -> dict[str, str]:
    env = ctx.base()
    body = f"denied: Authorization: Bearer {REGISTRY_TOKEN}".encode()
    ctx.registry_proxy.add(
        status(401, body=body), path=rf"/model_artifacts/{env['MODEL_SYNC_MODEL_ARTIFACT_ID']}$", times=50
    )
    return {**env, "MODEL_SYNC_REGISTRY_SERVER_ADDRESS": ctx.registry_proxy.url}


def presigned_url_and_refused_header(ctx: Ctx) -> dict[str, str]:
    url = ctx.http.url(f"/private/missing.bin?X-Amz-Credential={S3_KEY_ID}%2F20260101&X-Amz-Signature={SIGNATURE}")
    secret = write_tree(ctx.tmp / "uri-secret", {"URI": url.encode(), "HEADERS": f"X-Api-Key: {API_KEY}\n".encode()})
    return ctx.base({"MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH": str(secret)})


def wrong_hf_token(ctx: Ctx) -> dict[str, str]:
    return ctx.base({"MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI": "hf://acme/private",
                     "HF_ENDPOINT": ctx.http.origin, "HF_TOKEN": HF_TOKEN})  # fmt: skip


def token_with_a_newline_echoed_by_a_proxy(ctx: Ctx) -> dict[str, str]:
    """What a Secret made with ``echo`` gives: the newline is stripped as the value is read, so the request is
    sent (and refused by the echoing proxy) instead of failing in the HTTP library, which prints its repr."""
    env = token_echoed_by_a_proxy(ctx)
    return {**env, "MODEL_SYNC_REGISTRY_USER_TOKEN": REGISTRY_TOKEN + "\n"}


def token_envvar_with_a_newline(ctx: Ctx) -> dict[str, str]:
    env = {k: v for k, v in token_echoed_by_a_proxy(ctx).items() if k != "MODEL_SYNC_REGISTRY_USER_TOKEN"}
    return {**env, "MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR": "MY_TOKEN", "MY_TOKEN": f" {REGISTRY_TOKEN}\r\n"}


def token_with_a_line_break_inside(ctx: Ctx) -> dict[str, str]:
    return {**ctx.base(), "MODEL_SYNC_REGISTRY_USER_TOKEN": f"{REGISTRY_TOKEN}\nX-Injected: 1"}


def hf_token_with_a_newline(ctx: Ctx) -> dict[str, str]:
    return {**wrong_hf_token(ctx), "HF_TOKEN": HF_TOKEN + "\n"}


def non_ascii_header_value(ctx: Ctx) -> dict[str, str]:
    url = ctx.http.url("/private/missing.bin")
    headers = f"X-Api-Key: {API_KEY}\u00e9\n".encode()
    secret = write_tree(ctx.tmp / "uri-secret", {"URI": url.encode(), "HEADERS": headers})
    return ctx.base({"MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH": str(secret)})


def success_with_every_log_line(ctx: Ctx) -> dict[str, str]:
    """S3 -> S3 with a source Secret of real keys, at DEBUG: the happy path is scanned too."""
    prefix = f"{uuid.uuid4().hex[:8]}/m/"
    put_tree(ctx.s3, ctx.bucket, prefix, {"a.bin": b"a" * 6_000_000, "b.json": b"{}"})
    return ctx.base(s3_env("SOURCE", ctx.s3, ctx.bucket, prefix))


CASES: dict[str, tuple[Callable[[Ctx], dict[str, str]], int]] = {
    "S3 refuses the signature": (wrong_s3_keys, 1),
    "S3 refuses the signature, JSON logs": (wrong_s3_keys_json_logs, 1),
    "S3 Secret keys, endpoint unreachable": (s3_secret_dir_unreachable, 1),
    "OCI registry refuses the password": (wrong_oci_password, 1),
    "OCI registry refuses the .dockerconfigjson login": (wrong_docker_config, 1),
    "a proxy echoes the registry token back": (token_echoed_by_a_proxy, 1),
    "presigned URL, the server refuses the API key header": (presigned_url_and_refused_header, 1),
    "Hub refuses HF_TOKEN": (wrong_hf_token, 1),
    "registry token ending in a newline, echoed by a proxy": (token_with_a_newline_echoed_by_a_proxy, 1),
    "registry token from an env var, ending in CRLF": (token_envvar_with_a_newline, 1),
    "registry token with a line break inside": (token_with_a_line_break_inside, 2),
    "HF_TOKEN ending in a newline, refused": (hf_token_with_a_newline, 1),
    "a HEADERS value that is not ASCII": (non_ascii_header_value, 2),
    "success": (success_with_every_log_line, 0),
}


@pytest.fixture(scope="module")
def runs(
    registry_standin: ModelRegistryStandin,
    registry_proxy: FaultProxy,
    seaweedfs_s3: S3Server,
    registry_htpasswd: Registry,
    http_server: HttpTestServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Run]:
    registry_proxy.clear()
    bucket = fresh_bucket(seaweedfs_s3, "sec")
    envs = {}
    for name, (build, _) in CASES.items():
        tmp = tmp_path_factory.mktemp("secrets")
        ctx = Ctx(tmp, registry_standin, registry_proxy, seaweedfs_s3, registry_htpasswd, http_server, bucket)
        envs[name] = (build(ctx), tmp)
    with ThreadPoolExecutor(4) as pool:
        done = dict(zip(envs, pool.map(lambda e: run_job(*e, timeout=120), envs.values()), strict=True))
    registry_proxy.clear()
    return done


@pytest.mark.parametrize("name", list(CASES))
def test_no_secret_in_any_output(name: str, runs: dict[str, Run]) -> None:
    run, code = runs[name], CASES[name][1]
    assert run.code == code, run.stderr[-3000:]
    if code:
        run.assert_one_line_failure()
    if code != 2:  # a config error ends before logging is set up at DEBUG
        assert "DEBUG" in run.stderr or '"level": "DEBUG"' in run.stderr  # the loudest logs were on
    leaked = [secret for secret in SECRETS if secret in run.output]
    assert not leaked, f"{leaked} found in:\n{run.output[-3000:]}"
    assert "LocalProtocolError" not in run.output and "Illegal header value" not in run.output
    assert "internal error" not in run.output


@pytest.mark.parametrize(
    ("name", "setting"),
    [
        ("registry token with a line break inside", "MODEL_SYNC_REGISTRY_USER_TOKEN"),
        ("a HEADERS value that is not ASCII", "MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH"),
    ],
)
def test_a_malformed_secret_is_a_config_error_naming_its_setting(name: str, setting: str, runs: dict[str, Run]) -> None:
    run = runs[name]
    run.assert_one_line_failure(code=2)
    assert setting in run.message
    assert "X-Injected" not in run.output  # nothing of the value is shown


@pytest.mark.parametrize(
    "name",
    [
        "registry token ending in a newline, echoed by a proxy",
        "registry token from an env var, ending in CRLF",
        "HF_TOKEN ending in a newline, refused",
    ],
)
def test_a_secret_ending_in_a_newline_is_sent_stripped_and_not_retried_as_malformed(
    name: str, runs: dict[str, Run]
) -> None:
    """The request went out (the server refused it), instead of an HTTP library error after five retries."""
    run = runs[name]
    assert "401" in run.message or "refused" in run.message.lower() or "denied" in run.message, run.message
    assert "retrying" not in run.stderr
