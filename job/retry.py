"""When a failed call is worth repeating, how long to wait first, and the tenacity policy that does both.

Retryability is a function, not a class in the error tree (see ``job.errors``):

* transport errors (``httpx.TransportError``: refused or reset connections, timeouts, protocol errors);
* HTTP 408 (a proxy gave up waiting for our request body), 429 (a proxy or gateway in front of the
  service throttles us: kube-rbac-proxy, Istio and API gateways can) and every 5xx;
* never any other 4xx: the request itself is wrong and will be wrong again.

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
import time
from collections.abc import Awaitable, Callable

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.wait import wait_base

__all__ = [
    "WaitRetryAfter",
    "is_retryable",
    "is_retryable_status",
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
    """Whether repeating the failed operation may succeed (transport error, 408, 429 or 5xx)."""
    if isinstance(exc, httpx.TransportError):
        return True
    status = status_of(exc)
    return status is not None and is_retryable_status(status)


def retry_after(exc: BaseException | None, *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``), or None when it did not say.

    Accepts delta-seconds and HTTP dates; a date in the past gives 0.
    """
    response = getattr(exc, "response", None)
    if not isinstance(response, httpx.Response):
        return None
    value = response.headers.get("Retry-After")
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
