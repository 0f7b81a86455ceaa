"""What the S3 source and destination share: one client per endpoint, part sizes, error mapping.

* :class:`S3Connection` builds one aioboto3 client from an :class:`~job.config.S3Location`, lazily on
  first use (backends are created synchronously by ``from_config``), and closes it once. Source and
  destination each hold their own, so they can be different endpoints with different credentials.
* :func:`choose_part_size` picks a multipart part size within S3's limits.
* :meth:`S3Connection.error` maps botocore / aiohttp exceptions onto the job's error tree, once, at the
  backend boundary: "doing what, to which object: cause", with the server's error code, message and
  request id, and never a key, a secret or a query string (presigned URLs carry their signature there).
  The mapped error records whether the cause was worth retrying (:func:`s3_retryable`) and any
  ``Retry-After`` the server sent.
* :meth:`S3Connection.call` is every S3 request: one botocore call, retried with ``job.retry``'s tenacity
  policy (the job's budget, ``Retry-After`` honoured), then mapped. botocore's own retries are off
  (``total_max_attempts=1``): its standard mode ignores ``Retry-After``, and two retry layers would
  multiply the budget.

aioboto3 and botocore ship no type information: the client is ``Any`` at that seam, and only here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import Any, Literal

import aioboto3  # type: ignore[import-untyped]
import aiohttp
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.exceptions import (
    SSLError as BotoSSLError,
)
from botocore.handlers import add_expect_header  # type: ignore[import-untyped]

from job.config import S3Location
from job.errors import (
    DestinationAuthError,
    DestinationError,
    ModelSyncError,
    SourceAuthError,
    SourceError,
    SourceNotFound,
    UploadRejected,
)
from job.retry import RetrySettings, is_retryable, is_retryable_status, log_before_sleep, retry_after

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB
"""S3's smallest part (all but the last)."""
MAX_PART_SIZE = 5 * 1024 * MiB
"""S3's largest part."""
MAX_PARTS = 10_000
"""S3's most parts in one upload."""
DEFAULT_PART_SIZE = 8 * MiB
"""s3transfer's default: large enough to be efficient, small enough that parts x files stays small."""


Side = Literal["source", "destination"]

_NOT_FOUND = {"NoSuchBucket", "NoSuchKey", "NotFound", "404"}
_AUTH = {
    "AccessDenied",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
    "401",
    "403",
}
# botocore's standard retry mode treats these codes as transient or throttling (botocore/retries/standard.py);
# SeaweedFS and MinIO answer SlowDown (503) under load, AWS also 503 ServiceUnavailable.
_RETRYABLE_CODES = {
    "BandwidthLimitExceeded",
    "EC2ThrottledException",
    "InternalError",
    "LimitExceededException",
    "PriorRequestNotComplete",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "TransactionInProgressException",
}
MIN_REDACTED = 6
_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]*)\?[^\s#'\"]*", re.IGNORECASE)


def choose_part_size(size: int | None, configured: int | None = None) -> int:
    """The multipart part size for an object of ``size`` bytes (``None``: unknown).

    ``configured`` (or 8 MiB), grown in whole MiB until ``size`` fits in 10,000 parts, then held within
    S3's limits [5 MiB, 5 GiB]. An unknown size gets the configured size; the uploader grows its parts
    as the count rises (:func:`grow_part_size`). A 5 TiB object (S3's largest) gets 525 MiB parts.
    """
    part = configured or DEFAULT_PART_SIZE
    if size is not None and size > part * MAX_PARTS:
        part = math.ceil(size / MAX_PARTS / MiB) * MiB
    return max(MIN_PART_SIZE, min(MAX_PART_SIZE, part))


def grow_part_size(part_size: int, parts_done: int) -> int:
    """The part size after ``parts_done`` parts of a stream of unknown length.

    Doubles every 1,000 parts (capped at 5 GiB), so 10,000 parts starting at 8 MiB hold about 8 TB
    while a stream that turns out small never buffers more than the first size. Parts of different
    sizes are valid S3 as long as all but the last are >= 5 MiB.
    """
    if parts_done and parts_done % 1000 == 0:
        return min(MAX_PART_SIZE, part_size * 2)
    return part_size


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
    parsed it again, 50-100 ms of a job's start (a client of an existing session takes about 6 ms).
    """
    return aioboto3.Session()


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
        signature_version="s3v4",
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
    """One lazily created aioboto3 S3 client for one :class:`S3Location`, and the error mapping for it.

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
        return _session().client(
            "s3",
            aws_access_key_id=loc.access_key_id.get_secret_value() if loc.access_key_id else None,
            aws_secret_access_key=loc.secret_access_key.get_secret_value() if loc.secret_access_key else None,
            region_name=loc.region or "us-east-1",
            endpoint_url=endpoint_url(loc.endpoint),
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
        if isinstance(exc, ClientError):
            return _describe_client_error(*_client_error_parts(exc))
        return redact(f"{type(exc).__name__}: {exc}", self._secrets())

    async def close(self) -> None:
        """Close the client and its connection pool; safe to repeat."""
        self._client = None
        await self._stack.aclose()

    def error(self, exc: BaseException, doing: str, target: str, *, path: str | None = None) -> ModelSyncError:
        """Map ``exc`` raised while ``doing`` something to ``target`` (an s3:// URI) onto our errors."""
        return map_s3_error(exc, side=self.side, doing=doing, target=target, path=path, secrets=self._secrets())


def s3_retryable(exc: BaseException) -> bool:
    """Whether an S3 call that raised ``exc`` is worth repeating.

    Transport failures (botocore's connection and HTTP-client errors, which aiobotocore raises for
    resets, timeouts and bodies cut short; aiohttp's and the OS's own), 408/429/5xx answers, and the
    error codes botocore's standard mode retries (throttling such as SlowDown, RequestTimeout,
    InternalError). Never credentials, auth or not-found errors.
    """
    if isinstance(exc, ModelSyncError):
        return is_retryable(exc)
    if isinstance(exc, ClientError):
        code, status, _, _ = _client_error_parts(exc)
        return code in _RETRYABLE_CODES or (status is not None and is_retryable_status(status))
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | BotoSSLError | aiohttp.ClientSSLError):
        return False  # the same on every try: a missing key, a certificate that does not verify
    return isinstance(
        exc,
        BotoConnectionError
        | HTTPClientError
        | IncompleteReadError
        | aiohttp.ClientConnectionError
        | aiohttp.ClientPayloadError
        | ConnectionError
        | TimeoutError
        | asyncio.TimeoutError,
    )


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without URL query strings and without any of ``secrets``.

    Secrets shorter than :data:`MIN_REDACTED` are left alone: replacing a 1-letter "secret" everywhere
    would garble the message, and no real S3 key is that short (AWS key ids are 20 characters).
    """
    text = _QUERY.sub(r"\1?<redacted>", text)
    for secret in secrets:
        if len(secret) >= MIN_REDACTED:
            text = text.replace(secret, "<redacted>")
    return " ".join(text.split())


def _client_error_parts(exc: ClientError) -> tuple[str, int | None, str, str | None]:
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    status = meta.get("HTTPStatusCode")
    code = str(error.get("Code") or status or "Unknown")
    message = str(error.get("Message") or "")
    request_id = meta.get("RequestId") or meta.get("HostId") or None
    return code, status if isinstance(status, int) else None, message, request_id


def _describe_client_error(code: str, status: int | None, message: str, request_id: str | None) -> str:
    # HEAD responses have no body: botocore then reports the status as the code ("403", "Forbidden").
    head = f"HTTP {status}" if code == str(status) else f"{code} (HTTP {status})" if status else code
    text = f"{head}: {message}" if message and message != code else head
    return f"{text} [request id {request_id}]" if request_id else text


def map_s3_error(
    exc: BaseException,
    *,
    side: Side,
    doing: str,
    target: str,
    path: str | None = None,
    secrets: Iterable[str] = (),
) -> ModelSyncError:
    """Map a botocore/aiohttp exception to the error tree (returned, for ``raise ... from exc``).

    * source: NoSuchBucket / NoSuchKey / 404 -> ``SourceNotFound``; 401/403, AccessDenied,
      InvalidAccessKeyId, SignatureDoesNotMatch, expired tokens, missing credentials ->
      ``SourceAuthError``; a failed ``If-Match`` (412) -> ``SourceError`` saying the object changed;
      anything else -> ``SourceError``.
    * destination: the same auth cases -> ``DestinationAuthError``; any other answer from the server ->
      ``UploadRejected`` (with ``.status`` and ``.code``, so a 5xx or SlowDown is seen as retryable);
      transport failures -> ``DestinationError``.

    A ``ModelSyncError`` is returned unchanged.
    """
    if isinstance(exc, ModelSyncError):
        return exc
    error = _map_s3_error(exc, side=side, doing=doing, target=target, path=path, secrets=list(secrets))
    error.retryable = s3_retryable(exc)
    error.retry_after = retry_after(exc)
    return error


def _map_s3_error(
    exc: BaseException, *, side: Side, doing: str, target: str, path: str | None, secrets: list[str]
) -> ModelSyncError:
    source = side == "source"

    def message(cause: str) -> str:
        return redact(f"{doing} {target}: {cause}", secrets)

    if isinstance(exc, ClientError):
        code, status, server_message, request_id = _client_error_parts(exc)
        cause = _describe_client_error(code, status, server_message, request_id)
        if code in _AUTH or status in (401, 403):
            cls = SourceAuthError if source else DestinationAuthError
            return cls(message(f"access denied, check the access key and secret ({cause})"), uri=target, path=path)
        if code == "NoSuchBucket":
            cause = f"the bucket does not exist ({cause})"
        if source:
            if code in _NOT_FOUND or status == 404:
                return SourceNotFound(message(cause), uri=target, path=path)
            if code == "PreconditionFailed" or status == 412:
                cause = f"the object changed after it was listed (its ETag no longer matches; {cause})"
            return SourceError(message(cause), uri=target, path=path)
        return UploadRejected(
            message(cause),
            status=status or 0,
            code=code,
            detail=redact(server_message, secrets) or None,
            uri=target,
            path=path,
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        cls = SourceAuthError if source else DestinationAuthError
        return cls(message(f"no usable S3 credentials ({exc})"), uri=target, path=path)
    if isinstance(exc, BotoSSLError | aiohttp.ClientSSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        cause = (
            "the endpoint's TLS certificate is not trusted: set AWS_CA_BUNDLE to the CA bundle that signed it "
            f"({type(exc).__name__}: {exc})"
        )
    elif isinstance(exc, BotoConnectionError):
        cause = f"cannot connect to the endpoint ({type(exc).__name__}: {exc})"
    elif isinstance(exc, TimeoutError | asyncio.TimeoutError):
        cause = f"timed out ({type(exc).__name__})"
    elif isinstance(exc, aiohttp.ClientError | OSError):
        cause = f"connection failed ({type(exc).__name__}: {exc})"
    else:
        cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    cls_ = SourceError if source else DestinationError
    return cls_(message(cause), uri=target, path=path)
