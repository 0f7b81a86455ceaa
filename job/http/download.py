"""One resumable http download: the streamed body of a GET, bytes ``[start, end)``, resumed with ``Range``.

:class:`Download` streams one body with ``aiter_raw`` (no re-chunking) and, when a connection breaks mid-body and
the server serves byte ranges, resumes it with ``Range`` (plus ``If-Match`` on the ETag, so a file replaced
meanwhile is an error, not a mix of two versions). Each request goes through its client's retrying GET
(:class:`DownloadClient`, which :class:`job.http.client.HttpClient` is); :meth:`HttpClient.download
<job.http.client.HttpClient.download>` makes one.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Protocol

import httpx

from job.errors import SourceError
from job.http.settings import HttpSettings
from job.http.urls import display_url
from job.streams import describe

__all__ = ["Download", "DownloadClient"]

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadClient(Protocol):
    """What a :class:`Download` asks of its client: the limits, the wait before a resume, and a GET that retries
    each request and maps error statuses to ``SourceError`` (:class:`job.http.client.HttpClient`)."""

    settings: HttpSettings

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before resume ``attempt`` (1-based)."""
        ...

    async def get(self, url: str, *, what: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """GET ``url`` and return the *streaming* 2xx response (the caller closes it)."""
        ...


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
        client: DownloadClient,
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
