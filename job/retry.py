"""When a failed call is worth repeating, how long to wait first, and the tenacity policy that does both.

Retryability is a function, not a class in the error tree (see ``job.errors``):

* transport errors (``httpx.TransportError``, Python's ``ConnectionError`` and ``TimeoutError``: refused or
  reset connections, timeouts, bodies cut short, protocol errors);
* HTTP 408 (a proxy gave up waiting for our request body), 429 (a proxy or gateway in front of the
  service throttles us: kube-rbac-proxy, Istio and API gateways can) and every 5xx; S3's SlowDown is a 503
  (``job.s3.errors`` classifies botocore's own exceptions);
* never any other 4xx (auth, not found: the request itself is wrong and will be wrong again), and never an
  ``IntegrityError``;
* a ``ModelSyncError`` carries the verdict its mapping recorded (``.retryable``), else its ``.status``.

The unit retried grows in steps, smallest first (see ``job.engine.transfer``): a request (each client's
``policy()``), a part (an S3 part is one request with its bytes in memory), then a file (the engine
resumes a broken source stream at its offset where the source has ranges, and sends a file again from
its start when the destination's half failed). :class:`RetrySettings` holds the budget and the timeouts
of every network call, from the ``MODEL_SYNC_RETRY_*`` and ``*_TIMEOUT`` settings.

Waits are exponential with full jitter (``wait_random_exponential``), but a ``Retry-After`` header on the
response (seconds or an HTTP date, RFC 9110 §10.2.3) wins, capped so a hostile or confused proxy cannot
park the job for an hour. huggingface_hub's ``http_backoff`` does the same.

The policy is generic: any httpx-based client (the Model Registry client, the OCI client) can use it by
raising ``httpx.HTTPStatusError`` for an error response inside the retried block and mapping the final
exception to its own ``ModelSyncError`` afterwards.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from job.errors import IntegrityError, ModelSyncError

__all__ = [
    "RetrySettings",
    "WaitRetryAfter",
    "carry_retryability",
    "is_retryable",
    "is_retryable_status",
    "parse_retry_after",
    "retry_after",
    "retry_policy",
    "status_of",
]

logger = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 5
DEFAULT_INITIAL_WAIT = 0.5
"""Seconds: the first retry waits up to this, doubling each time (full jitter)."""
DEFAULT_MAX_WAIT = 10.0
DEFAULT_RETRY_AFTER_CAP = 60.0
"""Seconds: the longest ``Retry-After`` we honour; longer values are cut to this."""
DEFAULT_FILE_ATTEMPTS = 3
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0

_E = TypeVar("_E", bound=ModelSyncError)


def is_retryable_status(status: int) -> bool:
    """True for the HTTP statuses worth repeating a request for: 408, 429 and 5xx."""
    return status in (408, 429) or 500 <= status <= 599


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any.

    ``httpx.HTTPStatusError`` carries its response; our own errors (``ModelRegistryError``,
    ``UploadRejected``) carry ``.status``.
    """
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def is_retryable(exc: BaseException) -> bool:
    """Whether repeating the failed operation may succeed (transport error, 408, 429 or 5xx; see the module doc)."""
    if isinstance(exc, IntegrityError):
        return False
    if isinstance(exc, ModelSyncError) and exc.retryable is not None:
        return exc.retryable
    if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError):
        return True
    status = status_of(exc)
    return status is not None and is_retryable_status(status)


def carry_retryability(error: _E, cause: BaseException) -> _E:
    """Record on ``error`` (mapped from ``cause``) whether ``cause`` was worth retrying, and its ``Retry-After``.

    What the mapping already decided is kept. Returns ``error``, for ``raise carry_retryability(...) from exc``.
    """
    if error.retryable is None:
        error.retryable = is_retryable(cause)
    if error.retry_after is None:
        error.retry_after = retry_after(cause)
    return error


def _headers_of(exc: BaseException | None) -> Mapping[str, Any] | None:
    response = getattr(exc, "response", None)
    if isinstance(response, httpx.Response):
        return response.headers
    if isinstance(response, dict):  # botocore's ClientError.response: {"ResponseMetadata": {"HTTPHeaders": ..}}
        headers = (response.get("ResponseMetadata") or {}).get("HTTPHeaders")
        return headers if isinstance(headers, dict) else None
    return None


def retry_after(exc: BaseException | None, *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``), or None when it did not say.

    Reads a ``ModelSyncError``'s recorded ``retry_after``, an httpx response's header, or botocore's
    response metadata (whose header names are lowercase).
    """
    if isinstance(exc, ModelSyncError) and exc.retry_after is not None:
        return exc.retry_after
    headers = _headers_of(exc)
    if headers is None:
        return None
    value = headers.get("Retry-After", headers.get("retry-after"))
    return parse_retry_after(value, now=now) if isinstance(value, str) else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """A ``Retry-After`` value in seconds: delta-seconds or an HTTP date (a date in the past gives 0)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class WaitRetryAfter(wait_base):
    """Wait what ``Retry-After`` says (capped); otherwise what the fallback strategy says."""

    def __init__(self, fallback: wait_base, *, cap: float = DEFAULT_RETRY_AFTER_CAP) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        asked = retry_after(exc)
        if asked is not None:
            return min(asked, self.cap)
        return self.fallback(retry_state)


def retry_policy(
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    initial_wait: float = DEFAULT_INITIAL_WAIT,
    max_wait: float = DEFAULT_MAX_WAIT,
    retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
    retry_on: Callable[[BaseException], bool] = is_retryable,
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
) -> AsyncRetrying:
    """A fresh tenacity controller: ``async for attempt in retry_policy(): with attempt: ...``.

    Make one per logical call: a controller keeps per-run statistics and is not meant to be shared by
    concurrent calls. ``attempts`` counts the first try (``attempts=1`` means no retry). The last
    exception is re-raised as is (``reraise=True``), never wrapped in ``tenacity.RetryError``.
    """
    return AsyncRetrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=WaitRetryAfter(wait_random_exponential(multiplier=initial_wait, max=max_wait), cap=retry_after_cap),
        retry=retry_if_exception(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """The retry budget and the timeouts of every network call (``MODEL_SYNC_RETRY_*``, ``*_TIMEOUT``).

    ``connect_timeout`` bounds opening a connection (TCP and TLS); ``read_timeout`` bounds the wait for
    the next bytes on an open connection (and for a send to make progress). Neither bounds a whole
    request: a streaming body may take hours as long as bytes keep moving.
    """

    attempts: int = DEFAULT_ATTEMPTS
    """Tries per request, the first included."""
    file_attempts: int = DEFAULT_FILE_ATTEMPTS
    """Tries per file: a file whose transfer still failed with a retryable error is sent again."""
    initial_wait: float = DEFAULT_INITIAL_WAIT
    max_wait: float = DEFAULT_MAX_WAIT
    retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT

    def policy(
        self,
        *,
        attempts: int | None = None,
        retry_on: Callable[[BaseException], bool] = is_retryable,
        before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
    ) -> AsyncRetrying:
        """A fresh tenacity controller with this budget (``attempts`` overrides the per-request count)."""
        return retry_policy(
            attempts=self.attempts if attempts is None else attempts,
            initial_wait=self.initial_wait,
            max_wait=self.max_wait,
            retry_after_cap=self.retry_after_cap,
            retry_on=retry_on,
            before_sleep=before_sleep,
        )

    def wait_for(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds before retry number ``attempt`` (1-based) after ``exc``: its ``Retry-After`` (capped), else
        exponential with full jitter, as :func:`retry_policy` waits."""
        asked = retry_after(exc)
        if asked is not None:
            return min(asked, self.retry_after_cap)
        return random.uniform(0, min(self.max_wait, self.initial_wait * 2 ** max(0, attempt - 1)))  # noqa: S311

    def httpx_timeout(self) -> httpx.Timeout:
        """Connect and read (and write) timeouts for an httpx client; no pool timeout, no total."""
        return httpx.Timeout(connect=self.connect_timeout, read=self.read_timeout, write=self.read_timeout, pool=None)


def log_before_sleep(
    logger: logging.Logger, what: str, attempts: int, describe: Callable[[BaseException | None], str]
) -> Callable[[RetryCallState], None]:
    """A tenacity ``before_sleep`` that logs ``what: cause; retrying in Ns (attempt k of n)`` at WARNING."""

    def log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "%s: %s; retrying in %.1fs (attempt %d of %d)",
            what,
            describe(exc),
            wait,
            state.attempt_number + 1,
            attempts,
        )

    return log
