"""Which registry, model and version a model-registry:// uri names (job.serving.resolve.registry_for)."""

from __future__ import annotations

from job.serving.resolve import configured_registry, registry_for
from job.serving.storage_uri import parse_registry_uri
from tests.standin.model_registry import ModelRegistryStandin

CONFIGURED = "http://model-registry-service.kubeflow.svc.cluster.local:8080"


def test_the_configured_registry_follows_upstreams_env() -> None:
    assert configured_registry(None, {}) == "http://localhost:8080"
    assert configured_registry(None, {"MODEL_REGISTRY_BASE_URL": "mr:9090", "MODEL_REGISTRY_SCHEME": "https"}) == (
        "https://mr:9090"
    )
    assert configured_registry("https://set.by.model-sync:8443", {"MODEL_REGISTRY_BASE_URL": "mr:9090"}) == (
        "https://set.by.model-sync:8443"
    )


async def test_namespace_builds_the_service_host_on_the_configured_port() -> None:
    uri = parse_registry_uri("model-registry://iris/v1?namespace=team-a")
    env = {"MODEL_REGISTRY_SERVICE_NAME": "mr", "MODEL_REGISTRY_CLUSTER_DOMAIN": "cluster.example"}
    assert await registry_for(uri, CONFIGURED, env) == ("http://mr.team-a.cluster.example:8080", "iris", "v1")
    default = await registry_for(uri, "http://localhost", {})
    assert default == ("http://model-registry-service.team-a.svc.cluster.local:8080", "iris", "v1")


async def test_three_parts_and_the_configured_host() -> None:
    three = parse_registry_uri("model-registry://other:8080/iris/v1")
    assert await registry_for(three, CONFIGURED, {}) == ("http://other:8080", "iris", "v1")
    configured = parse_registry_uri("model-registry://model-registry-service.kubeflow.svc.cluster.local:8080/iris")
    assert await registry_for(configured, CONFIGURED, {}) == (CONFIGURED, "iris", None)


async def test_two_parts_ask_whether_a_registry_answers(registry_standin: ModelRegistryStandin) -> None:
    host = f"127.0.0.1:{registry_standin.port}"
    assert await registry_for(parse_registry_uri(f"model-registry://{host}/iris"), CONFIGURED, {}) == (
        f"http://{host}",
        "iris",
        None,
    )
    # Nothing answers at 127.0.0.1:9, and Llama_3 cannot be a host: model/version, from the configured one.
    assert await registry_for(parse_registry_uri("model-registry://127.0.0.1:9/v1"), CONFIGURED, {}) == (
        CONFIGURED,
        "127.0.0.1:9",
        "v1",
    )
    before = len(registry_standin.requests)
    assert await registry_for(parse_registry_uri("model-registry://Llama_3/v1"), CONFIGURED, {}) == (
        CONFIGURED,
        "Llama_3",
        "v1",
    )
    assert len(registry_standin.requests) == before
