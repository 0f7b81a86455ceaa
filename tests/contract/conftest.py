"""Every Source and Destination of the job, built against the real local servers (``tests/servers``).

``source_case`` is parametrized over every source, each holding :data:`tests.contract.cases.MODEL` (or the
part of it the backend can hold), written there once a session by a client that is not model-sync's:

========================  =================================================================================
``pvc``                   a directory (a session temp dir)
``s3``                    a prefix of a SeaweedFS bucket, written with boto3
``uri-file``              one file served by the http test server
``uri-tar`` ...           the model packed by ``tar_bytes``/``zip_bytes`` and served as ``.tar``, ``.tar.gz``,
                          ``.zip``
``hf``                    a repository of the http server's Hub emulation (LFS files behind a CDN redirect)
``oci-modelcar``          an image pushed with skopeo: the busybox base, one uncompressed tar layer a file
``oci-modelcar-gzip``     an image pushed with skopeo: the base, one gzip layer holding the whole model
``oras``                  an ORAS artifact pushed with oras-py (files as blobs, folders as tar+gzip layers)
``filtered-*``            ``FilteredSource`` over the pvc or s3 source, excluding ``tokenizer/``
========================  =================================================================================

``destination_case`` is parametrized over ``s3`` (a fresh SeaweedFS bucket), ``oci`` (a fresh repository on
``registry_plain``, based on ``registry_plain.base``) and ``pvc`` (a fresh directory, read back with plain Python).
Servers are requested only by the cases that need them.
"""

from __future__ import annotations

import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import oras.client  # type: ignore[import-untyped]
import pytest

from job.config import UriLocation
from job.destinations.oci import OciDestination
from job.destinations.pvc import PART_SUFFIX, PvcDestination
from job.destinations.s3 import S3Destination
from job.http.settings import HttpSettings
from job.s3.parts import MiB
from job.sources.filtered import FilteredSource
from job.sources.oci import OciSource
from job.sources.pvc import PvcSource
from job.sources.s3 import S3Source
from job.sources.uri import UriSource
from tests.contract.cases import CHUNK, EXCLUDE, FILTERED, MODEL, DestinationCase, SourceCase
from tests.integration.jobs import OCI_INDEX, OCI_MANIFEST, open_uploads, put_tree, read_modelcar, read_s3, write_tree
from tests.integration.test_oci import file, push_layers, tar_layer
from tests.integration.test_s3_backends import s3_location
from tests.servers.http import HttpTestServer, HubRepo, tar_bytes, zip_bytes
from tests.servers.registry import Registry, tar_info
from tests.servers.s3 import S3Server, fresh_bucket

PART = 5 * MiB
"""S3 part size of the destination (S3's minimum), so a file of a few MiB goes up in several parts."""
HTTP = HttpSettings(initial_wait=0.01, max_wait=0.05)
PREFIX = "models/contract"


def _tag() -> str:
    return uuid.uuid4().hex[:10]


# --- the model, written once a session into each server ----------------------------------------------------


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("contract-model"), MODEL)


@pytest.fixture(scope="session")
def s3_model(seaweedfs_s3: S3Server) -> tuple[S3Server, str]:
    """The model under ``PREFIX/`` of a new bucket, written with boto3; returns the server and the bucket."""
    bucket = fresh_bucket(seaweedfs_s3, "contract")
    put_tree(seaweedfs_s3, bucket, PREFIX + "/", MODEL)
    return seaweedfs_s3, bucket


@pytest.fixture(scope="session")
def http_model(http_server: HttpTestServer) -> dict[str, str]:
    """URL of the single file and of each archive of the model, by case id."""
    folder = f"contract-{_tag()}"
    served = {
        "uri-file": ("model.safetensors", MODEL["model.safetensors"]),
        "uri-tar": ("model.tar", tar_bytes(MODEL)),
        "uri-tar.gz": ("model.tar.gz", tar_bytes(MODEL, gz=True)),
        "uri-zip": ("model.zip", zip_bytes(MODEL)),
    }
    return {case: http_server.url(http_server.write(f"{folder}/{name}", data)) for case, (name, data) in served.items()}


@pytest.fixture(scope="session")
def hub_model(http_server: HttpTestServer) -> str:
    """``hf://`` uri of a Hub repository holding the model (its ``*.safetensors``/``*.bin`` files are LFS)."""
    repo = f"contract/model-{_tag()}"
    http_server.add_repo(repo, HubRepo({"main": dict(MODEL)}))
    return f"hf://{repo}"


@pytest.fixture(scope="session")
def modelcars(registry_plain: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """References of two modelcars pushed with skopeo: one tar layer a file, and one gzip layer for all."""
    reg, tag = registry_plain, _tag()
    per_file = [tar_layer([file(f"models/{path}", data)], compress=False) for path, data in MODEL.items()]
    folders = sorted({f"models/{p.parent}/" for p in map(Path, MODEL) if p.parent != Path()})
    entries = [(tar_info(d, tarfile.DIRTYPE, mode=0o755), None) for d in ["models/", *folders]]
    one_gzip = tar_layer([*entries, *(file(f"models/{p}", d) for p, d in MODEL.items())], compress=True)
    references = {
        "oci-modelcar": f"{reg.host}/contract/modelcar:{tag}",
        "oci-modelcar-gzip": f"{reg.host}/contract/gzip:{tag}",
    }
    push_layers(reg, tmp_path_factory.mktemp("layout"), references["oci-modelcar"], *per_file)
    push_layers(reg, tmp_path_factory.mktemp("layout"), references["oci-modelcar-gzip"], one_gzip)
    return references


@pytest.fixture(scope="session")
def oras_artifact(registry_plain: Registry, model_dir: Path) -> str:
    """Reference of an ORAS artifact pushed with oras-py: top-level files as blobs, each folder as a tar+gzip."""
    reference = f"{registry_plain.host}/contract/oras:{_tag()}"
    tops = sorted({Path(path).parts[0] for path in MODEL})
    client = oras.client.OrasClient(hostname=registry_plain.host, insecure=True)
    client.push(target=reference, files=[str(model_dir / top) for top in tops], disable_path_validation=True)
    return reference


# --- sources ----------------------------------------------------------------------------------------------------

SourceBuilder = Callable[[pytest.FixtureRequest], SourceCase]


def _pvc(request: pytest.FixtureRequest) -> SourceCase:
    root: Path = request.getfixturevalue("model_dir")
    return SourceCase(lambda: PvcSource(root, chunk_size=CHUNK), MODEL)


def _s3(request: pytest.FixtureRequest) -> SourceCase:
    server, bucket = request.getfixturevalue("s3_model")
    return SourceCase(lambda: S3Source(s3_location(server, bucket, PREFIX + "/")), MODEL)


def _uri(case: str) -> SourceBuilder:
    def build(request: pytest.FixtureRequest) -> SourceCase:
        url: str = request.getfixturevalue("http_model")[case]
        storage: Path = request.getfixturevalue("tmp_path") / "storage"
        files = {"model.safetensors": MODEL["model.safetensors"]} if case == "uri-file" else MODEL
        return SourceCase(lambda: UriSource(UriLocation(url), storage_path=storage, settings=HTTP), files)

    return build


def _hf(request: pytest.FixtureRequest) -> SourceCase:
    uri: str = request.getfixturevalue("hub_model")
    origin = request.getfixturevalue("http_server").origin
    storage: Path = request.getfixturevalue("tmp_path") / "storage"
    return SourceCase(
        lambda: UriSource(UriLocation(uri, hf_endpoint=origin), storage_path=storage, settings=HTTP), MODEL
    )


def _oci(case: str) -> SourceBuilder:
    def build(request: pytest.FixtureRequest) -> SourceCase:
        registry: Registry = request.getfixturevalue("registry_plain")
        if case == "oras":
            reference: str = request.getfixturevalue("oras_artifact")
        else:
            reference = request.getfixturevalue("modelcars")[case]
        return SourceCase(lambda: OciSource(registry.location(reference)), MODEL)

    return build


def _filtered(inner: SourceBuilder) -> SourceBuilder:
    def build(request: pytest.FixtureRequest) -> SourceCase:
        case = inner(request)
        return SourceCase(lambda: FilteredSource(case.make(), (), EXCLUDE), FILTERED)

    return build


SOURCES: dict[str, SourceBuilder] = {
    "pvc": _pvc,
    "s3": _s3,
    "uri-file": _uri("uri-file"),
    "uri-tar": _uri("uri-tar"),
    "uri-tar.gz": _uri("uri-tar.gz"),
    "uri-zip": _uri("uri-zip"),
    "hf": _hf,
    "oci-modelcar": _oci("oci-modelcar"),
    "oci-modelcar-gzip": _oci("oci-modelcar-gzip"),
    "oras": _oci("oras"),
    "filtered-pvc": _filtered(_pvc),
    "filtered-s3": _filtered(_s3),
}


@pytest.fixture(params=list(SOURCES))
def source_case(request: pytest.FixtureRequest) -> SourceCase:
    """One source over the model (see the module docstring for the ids)."""
    return SOURCES[request.param](request)


# --- destinations ------------------------------------------------------------------------------------------------


def _s3_destination(request: pytest.FixtureRequest) -> DestinationCase:
    server: S3Server = request.getfixturevalue("seaweedfs_s3")
    bucket = fresh_bucket(server, "contract")

    def stored() -> list[str]:
        listed = server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
        return [f"object {item['Key']}" for item in listed]

    return DestinationCase(
        name="s3",
        make=lambda: S3Destination(s3_location(server, bucket, PREFIX), part_size=PART),
        uri=f"s3://{bucket}/{PREFIX}/",
        read_back=lambda: read_s3(server, bucket, PREFIX),
        stored=stored,
        open_uploads=lambda: [f"multipart upload of {key}" for key in open_uploads(server, bucket)],
    )


def _oci_destination(request: pytest.FixtureRequest) -> DestinationCase:
    reg: Registry = request.getfixturevalue("registry_plain")
    storage: Path = request.getfixturevalue("tmp_path") / "storage"
    repository, tag = f"contract/pushed-{_tag()}", "v1"

    def stored() -> list[str]:
        url = f"http://{reg.host}/v2/{repository}/manifests/{tag}"
        status = httpx.get(url, headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}, timeout=30).status_code
        assert status in (200, 404), status
        return [f"manifest {repository}:{tag}"] if status == 200 else []

    def sessions() -> list[str]:
        # distribution keeps an upload session as a folder until it is completed or cancelled
        folder = reg.root / "data/docker/registry/v2/repositories" / repository / "_uploads"
        return sorted(f"upload session {p.name}" for p in folder.iterdir()) if folder.is_dir() else []

    return DestinationCase(
        name="oci",
        make=lambda: OciDestination(reg.location(f"{reg.host}/{repository}:{tag}"), storage_path=storage),
        uri=f"oci://{reg.host}/{repository}:{tag}",
        read_back=lambda: read_modelcar(reg.host, repository, tag),
        stored=stored,
        open_uploads=sessions,
    )


def _pvc_destination(request: pytest.FixtureRequest) -> DestinationCase:
    claim: Path = request.getfixturevalue("tmp_path") / "claim"
    root = claim / PREFIX  # created by the destination

    def files() -> list[Path]:
        return sorted(p for p in root.rglob("*") if not p.is_dir()) if root.exists() else []

    def read_back() -> dict[str, bytes]:
        # everything a model server would find in the directory, a leftover .part included
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in files()}

    return DestinationCase(
        name="pvc",
        make=lambda: PvcDestination(root, uri=f"pvc://contract/{PREFIX}"),
        uri=f"pvc://contract/{PREFIX}",
        read_back=read_back,
        stored=lambda: [f"file {p.relative_to(root)}" for p in files() if not p.name.endswith(PART_SUFFIX)],
        open_uploads=lambda: [f"partial file {p.relative_to(root)}" for p in files() if p.name.endswith(PART_SUFFIX)],
    )


DESTINATIONS: dict[str, Callable[[pytest.FixtureRequest], DestinationCase]] = {
    "s3": _s3_destination,
    "oci": _oci_destination,
    "pvc": _pvc_destination,
}


@pytest.fixture(params=list(DESTINATIONS))
def destination_case(request: pytest.FixtureRequest) -> DestinationCase:
    """One destination, writing to a target of its own (a fresh bucket, a fresh repository, a fresh directory)."""
    return DESTINATIONS[request.param](request)
