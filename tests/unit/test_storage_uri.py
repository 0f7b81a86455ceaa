"""KServe storageUri parsing for the initializer mode (job.serving.storage_uri), no network."""

from __future__ import annotations

import pytest

from job.errors import ConfigError
from job.serving.storage_uri import looks_like_host, parse_registry_uri, source_settings


@pytest.mark.parametrize(
    ("uri", "parts", "namespace"),
    [
        ("model-registry://iris", ("iris",), None),
        ("model-registry://iris/v1", ("iris", "v1"), None),
        ("model-registry://mr.kubeflow.svc:8080/iris/v1", ("mr.kubeflow.svc:8080", "iris", "v1"), None),
        ("model-registry://host/iris/v1/extra", ("host", "iris", "v1/extra"), None),  # cut in three, as upstream
        ("model-registry://iris/v1?namespace=team-a", ("iris", "v1"), "team-a"),
        ("model-registry://my%20model/1.0.0", ("my model", "1.0.0"), None),
        ("model-registry://iris/", ("iris",), None),
    ],
)
def test_registry_uris_parse_as_upstream_reads_them(uri: str, parts: tuple[str, ...], namespace: str | None) -> None:
    parsed = parse_registry_uri(uri)
    assert (parsed.parts, parsed.namespace) == (parts, namespace)


@pytest.mark.parametrize(
    "uri", ["model-registry://", "model-registry:///v1", "model-registry://a//b", "model-registry://m?namespace=a.b"]
)
def test_bad_registry_uris_are_config_errors_naming_the_argument(uri: str) -> None:
    with pytest.raises(ConfigError, match="storage uri"):
        parse_registry_uri(uri)


def test_two_parts_split_either_way() -> None:
    parsed = parse_registry_uri("model-registry://iris/v1")
    assert parsed.ambiguous
    assert parsed.split(first_is_host=False) == (None, "iris", "v1")
    assert parsed.split(first_is_host=True) == ("iris", "v1", None)


@pytest.mark.parametrize(
    ("part", "host"),
    [("localhost:8080", True), ("mr.ns.svc.cluster.local", True), ("[::1]:8080", True), ("127.0.0.1", True),
     ("Llama_3", False), ("My-Model", False), ("llama-3.1", True)],
)  # fmt: skip
def test_what_could_be_a_host(part: str, host: bool) -> None:
    assert looks_like_host(part) is host


def test_direct_uris_map_onto_source_settings() -> None:
    assert source_settings("s3://bucket/models/m/") == {
        "source_type": "s3",
        "source_aws_bucket": "bucket",
        "source_aws_key": "models/m/",
    }
    assert source_settings("s3://bucket")["source_aws_key"] == "/"  # the whole bucket
    assert source_settings("oci://quay.io/org/m:1") == {"source_type": "oci", "source_oci_uri": "quay.io/org/m:1"}
    assert source_settings("hf://org/m:main") == {"source_type": "uri", "source_uri": "hf://org/m:main"}
    assert source_settings("https://h/m.tar.gz")["source_type"] == "uri"
    for bad in ("gs://bucket/m", "pvc://claim/m", "/mnt/models", "s3:///key"):
        with pytest.raises(ConfigError, match="storage uri"):
            source_settings(bad)
