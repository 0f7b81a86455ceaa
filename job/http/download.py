"""One resumable http download: the streamed body of a GET, bytes ``[start, end)``, resumed with ``Range``.

:class:`Download` streams one body with ``aiter_raw`` (no re-chunking) and, when a connection breaks mid-body,
resumes it with ``Range`` only where the server can promise the same bytes, never a mix of two versions:

* **If-Range** carries the validator of the first answer: its strong ETag or, without an ETag, its
  ``Last-Modified`` when that date is strong (at least one second older than the answer's ``Date``, RFC 9110
  8.8.2.2 and 13.1.5). A 206 continues the same version; a 200 (the whole file: it changed, or the server
  ignores ``Range``) is a *retryable* SourceError, so the engine sends the file again from its start
  (``job.engine.transfer``) instead of splicing. With no validator, or a weak ETag (If-Range takes none), or no
  ``Accept-Ranges: bytes``, a broken read does not resume: the same retryable error, the same whole-file retry.
* **If-Match** on the listed (or first) strong ETag stays on every request, because a listed ETag is what the
  job promised to copy (README: "a changed source is an error"): a server that honours it answers 412, a
  one-line error, and the whole-file retry reads the ETag it gets back and refuses a new one. If-Range alone
  would answer 200 with the new body and the restart would copy the new version; that is what happens where
  only ``Last-Modified`` exists (nothing was listed to hold it to), and where a server ignores If-Match.

A download of immutable bytes (``pinned``: a Hub file at a commit sha, whose digest the engine checks) resumes
without a validator. Each request goes through its client's retrying GET (:class:`DownloadClient`, which
:class:`job.http.client.HttpClient` is); :meth:`HttpClient.download <job.http.client.HttpClient.download>`
makes one.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx

from job.errors import SourceError
from job.http.settings import HttpSettings
from job.http.urls import display_url
from job.readahead import ReadAhead, read_in_order
from job.streams import describe

__all__ = ["Download", "DownloadClient", "strong_last_modified"]

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadClient(Protocol):
    """What a :class:`Download` asks of its client: the limits, the wait before a resume, and a GET that retries
    each request and maps error statuses to ``SourceError`` (:class:`job.http.client.HttpClient`)."""

    settings: HttpSettings
    read_ahead: ReadAhead | None
    """How far a long download reads ahead of itself on a slow link (:mod:`job.readahead`); None: never."""

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before resume ``attempt`` (1-based)."""
        ...

    async def get(self, url: str, *, what: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """GET ``url`` and return the *streaming* 2xx response (the caller closes it)."""
        ...


def _same_etag(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def strong_last_modified(headers: httpx.Headers) -> str | None:
    """``Last-Modified`` when it is a strong validator: at least a second older than ``Date`` (RFC 9110 8.8.2.2).

    A file changed twice within the second its date names would keep the same date, so a date that close to the
    answer's proves nothing; without a ``Date`` the client cannot tell.
    """
    modified, date = headers.get("Last-Modified"), headers.get("Date")
    if not modified or not date:
        return None
    try:
        age = parsedate_to_datetime(date) - parsedate_to_datetime(modified)
    except (TypeError, ValueError):
        return None
    return modified if age.total_seconds() >= 1 else None


class Download:
    """The body of one GET, bytes ``[start, end)``, resumed with ``Range`` after a broken connection.

    Contract: :meth:`start` sends the request (each request retried by the client's policy) and checks the answer;
    afterwards ``response``, ``etag``, ``last_modified`` (when strong), ``size`` (the whole file's, when known) and
    ``resumable`` are set. :meth:`chunks` yields the bytes as they arrive, and when the connection breaks mid-body
    it reopens at the next byte with ``Range`` and ``If-Range``, at most ``resume_attempts`` times, if the server
    serves ranges (``Accept-Ranges: bytes`` or a 206) and a validator (or ``pinned``) vouches for the bytes;
    otherwise, or when the resume is answered with the whole file, it raises a retryable SourceError saying why
    (the engine then sends the file again). A listed ``etag`` is sent as ``If-Match`` (when strong) and compared
    with the answer's, so a file replaced since it was listed is a SourceError that is not retried (module doc).
    Call :meth:`aclose` when done.
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
        pinned: bool = False,
    ) -> None:
        self.url = url
        self.what = what
        self.start_at = start
        self.end = end
        self.etag = etag
        self.last_modified: str | None = None
        """The first answer's ``Last-Modified``, when strong (:func:`strong_last_modified`)."""
        self.pinned = pinned
        self.response = response
        self.size: int | None = None
        self.resumable = False
        self.why_not = ""
        """Why a broken read cannot resume (when ``resumable`` is False)."""
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
        if_range = self.if_range()
        if ranged and if_range:
            headers["If-Range"] = if_range
        response = await self._client.get(self.url, what=self.what, headers=headers)
        try:
            self._check(response, pos, ranged=ranged)
        except BaseException:
            await response.aclose()
            raise
        return response

    def if_range(self) -> str | None:
        """The ``If-Range`` value: the strong ETag, else a strong ``Last-Modified`` (never a date beside an ETag,
        RFC 9110 13.1.5); None when neither exists."""
        if self.etag:
            return None if self.etag.startswith("W/") else self.etag
        return self.last_modified

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
            raise self._whole_file(response, pos)
        else:
            length = headers.get("Content-Length")
            self.size = int(length) if length and length.isdigit() and not self.encoded else None
        etag = headers.get("ETag")
        if self.etag and etag and not _same_etag(etag, self.etag):
            raise SourceError(
                f"{self.what}: it changed since it was listed (ETag {etag}, listed {self.etag})",
                uri=display_url(self.url),
            )
        self.etag = self.etag or etag
        if not self._checked:  # the first answer's date is the version every resume must match
            self.last_modified = strong_last_modified(headers)
        self.resumable, self.why_not = True, ""
        if self.encoded:
            self.resumable, self.why_not = False, "the server compressed the body, so byte offsets are not the file's"
        elif response.status_code != 206 and headers.get("Accept-Ranges", "").strip().lower() != "bytes":
            self.resumable, self.why_not = (
                False,
                "the server does not support range requests (no 'Accept-Ranges: bytes')",
            )
        elif not self.pinned and self.if_range() is None:
            self.resumable, self.why_not = (
                False,
                (
                    "the server gave no validator to resume against (no strong ETag, and no Last-Modified at least a "
                    "second older than its Date), so a resumed read could mix two versions of the file"
                ),
            )
        self._checked = True

    def _whole_file(self, response: httpx.Response, pos: int) -> SourceError:
        """The error for a 200 to a Range request from ``pos``: retryable, so the engine sends the file again."""
        etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        changed = (bool(self.etag and etag) and not _same_etag(str(etag), str(self.etag))) or (
            self.etag is None and bool(self.last_modified and modified) and modified != self.last_modified
        )
        cause = (
            f"the file changed since the download started (the answer to If-Range {self.if_range()} was the whole "
            "new file)"
            if changed
            else "the server ignored the Range request"
        )
        error = SourceError(
            f"{self.what}: {cause} (HTTP {response.status_code}), so reading cannot continue at byte {pos}; "
            "the file has to be read again from its start",
            uri=display_url(self.url),
        )
        error.retryable = True  # the engine's whole-file retry (README's retry ladder) reads it whole
        return error

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
                f"{self.what}: the connection broke after {done} bytes and {self.why_not}; the download cannot "
                f"resume: {describe(exc)}",
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
            async with aclosing(self._read()) as chunks:
                yield chunks
        finally:
            await self.aclose()

    def _read(self) -> AsyncGenerator[bytes, None]:
        """:meth:`chunks`, and on a slow link ranged reads ahead of them, where a resume could be (module doc):
        the server serves ranges of the same version (``resumable``), and the length is known."""
        ahead = self._client.read_ahead
        stop = self.end if self.end is not None else self.size
        if ahead is None or not self.resumable or stop is None or not ahead.worth_it(stop - self.start_at):
            return self.chunks()
        head = self.chunks()

        async def close_head() -> None:
            await head.aclose()
            await self.aclose()

        return read_in_order(self._segment, self.start_at, stop, ahead, self.what, head=head, close_head=close_head)

    @asynccontextmanager
    async def _segment(self, start: int, end: int) -> AsyncIterator[AsyncIterator[bytes]]:
        """Bytes ``[start, end)`` of the same version: ``If-Match`` and ``If-Range`` carry this download's
        validators (a changed file answers 412 or 200, an error where the stream reaches it)."""
        segment = Download(
            self._client, self.url, what=self.what, start=start, end=end, etag=self.etag, pinned=self.pinned
        )
        segment.last_modified = self.last_modified
        async with segment.body() as chunks:  # one segment: never long enough to read ahead itself
            yield chunks
