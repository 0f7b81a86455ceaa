"""Bad input, as a user or a server gives it: the job exits non-zero with one line naming the culprit.

A table of cases over settings, credentials, metadata, registry answers and source contents, each run as
``python -m job`` with env vars. Every case: the expected exit code (2 for a configuration error, 1 for what
only a server could tell), a one-line termination message naming the culprit (the setting, the key, the entity,
the archive entry, ...) and the same line in the log, no traceback. A configuration error reaches no server:
every address points at a :class:`~tests.integration.test_cli.Tripwire`, which counts connections. Runtime
cases use the real servers, and leave no artifact PENDING.

The cases run ``PARALLEL`` at a time (each has its own bucket, artifact or tripwire); each test checks its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.jobs import (
    FAST,
    Run,
    get_artifact,
    oci_env,
    pvc_env,
    registry_env,
    run_job,
    s3_env,
    update_artifact_env,
    write_tree,
)
from tests.integration.test_cli import Tripwire
from tests.servers.faultproxy import FaultProxy, status
from tests.servers.http import HttpTestServer
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

PARALLEL = 4
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Ctx:
    """What a case's env builder may use."""

    tmp: Path
    tripwire: Tripwire
    registry: ModelRegistryStandin
    registry_proxy: FaultProxy
    s3: S3Server
    oci: Registry
    oci_tls: Registry
    http: HttpTestServer
    bucket: str
    """One bucket for every case (each writes under a prefix of its own)."""

    @property
    def wire(self) -> str:
        return f"http://127.0.0.1:{self.tripwire.port}"

    def config_base(self) -> dict[str, str]:
        """A complete, valid config whose every server is the tripwire (pvc -> s3, update_artifact)."""
        model = write_tree(self.tmp / "model", {"w.bin": b"w"})
        return {
            **pvc_env(model),
            "MODEL_SYNC_DESTINATION_TYPE": "s3",
            "MODEL_SYNC_DESTINATION_AWS_BUCKET": "bkt",
            "MODEL_SYNC_DESTINATION_AWS_ENDPOINT": self.wire,
            "MODEL_SYNC_DESTINATION_AWS_ACCESS_KEY_ID": "AKIDBADINPUT",
            "MODEL_SYNC_DESTINATION_AWS_SECRET_ACCESS_KEY": "bad-input-secret-key",
            "MODEL_SYNC_REGISTRY_SERVER_ADDRESS": self.wire,
            "MODEL_SYNC_MODEL_ARTIFACT_ID": "1",
        }

    def runtime_base(self, source: dict[str, str] | None = None) -> dict[str, str]:
        """A valid job on the real servers (update_artifact of a fresh artifact; pvc -> s3 unless ``source``)."""
        source = source or pvc_env(write_tree(self.tmp / "model", {"w.bin": b"w" * 100}))
        return {**FAST, **registry_env(self.registry.url), **update_artifact_env(self.registry.api_url), **source,
                **s3_env("DESTINATION", self.s3, self.bucket, f"{uuid.uuid4().hex[:8]}/out/m")}  # fmt: skip

    def metadata(self, **files: str) -> str:
        folder = self.tmp / f"metadata-{uuid.uuid4().hex[:6]}"
        write_tree(folder, {k: v.encode() for k, v in files.items()})
        return str(folder)


Builder = Callable[[Ctx], dict[str, str]]


@dataclass(frozen=True)
class Case:
    build: Builder
    code: int
    culprit: str
    """Text the one-line message must contain: what the user has to fix."""


def _with(**extra: str) -> Builder:
    return lambda ctx: {**ctx.config_base(), **extra}


def _s3_secret_without_key_id(ctx: Ctx) -> dict[str, str]:
    secret = write_tree(ctx.tmp / "s3-secret", {"AWS_SECRET_ACCESS_KEY": b"only-the-secret", "AWS_BUCKET": b"bkt"})
    env = {k: v for k, v in ctx.config_base().items() if "DESTINATION_AWS_ACCESS" not in k and "SECRET" not in k}
    return {**env, "MODEL_SYNC_DESTINATION_S3_CREDENTIALS_PATH": str(secret)}


def _uri_headers_malformed(ctx: Ctx) -> dict[str, str]:
    secret = write_tree(ctx.tmp / "uri-secret", {"URI": f"{ctx.wire}/m.bin".encode(), "HEADERS": b"not a header"})
    return {**ctx.config_base(), "MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH": str(secret)}


def _uri_secret(headers: bytes | None) -> Builder:
    """A uri source whose Secret has a ``HEADERS`` file of ``headers`` (None: a directory in its place)."""

    def build(ctx: Ctx) -> dict[str, str]:
        secret = write_tree(ctx.tmp / "uri-secret", {"URI": f"{ctx.wire}/m.bin".encode()})
        if headers is None:
            (secret / "HEADERS").mkdir()
        else:
            (secret / "HEADERS").write_bytes(headers)
        return {**ctx.config_base(), "MODEL_SYNC_SOURCE_TYPE": "uri",
                "MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH": str(secret)}  # fmt: skip

    return build


def _token_file(kind: str) -> Builder:
    """MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR naming an env var that holds the path of an unusable token file:
    a directory, a dangling symlink (what an unreadable file gives too: no read), or bytes that are not UTF-8."""

    def build(ctx: Ctx) -> dict[str, str]:
        path = ctx.tmp / "token"
        if kind == "directory":
            path.mkdir()
        elif kind == "dangling":
            os.symlink(ctx.tmp / "no-such-token", path)
        else:
            path.write_bytes(b"\xff\xfe token")
        return {
            **ctx.config_base(),
            "MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR": "MY_TOKEN_PATH",
            "MY_TOKEN_PATH": str(path),
        }

    return build


def _s3_secret_key_is_a_directory(ctx: Ctx) -> dict[str, str]:
    secret = write_tree(ctx.tmp / "s3-secret", {"AWS_ACCESS_KEY_ID": b"AKIDBADINPUT"})
    (secret / "AWS_SECRET_ACCESS_KEY").mkdir()
    env = {k: v for k, v in ctx.config_base().items() if "DESTINATION_AWS_ACCESS" not in k and "SECRET" not in k}
    return {**env, "MODEL_SYNC_DESTINATION_S3_CREDENTIALS_PATH": str(secret)}


def _docker_config_not_utf8(ctx: Ctx) -> dict[str, str]:
    path = write_tree(ctx.tmp / "docker", {".dockerconfigjson": b'{"auths": {"\xff": {}}}'}) / ".dockerconfigjson"
    return {**ctx.config_base(), "MODEL_SYNC_DESTINATION_TYPE": "oci", "MODEL_SYNC_DESTINATION_OCI_URI": f"127.0.0.1:{ctx.tripwire.port}/m:1",
            "MODEL_SYNC_DESTINATION_OCI_CREDENTIALS_PATH": str(path)}  # fmt: skip


def _oci(**extra: str) -> Builder:
    """An oci destination on the tripwire, with ``extra`` on top (a bad reference, a bad base image)."""
    return lambda ctx: {**ctx.config_base(), "MODEL_SYNC_DESTINATION_TYPE": "oci",
                        "MODEL_SYNC_DESTINATION_OCI_URI": f"127.0.0.1:{ctx.tripwire.port}/m:1", **extra}  # fmt: skip


def _oci_source(reference: str) -> Builder:
    return lambda ctx: {**ctx.config_base(), "MODEL_SYNC_SOURCE_TYPE": "oci", "MODEL_SYNC_SOURCE_OCI_URI": reference}


def _s3_source(**extra: str) -> Builder:
    """An s3 source on the tripwire, with ``extra`` on top."""
    return lambda ctx: {**ctx.config_base(), "MODEL_SYNC_SOURCE_TYPE": "s3", "MODEL_SYNC_SOURCE_AWS_BUCKET": "models",
                        "MODEL_SYNC_SOURCE_AWS_KEY": "m/", "MODEL_SYNC_SOURCE_AWS_ENDPOINT": ctx.wire,
                        "MODEL_SYNC_SOURCE_AWS_ACCESS_KEY_ID": "AKIDBADINPUT",
                        "MODEL_SYNC_SOURCE_AWS_SECRET_ACCESS_KEY": "bad-input-secret-key", **extra}  # fmt: skip


def _create_model(**files: str) -> Builder:
    def build(ctx: Ctx) -> dict[str, str]:
        return {**ctx.config_base(), "MODEL_SYNC_MODEL_UPLOAD_INTENT": "create_model",
                "MODEL_SYNC_METADATA_CONFIGMAP_PATH": ctx.metadata(**files)}  # fmt: skip

    return build


def _create_version_ids_disagree(ctx: Ctx) -> dict[str, str]:
    path = ctx.metadata(**{"RegisteredModel.id": "6", "ModelVersion.name": "v1"})
    return {**ctx.config_base(), "MODEL_SYNC_MODEL_UPLOAD_INTENT": "create_version", "MODEL_SYNC_MODEL_ID": "5",
            "MODEL_SYNC_METADATA_CONFIGMAP_PATH": path}  # fmt: skip


def _runtime(**extra: str) -> Builder:
    return lambda ctx: {**ctx.runtime_base(), **extra}


def _registry_answers(code: int, body: bytes, content_type: str) -> Builder:
    def build(ctx: Ctx) -> dict[str, str]:
        env = ctx.runtime_base()
        artifact = env["MODEL_SYNC_MODEL_ARTIFACT_ID"]
        fault = status(code, body=body, content_type=content_type)
        ctx.registry_proxy.add(fault, path=rf"/model_artifacts/{artifact}$", times=100)
        return {**env, "MODEL_SYNC_REGISTRY_SERVER_ADDRESS": ctx.registry_proxy.url}

    return build


def _name_taken(ctx: Ctx) -> dict[str, str]:
    name = f"taken-{uuid.uuid4().hex[:8]}"
    httpx.post(f"{ctx.registry.api_url}/registered_models", json={"name": name}, timeout=30).raise_for_status()
    path = ctx.metadata(**{"RegisteredModel.name": name, "ModelVersion.name": "v1"})
    env = ctx.runtime_base()
    env.pop("MODEL_SYNC_MODEL_ARTIFACT_ID")
    return {**env, "MODEL_SYNC_MODEL_UPLOAD_INTENT": "create_model", "MODEL_SYNC_METADATA_CONFIGMAP_PATH": path}


def _wrong_oci_password(ctx: Ctx) -> dict[str, str]:
    reg = ctx.oci_tls
    return {**ctx.runtime_base(), **oci_env("DESTINATION", f"{reg.host}/bad/m:1", base=reg.base),
            "MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY": "true", "MODEL_SYNC_DESTINATION_OCI_CA_BUNDLE": str(reg.ca_cert),
            "MODEL_SYNC_DESTINATION_OCI_USERNAME": reg.username or "", "MODEL_SYNC_DESTINATION_OCI_PASSWORD": "not-the-password"}  # fmt: skip


def _empty_s3_prefix(ctx: Ctx) -> dict[str, str]:
    return ctx.runtime_base(s3_env("SOURCE", ctx.s3, ctx.bucket, f"{uuid.uuid4().hex[:8]}/none/"))


def _uri(path: str) -> Builder:
    return lambda ctx: ctx.runtime_base({"MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI": ctx.http.url(path)})


def _pvc_symlink_out(ctx: Ctx) -> dict[str, str]:
    root = write_tree(ctx.tmp / "linked", {"w.bin": b"w"})
    os.symlink("/etc/hostname", root / "escape")
    return ctx.runtime_base(pvc_env(root))


def push_oras(host: str, repository: str, title: str, data: bytes = b"payload") -> str:
    """Push a one-file ORAS artifact (its layer titled ``title``) to a plain-http registry; returns its reference."""
    with httpx.Client(base_url=f"http://{host}/v2/{repository}", timeout=30) as api:

        def blob(content: bytes) -> dict[str, object]:
            digest = "sha256:" + hashlib.sha256(content).hexdigest()
            location = api.post("/blobs/uploads/").raise_for_status().headers["Location"]
            url = httpx.URL(f"http://{host}").join(location).copy_merge_params({"digest": digest})
            api.put(url, content=content, headers={"Content-Type": "application/octet-stream"}).raise_for_status()
            return {"digest": digest, "size": len(content)}

        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.model",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", **blob(b"{}")},
            "layers": [{"mediaType": "application/octet-stream", **blob(data),
                        "annotations": {"org.opencontainers.image.title": title}}],
        }  # fmt: skip
        api.put(
            "/manifests/v1", content=json.dumps(manifest), headers={"Content-Type": OCI_MANIFEST}
        ).raise_for_status()
    return f"{host}/{repository}:v1"


def _oras_titled(title: str) -> Builder:
    def build(ctx: Ctx) -> dict[str, str]:
        reference = push_oras(ctx.oci.host, f"bad/oras{uuid.uuid4().hex[:6]}", title)
        return ctx.runtime_base(oci_env("SOURCE", reference))

    return build


CASES: dict[str, Case] = {
    # --- settings (exit 2, no server contacted) ---
    "retry budget of zero": Case(_with(MODEL_SYNC_RETRY_ATTEMPTS="0"), 2, "MODEL_SYNC_RETRY_ATTEMPTS"),
    "negative read timeout": Case(_with(MODEL_SYNC_READ_TIMEOUT="-5"), 2, "MODEL_SYNC_READ_TIMEOUT"),
    "stop timeout not a number": Case(_with(MODEL_SYNC_STOP_TIMEOUT="soon"), 2, "MODEL_SYNC_STOP_TIMEOUT"),
    "source uri with an ftp scheme": Case(_with(MODEL_SYNC_SOURCE_TYPE="uri", MODEL_SYNC_SOURCE_URI="ftp://h/m.bin"),
                                          2, "MODEL_SYNC_SOURCE_URI"),
    "registry address with a bad scheme": Case(_with(MODEL_SYNC_REGISTRY_SERVER_ADDRESS="ftp://registry:8080"),
                                               2, "MODEL_SYNC_REGISTRY_SERVER_ADDRESS"),
    "an image layer budget over 127": Case(
        _with(MODEL_SYNC_DESTINATION_TYPE="oci", MODEL_SYNC_DESTINATION_OCI_URI="127.0.0.1:9/m:1",
              MODEL_SYNC_DESTINATION_OCI_MAX_LAYERS="128"), 2, "MODEL_SYNC_DESTINATION_OCI_MAX_LAYERS"),
    "model artifact id that is no id": Case(_with(MODEL_SYNC_MODEL_ARTIFACT_ID="abc"), 2, "model artifact id 'abc'"),
    # --- credentials (exit 2) ---
    "S3 Secret with a secret key but no key id": Case(_s3_secret_without_key_id, 2, "MODEL_SYNC_DESTINATION_AWS_ACCESS_KEY_ID"),
    "OCI username without a password": Case(
        _with(MODEL_SYNC_DESTINATION_TYPE="oci", MODEL_SYNC_DESTINATION_OCI_URI="127.0.0.1:9/m:1",
              MODEL_SYNC_DESTINATION_OCI_USERNAME="someone"), 2, "MODEL_SYNC_DESTINATION_OCI_PASSWORD"),
    "registry token env var not set": Case(_with(MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR="NO_SUCH_TOKEN_VAR"), 2,
                                           "MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR"),
    "URI Secret HEADERS line malformed": Case(_uri_headers_malformed, 2, "MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH"),
    # --- metadata (exit 2) ---
    "metadata key misspelled": Case(_create_model(**{"RegisteredModel.name": "m", "ModelVersion.name": "v1",
                                                     "ModelVersion.nmae": "x"}), 2, "ModelVersion.nmae"),
    "custom properties not an object": Case(_create_model(**{"RegisteredModel.name": "m", "ModelVersion.name": "v1",
                                                             "ModelVersion.custom_properties": "[1, 2]"}),
                                            2, "ModelVersion.custom_properties"),
    "metadata id disagrees with the setting": Case(_create_version_ids_disagree, 2, "MODEL_SYNC_MODEL_ID"),
    "custom properties nested 100,000 deep": Case(_create_model(**{"RegisteredModel.name": "m", "ModelVersion.name": "v1",
                                                                  "ModelVersion.custom_properties": "[" * 100_000 + "]" * 100_000}),
                                                2, "ModelVersion.custom_properties"),
    # --- hostile addresses, ports and paths (exit 2, no server contacted) ---
    "registry address with an unclosed IPv6 literal": Case(_with(MODEL_SYNC_REGISTRY_SERVER_ADDRESS="http://[::1"), 2,
                                                           "MODEL_SYNC_REGISTRY_SERVER_ADDRESS"),
    "source uri with an unclosed IPv6 literal": Case(_with(MODEL_SYNC_SOURCE_TYPE="uri", MODEL_SYNC_SOURCE_URI="http://[::1/x"),
                                                     2, "MODEL_SYNC_SOURCE_URI"),
    "S3 endpoint with an unclosed IPv6 literal": Case(_with(MODEL_SYNC_DESTINATION_AWS_ENDPOINT="http://[::1"), 2,
                                                      "MODEL_SYNC_DESTINATION_AWS_ENDPOINT"),
    "registry address with port 99999": Case(_with(MODEL_SYNC_REGISTRY_SERVER_ADDRESS="http://127.0.0.1:99999"), 2,
                                             "MODEL_SYNC_REGISTRY_SERVER_ADDRESS"),
    "registry port 99999": Case(_with(MODEL_SYNC_REGISTRY_PORT="99999"), 2, "MODEL_SYNC_REGISTRY_PORT"),
    "registry port -1": Case(_with(MODEL_SYNC_REGISTRY_PORT="-1"), 2, "MODEL_SYNC_REGISTRY_PORT"),
    "source path of 3,000 characters": Case(_with(MODEL_SYNC_SOURCE_PATH="/" + "p" * 3000), 2, "MODEL_SYNC_SOURCE_PATH"),
    "storage path of 3,000 characters": Case(_with(MODEL_SYNC_STORAGE_PATH="/" + "p" * 3000), 2, "MODEL_SYNC_STORAGE_PATH"),
    "registry address of 100 KB": Case(_with(MODEL_SYNC_REGISTRY_SERVER_ADDRESS="http://" + "a" * 100_000), 2,
                                       "MODEL_SYNC_REGISTRY_SERVER_ADDRESS"),
    "source S3 endpoint with port 99999": Case(_s3_source(MODEL_SYNC_SOURCE_AWS_ENDPOINT="http://127.0.0.1:99999"), 2,
                                               "MODEL_SYNC_SOURCE_AWS_ENDPOINT"),
    "S3 endpoint that is not a URL": Case(_with(MODEL_SYNC_DESTINATION_AWS_ENDPOINT="minio.local:9000"), 2,
                                          "MODEL_SYNC_DESTINATION_AWS_ENDPOINT"),
    "S3 endpoint with an ftp scheme": Case(_s3_source(MODEL_SYNC_SOURCE_AWS_ENDPOINT="ftp://127.0.0.1:21"), 2,
                                           "MODEL_SYNC_SOURCE_AWS_ENDPOINT"),
    "destination bucket with a slash": Case(_with(MODEL_SYNC_DESTINATION_AWS_BUCKET="models/m"), 2,
                                                      "MODEL_SYNC_DESTINATION_AWS_BUCKET"),
    "source bucket with a space": Case(_s3_source(MODEL_SYNC_SOURCE_AWS_BUCKET="my models"), 2, "MODEL_SYNC_SOURCE_AWS_BUCKET"),
    # --- hostile image references (exit 2, before the registry is touched) ---
    "destination reference with an uppercase repository": Case(_oci(MODEL_SYNC_DESTINATION_OCI_URI="127.0.0.1:9/Models/m:1"),
                                                               2, "MODEL_SYNC_DESTINATION_OCI_URI"),
    "destination reference '::::'": Case(_oci(MODEL_SYNC_DESTINATION_OCI_URI="::::"), 2, "MODEL_SYNC_DESTINATION_OCI_URI"),
    "destination reference with an empty repository": Case(_oci(MODEL_SYNC_DESTINATION_OCI_URI="127.0.0.1:9/:1"), 2,
                                                           "MODEL_SYNC_DESTINATION_OCI_URI"),
    "source reference with a newline": Case(_oci_source("127.0.0.1:9/m\nx:1"), 2, "MODEL_SYNC_SOURCE_OCI_URI"),
    "base image with an uppercase repository": Case(_oci(MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE="BusyBox:latest"), 2,
                                                    "MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE"),
    # --- unreadable credential files (exit 2) ---
    "URI Secret HEADERS is a directory": Case(_uri_secret(None), 2, "MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH"),
    "URI Secret HEADERS not UTF-8": Case(_uri_secret(b"X-Token: \xff\xfe\n"), 2, "MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH"),
    "URI Secret HEADERS value not ASCII": Case(_uri_secret("X-Token: caf\u00e9\n".encode()), 2,
                                               "MODEL_SYNC_SOURCE_URI_CREDENTIALS_PATH"),
    "registry token file is a directory": Case(_token_file("directory"), 2, "MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR"),
    "registry token file is a dangling link": Case(_token_file("dangling"), 2, "MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR"),
    "registry token file not UTF-8": Case(_token_file("binary"), 2, "MODEL_SYNC_REGISTRY_USER_TOKEN_ENVVAR"),
    "S3 Secret key that is a directory": Case(_s3_secret_key_is_a_directory, 2, "MODEL_SYNC_DESTINATION_S3_CREDENTIALS_PATH"),
    "docker config not UTF-8": Case(_docker_config_not_utf8, 2, "MODEL_SYNC_DESTINATION_OCI_CREDENTIALS_PATH"),
    # --- registry answers (exit 1) ---
    "artifact that does not exist": Case(_runtime(MODEL_SYNC_MODEL_ARTIFACT_ID="999999"), 1,
                                         "getting model artifact 999999: 404"),
    "registry refuses the token": Case(_registry_answers(401, b"Unauthorized", "text/plain"), 1, ": 401 Unauthorized"),
    "registry answers HTML": Case(_registry_answers(200, b"<html>login</html>", "text/html"), 1,
                                  "a body that is not a JSON object"),
    "model name taken by someone else": Case(_name_taken, 1, "it was not created by model-sync"),
    # --- credentials the server refuses (exit 1) ---
    "wrong S3 secret key": Case(_runtime(MODEL_SYNC_DESTINATION_AWS_SECRET_ACCESS_KEY="wrong-secret-key-value"), 1,
                                "access denied, check the access key and secret"),
    "wrong OCI registry password": Case(_wrong_oci_password, 1, "(the login was refused)"),
    # --- source contents (exit 1) ---
    "S3 prefix holding no objects": Case(_empty_s3_prefix, 1, "no objects under s3://"),
    "http file that does not exist": Case(_uri("/files/no/such/model.bin"), 1, "HTTP 404"),
    "tar entry with '..'": Case(_uri("/files/evil/dotdot.tar"), 1, "refusing entry '../evil.txt'"),
    "tar symlink out of the archive": Case(_uri("/files/evil/symlink.tar"), 1, "refusing entry 'escape'"),
    "zip entry with an absolute path": Case(_uri("/files/evil/absolute.zip"), 1, "'/etc/evil.txt'"),
    "pvc symlink out of the model directory": Case(_pvc_symlink_out, 1, "refusing escape"),
    "ORAS layer titled '../..'": Case(_oras_titled("../../etc/cron.d/evil"), 1, "'..' would escape the model root"),
    "ORAS layer titled with an absolute path": Case(_oras_titled("/etc/passwd"), 1, "absolute paths are not allowed"),
}  # fmt: skip


@pytest.fixture(scope="module")
def table(
    registry_standin: ModelRegistryStandin,
    registry_proxy: FaultProxy,
    seaweedfs_s3: S3Server,
    registry_plain: Registry,
    registry_htpasswd: Registry,
    http_server: HttpTestServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[Run, Tripwire, dict[str, str]]]]:
    """Every case run as a job (``PARALLEL`` at a time): its run, its tripwire and its env."""
    registry_proxy.clear()
    tripwires = {name: Tripwire() for name in CASES}
    bucket = fresh_bucket(seaweedfs_s3, "bad")
    envs = {}
    for name, case in CASES.items():
        tmp = tmp_path_factory.mktemp("bad")
        ctx = Ctx(tmp, tripwires[name], registry_standin, registry_proxy, seaweedfs_s3, registry_plain,
                  registry_htpasswd, http_server, bucket)  # fmt: skip
        envs[name] = (case.build(ctx), tmp)
    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            runs = dict(zip(envs, pool.map(lambda e: run_job(*e, timeout=120), envs.values()), strict=True))
        yield {name: (runs[name], tripwires[name], envs[name][0]) for name in CASES}
    finally:
        with ThreadPoolExecutor(8) as pool:  # each close waits for its accept loop to notice
            list(pool.map(Tripwire.close, tripwires.values()))
        registry_proxy.clear()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_with_one_line_naming_the_culprit(
    name: str, table: dict[str, tuple[Run, Tripwire, dict[str, str]]], registry_standin: ModelRegistryStandin
) -> None:
    case = CASES[name]
    run, tripwire, env = table[name]
    run.assert_one_line_failure(code=case.code)
    assert case.culprit in run.message, run.message
    if case.code == 2:
        assert tripwire.connections == 0  # a configuration error reaches no server
    artifact_id = env.get("MODEL_SYNC_MODEL_ARTIFACT_ID", "")
    if case.code == 1 and artifact_id.isdigit() and artifact_id != "999999":
        assert get_artifact(registry_standin.api_url, artifact_id)["state"] != "PENDING"
