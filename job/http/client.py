"""HTTP(S) for the sources that read over it (a file, an archive, the Hugging Face Hub): one client, one download.

:class:`HttpClient` sends GETs with ``Accept-Encoding: identity``, retries transport errors, 408/429/5xx
(honouring ``Retry-After``) with ``job.retry``'s policy, follows redirects itself (bounded) so that secret
headers (the URI Secret's ``HEADERS``, ``HF_TOKEN``) go only to the origin they were configured for, never to a
redirect target on another host, and maps error statuses to ``SourceNotFound`` (404/410), ``SourceAuthError``
(401/403) or ``SourceError``. :class:`Download` streams one body with ``aiter_raw`` (no re-chunking) and, when
a connection breaks mid-body and the server serves byte ranges, resumes it with ``Range`` (plus ``If-Match`` on
the ETag, so a file replaced meanwhile is an error, not a mix of two versions).

Messages name URLs as ``scheme://host[:port]/path``: no query string (presigned signatures), no userinfo, and
never a header value.
"""

from __future__ import annotations

import asyncio
import email.message
import json
import logging
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
from pydantic import SecretStr
from tenacity import RetryCallState

from job.errors import SourceAuthError, SourceError, SourceNotFound
from job.retry import RetrySettings, carry_retryability, is_retryable_status, retry_policy
from job.streams import describe

__all__ = ["Download", "HttpClient", "HttpSettings", "display_url", "filename_of", "origin_of"]

log = logging.getLogger(__name__)

USER_AGENT = "model-sync"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_URL_QUERY = re.compile(r"(https?://[^\s?#'\"<>]*)\?[^\s#'\"<>]*", re.IGNORECASE)


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


def display_url(url: str | httpx.URL) -> str:
    """``scheme://host[:port]/path``: how messages name a URL (no userinfo, query string or fragment)."""
    u = httpx.URL(url)
    port = f":{u.port}" if u.port else ""
    path = u.raw_path.split(b"?", 1)[0].decode("ascii")  # still percent-encoded: a %0A stays on one line
    return f"{u.scheme}://{u.host}{port}{path}"


def origin_of(url: str | httpx.URL) -> tuple[str, str, int]:
    """(scheme, host, port): secret headers are scoped to one origin."""
    u = httpx.URL(url)
    return u.scheme, u.host, u.port or (443 if u.scheme == "https" else 80)


def _redact(text: str) -> str:
    return _URL_QUERY.sub(r"\1?<redacted>", text)


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
    detail = _redact(" ".join(detail.split()))
    return f"{detail} (request id {request_id})" if request_id else detail


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
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(self.settings.timeout, connect=self.settings.connect_timeout, pool=None),
            follow_redirects=False,
            # identity: Content-Length and Range then count the file's own bytes, and aiter_raw needs no decoder.
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    def download(
        self, url: str, *, what: str, start: int = 0, end: int | None = None, etag: str | None = None
    ) -> Download:
        """A not yet started :class:`Download` of bytes ``[start, end)`` of ``url``."""
        return Download(self, url, what=what, start=start, end=end, etag=etag)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before resume ``attempt`` (1-based): exponential with full jitter."""
        ceiling = min(self.settings.max_wait, self.settings.initial_wait * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography

    async def get(self, url: str, *, what: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """GET ``url`` and return the *streaming* 2xx response (the caller closes it).

        Raises SourceNotFound / SourceAuthError / SourceError naming ``what`` and the URL without its query.
        """

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            cause = f"HTTP {exc.status}" if isinstance(exc, _StatusError) else describe(exc or Exception())
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "%s: %s; retrying in %.1fs (attempt %d of %d)",
                what, cause, wait, state.attempt_number + 1, self.settings.attempts,
            )  # fmt: skip

        policy = retry_policy(
            attempts=self.settings.attempts,
            initial_wait=self.settings.initial_wait,
            max_wait=self.settings.max_wait,
            retry_after_cap=self.settings.retry_after_cap,
            before_sleep=log_retry,
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


def _same_etag(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


class Download:
    """The body of one GET, bytes ``[start, end)``, resumed with ``Range`` after a broken connection.

    Contract: :meth:`start` sends the request (each request retried by the client's policy) and checks the answer;
    afterwards ``response``, ``etag``, ``size`` (the whole file's, when known) and ``resumable`` are set.
    :meth:`chunks` yields the bytes as they arrive, and when the connection breaks mid-body it reopens at the next
    byte, at most ``resume_attempts`` times, if the server serves ranges (``Accept-Ranges: bytes`` or a 206);
    otherwise the error says the server cannot resume. A listed ``etag`` is sent as ``If-Match`` (when strong) and
    compared with the answer's, so a file replaced meanwhile is a SourceError. Call :meth:`aclose` when done.
    """

    def __init__(
        self,
        client: HttpClient,
        url: str,
        *,
        what: str,
        start: int = 0,
        end: int | None = None,
        etag: str | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        self.url = url
        self.what = what
        self.start_at = start
        self.end = end
        self.etag = etag
        self.response = response
        self.size: int | None = None
        self.resumable = False
        self.encoded = False
        self._checked = False
        self._client = client

    async def start(self) -> Download:
        """Send the first request (unless a response was handed in) and check it; idempotent; returns self."""
        if self.response is None:
            self.response = await self._request(self.start_at)
        elif not self._checked:
            self._check(self.response, self.start_at, ranged=False)
        return self

    async def _request(self, pos: int) -> httpx.Response:
        headers: dict[str, str] = {}
        ranged = bool(pos) or self.end is not None
        if ranged:
            headers["Range"] = f"bytes={pos}-{'' if self.end is None else self.end - 1}"
        if self.etag and not self.etag.startswith("W/"):  # If-Match compares strong validators only (RFC 9110 13.1.1)
            headers["If-Match"] = self.etag
        response = await self._client.get(self.url, what=self.what, headers=headers)
        try:
            self._check(response, pos, ranged=ranged)
        except BaseException:
            await response.aclose()
            raise
        return response

    def _check(self, response: httpx.Response, pos: int, *, ranged: bool) -> None:
        headers = response.headers
        self.encoded = headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        if response.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != pos:
                raise SourceError(
                    f"{self.what}: asked for bytes from {pos}, the server sent {headers.get('Content-Range')!r}",
                    uri=display_url(self.url),
                )
            self.size = None if match.group(3) == "*" else int(match.group(3))
        elif ranged and pos:
            raise SourceError(
                f"{self.what}: the server ignored the Range request (HTTP {response.status_code}, the whole file), "
                f"so reading cannot start at byte {pos}",
                uri=display_url(self.url),
            )
        else:
            length = headers.get("Content-Length")
            self.size = int(length) if length and length.isdigit() and not self.encoded else None
        self.resumable = not self.encoded and (
            response.status_code == 206 or headers.get("Accept-Ranges", "").strip().lower() == "bytes"
        )
        etag = headers.get("ETag")
        if self.etag and etag and not _same_etag(etag, self.etag):
            raise SourceError(
                f"{self.what}: it changed since it was listed (ETag {etag}, listed {self.etag})",
                uri=display_url(self.url),
            )
        self.etag = self.etag or etag
        self._checked = True

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Yield the body's bytes (see the class doc); starts the download if needed."""
        pos = self.start_at
        if self.end is not None and pos >= self.end:
            return
        if self.response is None:
            await self.start()
        resumes = 0
        try:
            while True:
                response = self.response
                assert response is not None
                # aiter_raw passes httpx's network reads on as they are; only a server that ignored our
                # Accept-Encoding: identity gets decoded (aiter_bytes without a chunk size does not re-chunk).
                body = response.aiter_bytes() if self.encoded else response.aiter_raw()
                try:
                    async for chunk in body:
                        if self.end is not None and pos + len(chunk) > self.end:  # a 200 to a bounded request
                            if pos < self.end:
                                yield chunk[: self.end - pos]
                            return
                        pos += len(chunk)
                        if chunk:
                            yield chunk
                    return
                except httpx.TransportError as exc:
                    await response.aclose()
                    resumes += 1
                    self._check_resumable(exc, pos, resumes)
                    log.warning(
                        "%s: the connection broke at byte %d (%s); resuming with a Range request (%d of %d)",
                        self.what, pos, describe(exc), resumes, self._client.settings.resume_attempts,
                    )  # fmt: skip
                    await asyncio.sleep(self._client.backoff(resumes))
                    self.response = await self._request(pos)
        finally:
            await self.aclose()

    def _check_resumable(self, exc: httpx.TransportError, pos: int, resumes: int) -> None:
        done = pos - self.start_at
        # Both still retryable: the engine may send the file again from its start (a new GET).
        if not self.resumable:
            error = SourceError(
                f"{self.what}: the connection broke after {done} bytes and the server does not support range "
                f"requests (no 'Accept-Ranges: bytes'), so the download cannot resume: {describe(exc)}",
                uri=display_url(self.url),
            )
            error.retryable = True
            raise error from exc
        if resumes > self._client.settings.resume_attempts:
            error = SourceError(
                f"{self.what}: the connection broke {resumes} times; gave up after {done} bytes: {describe(exc)}",
                uri=display_url(self.url),
            )
            error.retryable = True
            raise error from exc

    async def aclose(self) -> None:
        """Release the connection (idempotent)."""
        if self.response is not None:
            await self.response.aclose()

    @asynccontextmanager
    async def body(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """:meth:`start` (errors surface here, at open), then :meth:`chunks`; released on exit, read or not."""
        try:
            if self.end is None or self.start_at < self.end:  # an empty range needs no request
                await self.start()
            async with aclosing(self.chunks()) as chunks:
                yield chunks
        finally:
            await self.aclose()


def filename_of(response: httpx.Response | None, url: str) -> str | None:
    """The file's name: a safe ``Content-Disposition`` filename, else the URL's last path segment, decoded."""
    disposition = response.headers.get("Content-Disposition") if response is not None else None
    candidates: list[str | None] = []
    if disposition:
        message = email.message.Message()
        message["Content-Disposition"] = disposition
        candidates.append(message.get_filename())  # handles RFC 6266/2231 filename*=UTF-8''...
    raw_path = httpx.URL(url).raw_path.split(b"?", 1)[0].decode("ascii")
    candidates.append(unquote(raw_path.rsplit("/", 1)[-1]))  # split before decoding: %2F is not a folder
    for name in candidates:
        if name and "/" not in name and "\\" not in name and name not in (".", "..") and name.isprintable():
            return name
    return None
