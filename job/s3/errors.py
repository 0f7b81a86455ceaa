"""S3 error mapping: what failed, whether to try again, and nothing secret in the message.

:func:`map_s3_error` maps botocore / aiohttp exceptions onto the job's error tree, once, at the backend
boundary (through :meth:`~job.s3.client.S3Connection.error`): "doing what, to which object: cause", with the
server's error code, message and request id, and never a key, a secret or a query string (presigned URLs
carry their signature there). The mapped error records whether the cause was worth retrying
(:func:`s3_retryable`, also the retry predicate of :meth:`~job.s3.client.S3Connection.call`) and any
``Retry-After`` the server sent.

botocore ships no type information: its exceptions are untyped at this seam.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Literal

import aiohttp
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

from job.errors import (
    DestinationAuthError,
    DestinationError,
    ModelSyncError,
    SourceAuthError,
    SourceError,
    SourceNotFound,
    UploadRejected,
)
from job.redaction import SecretMask, redact_query
from job.retry import is_retryable, is_retryable_status, retry_after

__all__ = ["Side", "describe_s3_error", "map_s3_error", "redact", "s3_retryable"]

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
    """``text`` on one line, without URL query strings and without any of ``secrets`` (``job.redaction``)."""
    return " ".join(SecretMask(secrets).redact(redact_query(text)).split())


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


def describe_s3_error(exc: BaseException | None, secrets: Iterable[str] = ()) -> str:
    """A one-line cause for a log line: the server's code, status, message and request id, redacted."""
    if isinstance(exc, ClientError):
        return _describe_client_error(*_client_error_parts(exc))
    return redact(f"{type(exc).__name__}: {exc}", secrets)


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
