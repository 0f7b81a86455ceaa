"""The fault matrix: ``python -m job`` through a fault-injecting proxy in front of each real server.

Every case runs the ``update_artifact`` intent (the one with a PENDING phase), with one server reached through
:class:`~tests.servers.faultproxy.FaultProxy` and a fault on a chosen request: a connection reset mid-body (or
mid-upload), a body cut short, bursts of 503 (S3's SlowDown) and 429 with ``Retry-After``, a stall beyond the
read timeout, a source replaced mid-transfer, a server that keeps failing. Each case either completes with
the model byte for byte at the destination (read back with boto3, or raw registry HTTP and ``tarfile``), or
fails with a one-line error; either way the artifact is never left PENDING, and the fault did fire. Where the
server asked for ``Retry-After: 1`` the log shows the 1.0 s wait (the default backoff here is at most 0.2 s).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from pathlib import PurePosixPath as P

import pytest

from job.config import OciLocation
from job.destinations.oci import OciDestination
from job.engine.transfer import TransferSettings, transfer
from job.sources.pvc import PvcSource
from tests.integration.jobs import (
    FAST,
    Run,
    get_artifact,
    oci_env,
    open_uploads,
    put_tree,
    pvc_env,
    read_modelcar,
    read_s3,
    registry_env,
    run_job,
    s3_env,
    update_artifact_env,
    write_tree,
)
from tests.servers.faultproxy import Fault, FaultProxy, Rule, reset, s3_slow_down, stall, status, truncate
from tests.servers.http import HttpTestServer
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server, fresh_bucket
from tests.standin.model_registry import ModelRegistryStandin

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
_rng = random.Random(6)
MODEL = {
    "config.json": b'{"layers": 2}',
    "sub/tokenizer.json": b'{"vocab": ["a", "b"]}',
    "weights.bin": _rng.randbytes(7 * MiB + 3),  # two 5 MiB parts on S3, one 7 MiB layer on OCI
}
BIG_LAYER = ("content-length", r"^\d{7,}$")  # the PATCH of weights.bin's layer, not the small files'
OCI_ERROR = b'{"errors": [{"code": "UNAVAILABLE", "message": "service unavailable"}]}'
REGISTRY_ERROR = b'{"code": "unavailable", "message": "try later"}'
_names = itertools.count()


@dataclass(frozen=True)
class Case:
    """One fault on the requests matching ``method`` and ``path`` (``{bucket}``, ``{repo}``, ... filled in)."""

    fault: Fault
    method: str
    path: str
    times: int = 1
    skip: int = 0
    header: tuple[str, str | None] | None = None
    ok: bool = True
    log: str | None = None
    """A regex the job's log must match (the retry, the resume, the Retry-After wait)."""
    error: str | None = None
    """A regex the one-line error must match, when the case must fail."""
    change_source: bool = False
    """When the fault fires, replace the source file with other bytes (it changed mid-transfer)."""
    env: dict[str, str] = field(default_factory=dict)
    """Settings of the job for this case only."""


@dataclass
class Route:
    """What one server's cases share: env, the model, how to read the destination, how to change the source."""

    env: dict[str, str]
    model: dict[str, bytes]
    read: Callable[[], dict[str, bytes]]
    fields: dict[str, str] = field(default_factory=dict)
    change: Callable[[], None] | None = None
    check_after_failure: Callable[[], None] | None = None


WHOLE_BLOB = ("range", None)
"""The copy of a one-file layer reads the whole blob (no Range), so its bytes are checked against the digest;
the listing's header reads carry a Range."""
SLOW_DOWN_RETRY = r"SlowDown \(HTTP 503\).*retrying in 1\.0s"

CASES: dict[str, dict[str, Case]] = {
    "s3-source": {
        "reset mid-body": Case(reset(MiB), "GET", "{object}", log="resuming there"),
        "body cut short": Case(truncate(MiB), "GET", "{object}", log="resuming there"),
        # The include/exclude wrapper keeps the source's capabilities: the read resumes at its offset
        # instead of sending the whole file again.
        "body cut short, with an exclude set": Case(truncate(MiB), "GET", "{object}", log="resuming there",
                                                    env={"MODEL_SYNC_SOURCE_EXCLUDE": "*.md"}),
        "503 SlowDown x2, Retry-After 1": Case(s3_slow_down(retry_after="1"), "GET", "{object}", times=2, log=SLOW_DOWN_RETRY),
        "429, Retry-After 1": Case(status(429, retry_after="1"), "GET", "{object}", log=r"HTTP 429.*retrying in 1\.0s"),
        "stall mid-body beyond the read timeout": Case(stall(8, after=MiB), "GET", "{object}", log="resuming there"),
        "object replaced mid-transfer": Case(reset(MiB), "GET", "{object}", ok=False, change_source=True,
                                             error="weights.bin: the object changed after it was listed"),
    },
    "s3-destination": {
        "reset while sending a part": Case(reset(MiB, direction="request"), "PUT", "{part}",
                                           log=r"uploading part \d of s3://.*retrying in"),
        "503 SlowDown x2 on a part, Retry-After 1": Case(s3_slow_down(retry_after="1"), "PUT", "{part}", times=2,
                                                          log=SLOW_DOWN_RETRY),
        "429 on starting the upload, Retry-After 1": Case(status(429, retry_after="1"), "POST", "{create}",
                                                          log=r"starting a multipart upload .*retrying in 1\.0s"),
        "stall before a part's answer": Case(stall(8), "PUT", "{part}", log=r"ReadTimeout.*retrying in"),
        # aiohttp itself re-sends an idempotent request once when a reused connection closes early, so the
        # job's own retry shows only from the second cut on.
        "a part's answer cut short x2": Case(truncate(40), "PUT", "{part}", times=2),
        "SlowDown on every try": Case(s3_slow_down(), "PUT", "{part}", times=1000, ok=False,
                                      error=r"uploading part \d of s3://\S+/out/m/weights.bin: SlowDown \(HTTP 503\)"),
    },
    "oci-destination": {
        "reset while streaming a layer": Case(reset(MiB, direction="request"), "PATCH", "{uploads}", header=BIG_LAYER,
                                              log=r"sending weights\.bin: uploading weights\.bin to .*retrying in"),
        "503 on a layer's PATCH, Retry-After 1": Case(status(503, retry_after="1", body=OCI_ERROR, content_type="application/json"),
                                                      "PATCH", "{uploads}", header=BIG_LAYER,
                                                      log=r"sending weights\.bin: .*503 UNAVAILABLE.*retrying in 1\.0s"),
        "429 x2 on starting uploads, Retry-After 1": Case(status(429, retry_after="1"), "POST", "{uploads}", times=2,
                                                          log=r"starting a blob upload .*HTTP 429; retrying in 1\.0s"),
        "stall before the manifest's answer": Case(stall(8), "PUT", "{manifest}", log=r"ReadTimeout.*retrying in"),
        "answer to the tag lookup cut short": Case(truncate(60), "GET", "{manifest}", log=r"reading manifest .*retrying in"),
        "503 on every PATCH": Case(status(503, body=OCI_ERROR, content_type="application/json"), "PATCH", "{uploads}",
                                   header=BIG_LAYER, times=1000, ok=False,
                                   error=r"uploading weights\.bin to \S+: 503 UNAVAILABLE"),
    },
    "oci-source": {
        "reset mid-layer": Case(reset(MiB), "GET", "{blob}", header=WHOLE_BLOB, log="resuming there"),
        "layer cut short": Case(truncate(MiB), "GET", "{blob}", header=WHOLE_BLOB, log="resuming there"),
        "503 x2, Retry-After 1": Case(status(503, retry_after="1", body=OCI_ERROR, content_type="application/json"), "GET",
                                      "{blob}", header=WHOLE_BLOB, times=2, log=r"HTTP 503; retrying in 1\.0s"),
        "429, Retry-After 1": Case(status(429, retry_after="1"), "GET", "{blob}", header=WHOLE_BLOB,
                                   log=r"HTTP 429; retrying in 1\.0s"),
        "stall mid-layer beyond the read timeout": Case(stall(8, after=MiB), "GET", "{blob}",
                                                        header=WHOLE_BLOB, log="resuming there"),
    },
    "http-source": {
        "reset mid-body": Case(reset(512 * 1024), "GET", "{file}", log="resuming with a Range request"),
        "body cut short": Case(truncate(512 * 1024), "GET", "{file}", log="resuming with a Range request"),
        "503 x2, Retry-After 1": Case(status(503, retry_after="1"), "GET", "{file}", times=2, log=r"HTTP 503; retrying in 1\.0s"),
        "429, Retry-After 1": Case(status(429, retry_after="1"), "GET", "{file}", log=r"HTTP 429; retrying in 1\.0s"),
        "stall mid-body beyond the read timeout": Case(stall(8, after=512 * 1024), "GET", "{file}",
                                                       log="resuming with a Range request"),
        "file replaced mid-transfer": Case(reset(512 * 1024), "GET", "{file}", ok=False, change_source=True,
                                           error=r"HTTP 412 .*changed since it was listed"),
    },
    "model-registry": {
        "reset reading the artifact": Case(reset(60), "GET", "{artifact}", log=r"getting model artifact \d+: .*retrying"),
        "PENDING update's answer cut short": Case(truncate(30), "PATCH", "{artifact}", log=r"updating model artifact .*retrying"),
        "503 x2 on an update, Retry-After 1": Case(status(503, retry_after="1", body=REGISTRY_ERROR, content_type="application/json"),
                                                   "PATCH", "{artifact}", times=2, log=r"HTTP 503; retrying in 1\.0s"),
        "429 on reading, Retry-After 1": Case(status(429, retry_after="1"), "GET", "{artifact}", log=r"HTTP 429; retrying in 1\.0s"),
        "stall on the LIVE update": Case(stall(8), "PATCH", "{artifact}", skip=1, log=r"ReadTimeout.*retrying"),
        "LIVE update refused 5 times": Case(status(503, body=REGISTRY_ERROR, content_type="application/json"), "PATCH",
                                            "{artifact}", skip=1, times=5, ok=False,
                                            error=r"updating model artifact \d+: 503 unavailable: try later"),
    },
}  # fmt: skip


PARALLEL = 4
"""Jobs run at once: each case has its own bucket, repository, file or artifact, so their rules never meet."""


def _push_source_image(registry: Registry, root: Path, repository: str, storage: Path) -> str:
    """MODEL as a modelcar at ``repository:1``; returns weights.bin's layer digest."""
    import asyncio

    location = OciLocation(reference=f"{registry.host}/{repository}:1", registry=registry.host, username=None,
                           password=None, tls_verify=False, base_image=registry.base)  # fmt: skip
    result = asyncio.run(transfer(PvcSource(root), OciDestination(location, storage_path=storage), TransferSettings()))
    return next(u.detail.digest for u in result.uploaded if u.obj.path == P("weights.bin"))  # type: ignore[attr-defined]


@dataclass
class Servers:
    registry: ModelRegistryStandin
    s3: S3Server
    oci: Registry
    http: HttpTestServer
    proxies: dict[str, FaultProxy]
    tmp: Path
    src_bucket: str
    dst_bucket: str


def _route(name: str, servers: Servers, tmp: Path, artifact_id: str) -> Route:
    s3, proxies, n = servers.s3, servers.proxies, next(_names)
    src, dst, out = servers.src_bucket, servers.dst_bucket, f"c{n}/out/m"  # a prefix per case, two buckets in all

    def read() -> dict[str, bytes]:
        return read_s3(s3, dst, out)

    if name == "s3-source":
        put_tree(s3, src, f"c{n}/models/m/", MODEL)
        env = {
            **s3_env("SOURCE", s3, src, f"c{n}/models/m/", endpoint=proxies["s3"].url),
            **s3_env("DESTINATION", s3, dst, out),
        }

        def change() -> None:
            s3.client().put_object(Bucket=src, Key=f"c{n}/models/m/weights.bin", Body=b"x" * len(MODEL["weights.bin"]))

        return Route(env, MODEL, read, {"object": rf"^/{src}/c{n}/models/m/weights\.bin(\?|$)"}, change)
    if name == "s3-destination":
        env = {
            **pvc_env(write_tree(tmp / "model", MODEL)),
            **s3_env("DESTINATION", s3, dst, out, endpoint=proxies["s3"].url),
        }
        fields = {
            "part": rf"^/{dst}/{out}/weights\.bin\?.*partNumber=",
            "create": rf"^/{dst}/{out}/weights\.bin\?uploads",
        }

        def no_open_upload() -> None:
            assert [k for k in open_uploads(s3, dst) if k.startswith(out)] == []  # the failed upload was aborted

        return Route(env, MODEL, read, fields, check_after_failure=no_open_upload)
    if name == "oci-destination":
        repo, proxy = f"faults/dst{n}", proxies["oci"]
        env = {**pvc_env(write_tree(tmp / "model", MODEL)),
               **oci_env("DESTINATION", f"{proxy.host}/{repo}:1", base=f"{proxy.host}/base/busybox:latest")}  # fmt: skip
        fields = {"uploads": rf"^/v2/{repo}/blobs/uploads/", "manifest": rf"^/v2/{repo}/manifests/1$"}
        return Route(env, MODEL, lambda: read_modelcar(servers.oci.host, repo, "1"), fields)
    if name == "oci-source":
        repo = f"faults/src{n}"
        digest = _push_source_image(servers.oci, write_tree(tmp / "model", MODEL), repo, tmp / "storage")
        env = {**oci_env("SOURCE", f"{proxies['oci'].host}/{repo}:1"), **s3_env("DESTINATION", s3, dst, out)}
        return Route(env, MODEL, read, {"blob": rf"^/v2/{repo}/blobs/{digest}$"})
    if name == "http-source":
        data = MODEL["weights.bin"]
        rel = f"faults/model-{n}.bin"
        servers.http.write(rel, data)
        env = {"MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI": f"{proxies['http'].url}/files/{rel}",
               **s3_env("DESTINATION", s3, dst, out)}  # fmt: skip

        def rewrite() -> None:
            servers.http.write(rel, b"y" * len(data))

        return Route(env, {f"model-{n}.bin": data}, read, {"file": rf"^/files/{rel}"}, rewrite)
    assert name == "model-registry"
    env = {**pvc_env(write_tree(tmp / "model", MODEL)), **s3_env("DESTINATION", s3, dst, out)}
    return Route(env, MODEL, read, {"artifact": rf"/model_artifacts/{artifact_id}(\?|$)"})


@dataclass
class Outcome:
    route: Route
    rule: Rule
    artifact_id: str
    run: Run


def _prepare(server: str, case: str, servers: Servers) -> tuple[Route, Rule, dict[str, str]]:
    spec = CASES[server][case]
    tmp = servers.tmp / f"{server}-{next(_names)}"
    tmp.mkdir()
    intent = update_artifact_env(servers.registry.api_url)
    route = _route(server, servers, tmp, intent["MODEL_SYNC_MODEL_ARTIFACT_ID"])
    proxy = servers.proxies[{"s3-source": "s3", "s3-destination": "s3", "oci-destination": "oci", "oci-source": "oci",
                             "http-source": "http", "model-registry": "registry"}[server]]  # fmt: skip
    change = route.change if spec.change_source else None
    rule = proxy.add(
        spec.fault, method=spec.method, path=spec.path.format(**route.fields), times=spec.times, skip=spec.skip,
        header=spec.header, on_fire=(lambda _seen: change()) if change else None,
    )  # fmt: skip
    address = servers.proxies["registry"].url if server == "model-registry" else servers.registry.url
    env = {**FAST, **registry_env(address), **intent, **route.env, **spec.env}
    return route, rule, env


@pytest.fixture(scope="module")
def matrix(
    registry_standin: ModelRegistryStandin,
    seaweedfs_s3: S3Server,
    registry_plain: Registry,
    http_server: HttpTestServer,
    s3_proxy: FaultProxy,
    oci_proxy: FaultProxy,
    http_proxy: FaultProxy,
    registry_proxy: FaultProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], Outcome]:
    """Every case of :data:`CASES`, run as a job, ``PARALLEL`` at a time; each test then checks its own."""
    proxies = {"s3": s3_proxy, "oci": oci_proxy, "http": http_proxy, "registry": registry_proxy}
    for proxy in proxies.values():
        proxy.clear()
    tmp = tmp_path_factory.mktemp("faults")
    buckets = fresh_bucket(seaweedfs_s3, "fsrc"), fresh_bucket(seaweedfs_s3, "fdst")
    servers = Servers(registry_standin, seaweedfs_s3, registry_plain, http_server, proxies, tmp, *buckets)
    prepared = {(s, c): _prepare(s, c, servers) for s, cases in CASES.items() for c in cases}

    def one(key: tuple[str, str]) -> Outcome:
        route, rule, env = prepared[key]
        return Outcome(route, rule, env["MODEL_SYNC_MODEL_ARTIFACT_ID"], run_job(env, tmp, timeout=180))

    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(prepared, pool.map(one, prepared), strict=True))


@pytest.mark.parametrize(("server", "case"), [(s, c) for s, cases in CASES.items() for c in cases])
def test_fault(
    server: str, case: str, matrix: dict[tuple[str, str], Outcome], registry_standin: ModelRegistryStandin
) -> None:
    spec, outcome = CASES[server][case], matrix[server, case]
    run, route = outcome.run, outcome.route
    assert outcome.rule.fired >= 1, "the fault never fired"
    artifact = get_artifact(registry_standin.api_url, outcome.artifact_id)
    assert artifact["state"] != "PENDING"
    if spec.log is not None:
        assert re.search(spec.log, run.stderr), run.stderr[-4000:]
    if spec.ok:
        result = run.result()
        assert artifact["state"] == "LIVE" and artifact["uri"] == result["uri"]
        assert route.read() == route.model
    else:
        run.assert_one_line_failure(code=1)
        assert spec.error is not None and re.search(spec.error, run.message), run.message
        assert artifact["state"] == "ABANDONED"  # it had no uri before: no stale uri is advertised
        if route.check_after_failure is not None:
            route.check_after_failure()
    assert "Traceback" not in run.stderr


def test_an_artifact_the_registry_keeps_pending_is_named_in_the_termination_message_and_a_rerun_restores_it(
    registry_standin: ModelRegistryStandin, registry_proxy: FaultProxy, seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    """Every write after PENDING is refused: the artifact stays PENDING (nothing can change that), and the one
    line says so and what restores it; the rerun of the same Job (same job id) does."""
    registry_proxy.clear()
    intent = update_artifact_env(registry_standin.api_url)
    artifact_id = intent["MODEL_SYNC_MODEL_ARTIFACT_ID"]
    env = {**FAST, **registry_env(registry_proxy.url), **intent, **pvc_env(write_tree(tmp_path / "model", MODEL)),
           **s3_env("DESTINATION", seaweedfs_s3, fresh_bucket(seaweedfs_s3, "pending"), "m"),
           "MODEL_SYNC_RETRY_ATTEMPTS": "2"}  # fmt: skip
    registry_proxy.add(status(503, body=REGISTRY_ERROR, content_type="application/json"), method="PATCH",
                       path=rf"/model_artifacts/{artifact_id}$", skip=1, times=100)  # fmt: skip
    run = run_job(env, tmp_path)
    run.assert_one_line_failure(code=1)
    assert f"model artifact {artifact_id} is still PENDING: rerun the same Job" in run.message
    assert get_artifact(registry_standin.api_url, artifact_id)["state"] == "PENDING"
    registry_proxy.clear()
    rerun = run_job(env, tmp_path)
    assert rerun.result()["uri"].startswith("s3://")
    assert get_artifact(registry_standin.api_url, artifact_id)["state"] == "LIVE"
