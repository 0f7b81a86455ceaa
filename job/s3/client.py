"""The S3 client the S3 source and destination share: one per endpoint, every request retried and mapped.

* :class:`S3Connection` builds one aiobotocore client from an :class:`~job.config.S3Location`, lazily on
  first use (backends are created synchronously by ``job.backends``), and closes it once. Source and
  destination each hold their own, so they can be different endpoints with different credentials.
* :meth:`S3Connection.call` is every S3 request: one botocore call, retried with ``job.retry``'s tenacity
  policy (the job's budget, ``Retry-After`` honoured) while :func:`~job.s3.errors.s3_retryable`, then
  mapped by :meth:`S3Connection.error` (:func:`~job.s3.errors.map_s3_error`: the server's code, message
  and request id, never a key, a secret or a query string). botocore's own retries are off
  (``total_max_attempts=1``): its standard mode ignores ``Retry-After``, and two retry layers would
  multiply the budget.

Part sizes are in :mod:`job.s3.parts`, the error mapping in :mod:`job.s3.errors`, the multipart upload
protocol in :mod:`job.s3.multipart`.

The client comes from aiobotocore's session, not aioboto3's: aioboto3 wraps the same session and client and adds
boto3's resources and s3transfer's managed transfers, which model-sync does not use and which cost about 80 ms of
every start to import (README, Performance). For an ``http://`` endpoint no certificate bundle is loaded (there is
no TLS to verify; aiobotocore would read certifi's bundle anyway, about 50 ms).

aiobotocore and botocore ship no type information: the client is ``Any`` at that seam, and only here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore import UNSIGNED  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.handlers import add_expect_header  # type: ignore[import-untyped]

from job.config import S3Location
from job.errors import ModelSyncError
from job.retry import RetrySettings, log_before_sleep
from job.s3.errors import Side, describe_s3_error, map_s3_error, redact, s3_retryable

__all__ = ["S3Connection", "client_config", "endpoint_url", "s3_uri"]

log = logging.getLogger(__name__)


def s3_uri(bucket: str, key: str = "") -> str:
    """``s3://bucket/key`` (``s3://bucket`` for the bucket root)."""
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


def endpoint_url(endpoint: str | None) -> str | None:
    """The endpoint as a URL: ``minio:9000`` -> ``https://minio:9000`` (botocore needs a scheme)."""
    if not endpoint:
        return None
    endpoint = endpoint.strip().rstrip("/")
    return endpoint if "://" in endpoint else "https://" + endpoint


@functools.cache
def _session() -> Any:
    """One boto session for the process; each client gets its side's keys and region.

    A session loads and caches botocore's S3 model: a second session for the other side of an s3 -> s3 job
    would parse it again, at every job's start, while a client of an existing session is cheap (README,
    Performance).
    """
    return get_session()


def client_config(location: S3Location, *, max_pool_connections: int, retry: RetrySettings | None = None) -> Config:
    """The botocore Config for one endpoint.

    * Path-style addressing on a custom endpoint (MinIO, SeaweedFS, Ceph: no wildcard DNS per bucket).
    * ``max_pool_connections`` at least what the engine can have in flight (files x parts).
    * No payload signing (``UNSIGNED-PAYLOAD``) and checksums only where the API requires them
      (``when_required``): the destination sends its own per-part checksum and the engine hashes every
      byte already. botocore's defaults would sha256 every request body for the signature and add a
      CRC32 of it (``when_supported``), and validate GET bodies: each byte hashed two or three times more.
    * The job's connect and read timeouts (aiohttp's ``sock_connect``/``sock_read``: per socket
      operation, never a total), and no botocore retries: :meth:`S3Connection.call` retries instead.
    """
    retry = retry or RetrySettings()
    return Config(
        region_name=location.region or "us-east-1",
        signature_version=UNSIGNED if location.anonymous else "s3v4",
        # No SigV4 payload hash: botocore would sha256 every body again (always over http, and over https
        # too when the checksum header is our own). The destination's x-amz-checksum-* header, which is
        # signed, protects the body instead and the server verifies it.
        s3={"payload_signing_enabled": False, **({"addressing_style": "path"} if location.endpoint else {})},
        max_pool_connections=max(10, max_pool_connections),
        connect_timeout=retry.connect_timeout,
        read_timeout=retry.read_timeout,
        retries={"mode": "standard", "total_max_attempts": 1},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )


class S3Connection:
    """One lazily created aiobotocore S3 client for one :class:`S3Location`, and the error mapping for it.

    ``client()`` may be awaited from many tasks; the first creates the client. ``close()`` closes it and
    may be called more than once. Secrets are read (``get_secret_value``) only when the client is built.
    """

    def __init__(
        self,
        location: S3Location,
        *,
        side: Side,
        max_pool_connections: int = 10,
        retry: RetrySettings | None = None,
    ) -> None:
        self.location = location
        self.side = side
        self.max_pool_connections = max_pool_connections
        self.retry = retry or RetrySettings()
        self._client: Any = None  # aiobotocore S3 client (untyped)
        self._stack = AsyncExitStack()
        self._lock = asyncio.Lock()

    async def client(self) -> Any:
        """The S3 client (aiobotocore, untyped), created on first call."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    try:
                        client = await self._stack.enter_async_context(self._new_client())
                    except Exception as exc:  # a malformed endpoint URL, an unreadable AWS profile, ...
                        raise self.error(exc, "creating an S3 client for", s3_uri(self.location.bucket)) from exc
                    # No "Expect: 100-continue" on PutObject/UploadPart bodies (botocore adds it above 1 MB).
                    # aiohttp (3.14) arms no read timeout while it waits for the 100 Continue: a server that
                    # stalls there hangs the part until TCP gives up, measured against the fault proxy; RFC
                    # 9110 §10.1.1 says a client SHOULD NOT wait indefinitely. Our parts are a few MiB, so
                    # sending the body without asking first costs little.
                    client.meta.events.unregister("before-call.s3", add_expect_header)
                    self._client = client
        return self._client

    def _new_client(self) -> Any:
        loc = self.location
        # With no keys, boto's default chain applies (IRSA, EKS Pod Identity, instance profile).
        endpoint = endpoint_url(loc.endpoint)
        plain_http = endpoint is not None and endpoint.lower().startswith("http://")
        return _session().create_client(
            "s3",
            aws_access_key_id=loc.access_key_id.get_secret_value() if loc.access_key_id else None,
            aws_secret_access_key=loc.secret_access_key.get_secret_value() if loc.secret_access_key else None,
            region_name=loc.region or "us-east-1",
            endpoint_url=endpoint,
            verify=None if loc.verify and not plain_http else False,
            config=client_config(loc, max_pool_connections=self.max_pool_connections, retry=self.retry),
        )

    async def call(self, operation: str, doing: str, target: str, *, path: str | None = None, **kwargs: Any) -> Any:
        """One S3 request (``client.<operation>(**kwargs)``), retried while :func:`s3_retryable`, then mapped.

        A seekable ``Body`` (a part in memory) is rewound before each try, so a retried part sends the
        same bytes. Returns botocore's response dict.
        """
        client = await self.client()
        body = kwargs.get("Body")
        before_sleep = log_before_sleep(
            log, redact(f"{doing} {target}", self._secrets()), self.retry.attempts, self._describe
        )
        try:
            async for attempt in self.retry.policy(retry_on=s3_retryable, before_sleep=before_sleep):
                with attempt:
                    if body is not None and hasattr(body, "seek"):
                        body.seek(0)
                    return await getattr(client, operation)(**kwargs)
        except Exception as exc:
            raise self.error(exc, doing, target, path=path) from exc
        raise AssertionError("unreachable: the retry policy re-raises")  # pragma: no cover

    def _secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.location.access_key_id, self.location.secret_access_key) if s]

    def _describe(self, exc: BaseException | None) -> str:
        return describe_s3_error(exc, self._secrets())

    async def close(self) -> None:
        """Close the client and its connection pool; safe to repeat."""
        self._client = None
        await self._stack.aclose()

    def error(self, exc: BaseException, doing: str, target: str, *, path: str | None = None) -> ModelSyncError:
        """Map ``exc`` raised while ``doing`` something to ``target`` (an s3:// URI) onto our errors."""
        return map_s3_error(exc, side=self.side, doing=doing, target=target, path=path, secrets=self._secrets())
