"""The Model Registry REST API's two generations, ``v1`` and ``v1alpha3``: which one a server speaks, and its prefix.

Both have the same bodies and paths below the prefix. The generation is forced
(``MODEL_SYNC_REGISTRY_API_VERSION``, or a registry address that ends in a prefix) or found from the server's
first answer (``auto``, see :meth:`ApiPrefix.request`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx

from job.errors import ConfigError, ModelRegistryError
from job.model_registry.errors import error_body

__all__ = ["API_PREFIXES", "API_VERSIONS", "ApiPrefix"]

logger = logging.getLogger(__name__)

API_PREFIXES = {"v1": "/api/model_registry/v1", "v1alpha3": "/api/model_registry/v1alpha3"}
"""The REST API's two generations: same bodies and paths below the prefix (kubeflow/hub issue 2992 moved
the API to ``v1``; Kubeflow's client 0.3.15 and later speak only ``v1``, 0.3.14 only ``v1alpha3``)."""
API_VERSIONS = ("auto", *API_PREFIXES)


class ApiPrefix:
    """The API prefix a client sends its requests under.

    ``base_url`` is the server's address; when it ends in a prefix, that generation is used (not doubled) and
    ``origin`` is the address without it. ``api_version`` is one of :data:`API_VERSIONS`, else ConfigError.
    """

    def __init__(self, base_url: str, api_version: str = "auto") -> None:
        base = base_url.rstrip("/")
        for version, prefix in API_PREFIXES.items():
            if base.endswith(prefix):  # the address names the API already: that generation, not doubled
                base, api_version = base.removesuffix(prefix), version
        if api_version not in API_VERSIONS:
            raise ConfigError(
                f"Model Registry API version must be one of {', '.join(API_VERSIONS)}, got {api_version!r}"
            )
        self.origin = base
        self.prefix: str | None = API_PREFIXES.get(api_version)
        """The API prefix in use; None until the first answer tells (``auto``)."""

    def served(self) -> str:
        """The prefix in use, or both while it is not known: what an error about a missing route names."""
        return self.prefix or " or ".join(API_PREFIXES.values())

    async def request(
        self, http: httpx.AsyncClient, method: str, path: str, *, params: Mapping[str, str] | None, json: Any
    ) -> httpx.Response:
        """Send one request under the API prefix in use. Until one is known (``auto``), try ``v1`` first and
        fall back to ``v1alpha3`` when the server does not know the route: chi's plain-text 404, never the
        JSON 404 of a missing entity (tests/standin/BEHAVIOURS.md, § intro). That costs nothing on a current server
        and one request, once, on an older one; a route-less 404 commits nothing, so a POST is safe to resend.
        """
        if self.prefix is not None:
            return await _bounded(http, method, self.prefix + path, params=params, json=json)
        response = await _bounded(http, method, API_PREFIXES["v1"] + path, params=params, json=json)
        if response.status_code == 404 and error_body(response) is None:
            older = await _bounded(http, method, API_PREFIXES["v1alpha3"] + path, params=params, json=json)
            if older.status_code == 404 and error_body(older) is None:
                return response  # neither generation: the caller's error says so
            self.prefix = API_PREFIXES["v1alpha3"]
            logger.info("the Model Registry serves the v1alpha3 API; using it")
            return older
        if response.status_code < 500 and response.status_code not in (401, 403):
            self.prefix = API_PREFIXES["v1"]
        return response


MAX_ANSWER = 16 * 1024 * 1024
"""Largest answer read into memory: a page of 100 entities is a few hundred KiB; a hostile or broken server's
600 MiB answer must not become 1.9 GB of Python objects."""


async def _bounded(
    http: httpx.AsyncClient, method: str, url: str, *, params: Mapping[str, str] | None, json: Any
) -> httpx.Response:
    """One request whose answer is read into memory up to :data:`MAX_ANSWER` bytes; more is a ``ModelRegistryError``."""
    response = await http.send(http.build_request(method, url, params=params, json=json), stream=True)
    try:
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > MAX_ANSWER:
                raise ModelRegistryError(
                    f"{method} {url}: the Model Registry's answer is over {MAX_ANSWER // (1024 * 1024)} MiB",
                    status=response.status_code,
                )
    finally:
        await response.aclose()
    headers = [
        (k, v) for k, v in response.headers.multi_items() if k.lower() not in ("content-encoding", "content-length")
    ]
    return httpx.Response(response.status_code, headers=headers, content=bytes(data), request=response.request)
