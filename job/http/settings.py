"""The limits of the http layer: retries, resumes, redirects and timeouts, shared by the client and its downloads."""

from __future__ import annotations

from dataclasses import dataclass

from job.retry import RetrySettings

__all__ = ["HttpSettings"]


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Retry, resume, redirect and timeout limits of the http layer."""

    attempts: int = 5
    """Tries per request, the first included (transport errors, 408, 429, 5xx)."""
    initial_wait: float = 0.5
    """Seconds: the first retry or resume waits up to this, doubling each time (full jitter)."""
    max_wait: float = 10.0
    resume_attempts: int = 5
    """Times one body may be resumed with ``Range`` after its connection broke."""
    max_redirects: int = 10
    timeout: float = 60.0
    """Seconds a read may stall before it counts as a transport error (no total: a body may take hours)."""
    connect_timeout: float = 10.0
    """Seconds to open a connection."""
    retry_after_cap: float = 60.0
    """Seconds: the longest ``Retry-After`` honoured."""

    @classmethod
    def from_retry(cls, retry: RetrySettings) -> HttpSettings:
        """The job's retry budget and timeouts (``MODEL_SYNC_RETRY_*``, ``*_TIMEOUT``)."""
        return cls(
            attempts=retry.attempts,
            initial_wait=retry.initial_wait,
            max_wait=retry.max_wait,
            resume_attempts=max(0, retry.attempts - 1),
            timeout=retry.read_timeout,
            connect_timeout=retry.connect_timeout,
            retry_after_cap=retry.retry_after_cap,
        )
