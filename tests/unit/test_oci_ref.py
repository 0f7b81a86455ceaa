"""Image reference parsing: distribution's grammar with Docker Hub's normalisation."""

from __future__ import annotations

import pytest

from job.errors import ConfigError
from job.oci.reference import ImageReference, parse_reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("library/busybox", "docker.io", "library/busybox", "latest", None),
        ("kserve/modelcar:v1", "docker.io", "kserve/modelcar", "v1", None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/user/x:1", "docker.io", "user/x", "1", None),
        ("quay.io/org/team/model:2.0-rc_1", "quay.io", "org/team/model", "2.0-rc_1", None),
        ("localhost/model", "localhost", "model", "latest", None),
        ("localhost:5000/model:v1", "localhost:5000", "model", "v1", None),
        ("127.0.0.1:5000/models/m:v1", "127.0.0.1:5000", "models/m", "v1", None),
        ("[::1]:5000/m:v1", "[::1]:5000", "m", "v1", None),
        (f"registry.example.com/m@{DIGEST}", "registry.example.com", "m", None, DIGEST),
        (f"registry.example.com/m:v1@{DIGEST}", "registry.example.com", "m", "v1", DIGEST),
        ("oci://quay.io/org/m:v1", "quay.io", "org/m", "v1", None),
        ("docker://busybox", "docker.io", "library/busybox", "latest", None),
        ("my-registry:443/a__b/c.d-e:T", "my-registry:443", "a__b/c.d-e", "T", None),
    ],
)
def test_parse(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Busybox", "uppercase"),
        ("quay.io/Org/m", "uppercase"),
        ("quay.io/org/m:", "tag"),
        ("quay.io/org/m:-bad", "tag"),
        ("quay.io/org/m:" + "t" * 129, "tag"),
        ("quay.io/org/m@sha256:abc", "digest"),
        ("quay.io/org/m@sha256:" + "A" * 64, "sha256"),
        ("quay.io//m", "component"),
        ("quay.io/org/-m", "component"),
        ("bad_host:5000/m", "registry"),
        ("quay.io/" + "a/" * 130 + "m", "longer than"),
    ],
)
def test_invalid(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_reference(text)


def test_properties() -> None:
    hub = parse_reference("busybox")
    assert hub.api_host == "registry-1.docker.io" and hub.reference == "latest"
    assert str(hub) == "docker.io/library/busybox:latest" and hub.name == "docker.io/library/busybox"
    pinned = parse_reference(f"127.0.0.1:5000/m:v1@{DIGEST}")
    assert pinned.api_host == "127.0.0.1:5000" and pinned.reference == DIGEST
    assert str(pinned) == f"127.0.0.1:5000/m:v1@{DIGEST}"
    assert parse_reference(str(pinned)) == pinned
    assert ImageReference("r", "m").reference == "latest"
