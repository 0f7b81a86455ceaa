"""NO_PROXY as clusters spell it (``*.svc.cluster.local``), read by the libraries every client of the job uses:
httpx (Model Registry, OCI, http(s), Hub) and botocore's proxy lookup (aiobotocore, S3)."""

from __future__ import annotations

import os
from collections.abc import Callable

import httpx
import pytest
from botocore.utils import get_environ_proxies

from job.http.proxy import normalise_no_proxy, normalised_no_proxy

PROXY = "http://127.0.0.1:3128"
IN_CLUSTER = "http://model-registry-service.kubeflow.svc.cluster.local:8080/api/model_registry/v1/registered_models"
OUTSIDE = "https://quay.io/v2/"


def test_star_dot_entries_become_dot_entries() -> None:
    value = " *.svc.cluster.local, .example.com ,localhost:5000 10.0.0.0/16,*,*.svc.cluster.local"
    assert normalised_no_proxy(value) == ".svc.cluster.local,.example.com,localhost:5000,10.0.0.0/16,*"


def _httpx_proxied(url: str) -> bool:
    client = httpx.Client()  # trust_env: reads the proxy variables as every client of the job does
    try:
        transport = client._transport_for_url(httpx.URL(url))
        return type(transport._pool).__name__ == "HTTPProxy"  # type: ignore[attr-defined]
    finally:
        client.close()


def _botocore_proxied(url: str) -> bool:
    # What botocore's (and aiobotocore's) endpoint creator asks when a client is made for an endpoint.
    return bool(get_environ_proxies(url))


@pytest.mark.parametrize("check", [_httpx_proxied, _botocore_proxied], ids=["httpx", "botocore"])
def test_in_cluster_hosts_bypass_the_proxy_once_normalised(
    monkeypatch: pytest.MonkeyPatch, check: Callable[[str], bool]
) -> None:
    for name in ("no_proxy", "http_proxy", "https_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", PROXY)
    monkeypatch.setenv("HTTPS_PROXY", PROXY)
    monkeypatch.setenv("NO_PROXY", "*.svc.cluster.local,localhost")
    assert check(IN_CLUSTER), "as written, the library sends in-cluster traffic to the proxy"
    normalise_no_proxy(os.environ)
    assert os.environ["NO_PROXY"] == ".svc.cluster.local,localhost"
    assert not check(IN_CLUSTER)
    assert check(OUTSIDE)
