"""HTTP(S) for the sources that read over it (a file, an archive, the Hugging Face Hub): one client, one download.

:class:`HttpClient` sends GETs with ``Accept-Encoding: identity``, retries transport errors, 408/429/5xx
(honouring ``Retry-After``) with ``job.retry``'s policy, follows redirects itself (bounded) so that secret
headers (the URI Secret's ``HEADERS``, ``HF_TOKEN``) go only to the origin they were configured for, never to a
redirect target on another host, and maps error statuses to ``SourceNotFound`` (404/410), ``SourceAuthError``
(401/403) or ``SourceError``. :meth:`HttpClient.download` makes a :class:`job.http.download.Download`, the
resumable streamed body. Its limits are :class:`job.http.settings.HttpSettings`; how messages name URLs
(never a query string, userinfo or header value) is :mod:`job.http.urls`.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from job.errors import SourceAuthError, SourceError, SourceNotFound
from job.http.backend import on_asyncio
from job.http.download import Download
from job.http.settings import HttpSettings
from job.http.urls import display_url, origin_of
from job.readahead import ReadAhead
from job.redaction import redact_query
from job.retry import carry_retryability, is_retryable_status, log_before_sleep, retry_policy
from job.streams import describe

__all__ = ["HttpClient"]

log = logging.getLogger(__name__)

USER_AGENT = "model-sync"


class _StatusError(Exception):
    """An error status inside the retried block; ``status``/``response`` feed ``job.retry``."""

    def __init__(self, response: httpx.Response, detail: str) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.status = response.status_code
        self.detail = detail


async def _error_detail(response: httpx.Response, limit: int = 4096) -> str:
    """The server's own words about an error (read from at most ``limit`` bytes), then close the response.

    Only structured fields are kept: the Hub's ``X-Error-Message`` header or JSON ``error``, S3's XML ``Code`` and
    ``Message`` (never the whole body: S3's SignatureDoesNotMatch body echoes the presigned signature), plain text.
    """
    body = b""
    try:
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) >= limit:
                break
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()
    text = body[:limit].decode("utf-8", "replace").strip()
    detail = response.headers.get("X-Error-Message", "")
    if not detail and text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            detail = next((v for k in ("error", "message", "detail") if isinstance(v := doc.get(k), str)), "")
    elif not detail and text.startswith("<"):
        found = [
            m.group(1) for tag in ("Code", "Message") if (m := re.search(rf"<{tag}>([^<]{{1,300}})</{tag}>", text))
        ]
        detail = ": ".join(found)
    elif not detail and response.headers.get("Content-Type", "").startswith("text/plain"):
        detail = text[:300]
    request_id = response.headers.get("X-Request-Id") or response.headers.get("x-amz-request-id")
    detail = redact_query(" ".join(detail.split()))
    return f"{detail} (request id {request_id})" if request_id else detail


def _retry_cause(exc: BaseException | None) -> str:
    return f"HTTP {exc.status}" if isinstance(exc, _StatusError) else describe(exc or Exception())


def _status_error(error: _StatusError, what: str, url: str) -> SourceError:
    status = error.status
    message = f"{what}: HTTP {status} {error.response.reason_phrase}".rstrip()
    if status == 412:
        message += ": it changed since it was listed (its ETag no longer matches)"
    if error.detail:
        message += f": {error.detail}"
    code = error.response.headers.get("X-Error-Code", "")
    cls: type[SourceError] = SourceError
    if status in (404, 410) or code in ("RepoNotFound", "RevisionNotFound", "EntryNotFound"):
        cls = SourceNotFound
    elif status in (401, 403):
        cls = SourceAuthError
    return carry_retryability(cls(message, uri=display_url(url)), error)


class HttpClient:
    """GETs with retries, bounded redirects, per-origin secret headers and mapped errors (see the module doc).

    ``scoped_headers`` maps a URL to headers sent only to that URL's origin (scheme, host, port). Call
    :meth:`aclose` once when done.
    """

    read_ahead: ReadAhead | None = None
    """How far long downloads read ahead of themselves on a slow link (:mod:`job.readahead`); None: never."""

    def __init__(
        self,
        *,
        settings: HttpSettings | None = None,
        scoped_headers: Mapping[str, Mapping[str, SecretStr]] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings or HttpSettings()
        self._scoped: dict[tuple[str, str, int], dict[str, SecretStr]] = {}
        for url, headers in (scoped_headers or {}).items():
            self._scoped.setdefault(origin_of(url), {}).update(headers)
        self._client = on_asyncio(
            httpx.AsyncClient(
                transport=transport,
                timeout=httpx.Timeout(self.settings.timeout, connect=self.settings.connect_timeout, pool=None),
                follow_redirects=False,
                # identity: Content-Length and Range then count the file's own bytes, and aiter_raw needs no decoder.
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            )
        )

    def download(
        self,
        url: str,
        *,
        what: str,
        start: int = 0,
        end: int | None = None,
        etag: str | None = None,
        pinned: bool = False,
    ) -> Download:
        """A not yet started :class:`Download` of bytes ``[start, end)`` of ``url`` (``pinned``: immutable bytes,
        resumable without a validator)."""
        return Download(self, url, what=what, start=start, end=end, etag=etag, pinned=pinned)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before resume ``attempt`` (1-based): exponential with full jitter."""
        ceiling = min(self.settings.max_wait, self.settings.initial_wait * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography

    async def get(self, url: str, *, what: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """GET ``url`` and return the *streaming* 2xx response (the caller closes it).

        Raises SourceNotFound / SourceAuthError / SourceError naming ``what`` and the URL without its query.
        """
        policy = retry_policy(
            attempts=self.settings.attempts,
            initial_wait=self.settings.initial_wait,
            max_wait=self.settings.max_wait,
            retry_after_cap=self.settings.retry_after_cap,
            before_sleep=log_before_sleep(log, what, self.settings.attempts, _retry_cause),
        )
        try:
            async for attempt in policy:
                with attempt:
                    response = await self._send(url, headers or {}, what)
                    if response.is_success:
                        return response
                    error = _StatusError(response, await _error_detail(response))
                    if is_retryable_status(response.status_code):
                        raise error
                    raise _status_error(error, what, url)
        except _StatusError as exc:
            raise _status_error(exc, what, url) from None
        except httpx.HTTPError as exc:
            raise carry_retryability(SourceError(f"{what}: {describe(exc)}", uri=display_url(url)), exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the policy re-raises the last error

    async def get_json(self, url: str, *, what: str, limit: int = 64 * 1024 * 1024) -> tuple[Any, httpx.Response]:
        """GET a JSON document (at most ``limit`` bytes); returns it with the (closed) response."""
        response = await self.get(url, what=what, headers={"Accept": "application/json"})
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > limit:
                    raise SourceError(f"{what}: the answer is larger than {limit} bytes", uri=display_url(url))
        except httpx.HTTPError as exc:
            raise SourceError(f"{what}: {describe(exc)}", uri=display_url(url)) from exc
        finally:
            await response.aclose()
        try:
            return json.loads(body), response
        except ValueError:
            raise SourceError(f"{what}: the answer is not JSON", uri=display_url(url)) from None

    async def _send(self, url: str, headers: Mapping[str, str], what: str) -> httpx.Response:
        target = httpx.URL(url)
        for _ in range(self.settings.max_redirects + 1):
            merged = dict(headers)
            for name, value in self._scoped.get(origin_of(target), {}).items():
                merged[name] = value.get_secret_value()
            request = self._client.build_request("GET", target, headers=merged)
            response = await self._client.send(request, stream=True)
            if not response.has_redirect_location:
                return response
            # Followed here, not by httpx: httpx drops only Authorization on a cross-origin redirect, while a
            # custom header (X-Api-Key, a cookie) would follow a CDN redirect to a host that must not see it.
            await response.aclose()
            target = target.join(response.headers["Location"])
        raise SourceError(f"{what}: more than {self.settings.max_redirects} redirects", uri=display_url(url))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
