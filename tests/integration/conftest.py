"""Integration fixtures: a fault-injecting proxy (tests/servers/faultproxy.py) in front of each kind of server.
The Model Registry stand-in fixture is in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.faultproxy import FaultProxy
from tests.servers.http import HttpTestServer
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server
from tests.standin.model_registry import ModelRegistryStandin


@pytest.fixture(scope="session")
def s3_proxy(seaweedfs_s3: S3Server) -> Iterator[FaultProxy]:
    """A fault proxy in front of SeaweedFS's S3 API."""
    port = int(seaweedfs_s3.endpoint_url.rsplit(":", 1)[1])
    with FaultProxy(port, name="s3") as proxy:
        yield proxy


@pytest.fixture(scope="session")
def oci_proxy(registry_plain: Registry) -> Iterator[FaultProxy]:
    """A fault proxy in front of the plain-http distribution registry."""
    with FaultProxy(int(registry_plain.host.rsplit(":", 1)[1]), name="oci") as proxy:
        yield proxy


@pytest.fixture(scope="session")
def http_proxy(http_server: HttpTestServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the http test server's origin."""
    with FaultProxy(int(http_server.origin.rsplit(":", 1)[1]), name="http") as proxy:
        yield proxy


@pytest.fixture(scope="session")
def registry_proxy(registry_standin: ModelRegistryStandin) -> Iterator[FaultProxy]:
    """A fault proxy in front of the Model Registry stand-in."""
    with FaultProxy(registry_standin.port, name="model-registry") as proxy:
        yield proxy
