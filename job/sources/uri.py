"""Source ``uri``: one file over http(s), an archive to unpack, or a Hugging Face repository.

:class:`UriSource` is what the pipeline builds; nothing connects before ``list()``, which picks the backend:

* ``hf://org/model[:revision]``: :class:`job.sources.hf.HfSource`;
* a URL whose path ends in ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip``: :class:`job.sources.archive.ArchiveSource`;
* any other URL: one GET. If its ``Content-Type`` (or ``Content-Disposition`` filename) names an archive, as
  KServe's storage initializer checks, the archive backend takes over that response; otherwise the model is that
  one file (:class:`HttpFileSource`), and the same response is streamed when the engine opens the file.

All three share one http client (:mod:`job.http.client`: redirects, retries, error mapping; its downloads,
:mod:`job.http.download`, resume with ``Range``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from job.config import UriLocation
from job.errors import SourceError
from job.formats.tree import MAX_FILES
from job.http.client import HttpClient
from job.http.download import Download
from job.http.settings import HttpSettings
from job.http.urls import display_url, filename_of
from job.model import ObjectInfo
from job.readahead import ReadAhead
from job.sources.archive import ArchiveSource, archive_kind, archive_kind_from_content_type
from job.sources.base import Source
from job.sources.hf import HfSource

log = logging.getLogger(__name__)


class HttpFileSource:
    """The model is the one file at ``url``.

    ``list()`` sends the GET (or takes the started ``first`` download) and yields one object: named by
    :func:`filename_of`, sized by ``Content-Length`` (None without one), with the ETag. ``open(obj, 0)`` streams
    that same response; any other open is a new GET (``Range`` from ``offset``, ``If-Match`` on the ETag).
    """

    seekable = False
    """Not for the engine: an http read resumes by itself with ``Range`` (``job.http.download.Download``)."""
    one_pass = False

    def __init__(self, client: HttpClient, url: str, *, first: Download | None = None) -> None:
        self._client = client
        self._url = url
        self._parked = first
        self._what = f"downloading {display_url(url)}"

    async def list(self) -> AsyncIterator[ObjectInfo]:
        """Yield the one file."""
        download = self._parked or await self._client.download(self._url, what=self._what).start()
        self._parked = download
        name = filename_of(download.response, self._url)
        _refuse_non_files(download, name, self._url)
        if name is None:
            raise SourceError(
                f"listing {display_url(self._url)}: the URL names no file (its path ends with '/') and the "
                "server sent no usable Content-Disposition filename",
                uri=display_url(self._url),
            )
        yield ObjectInfo(path=PurePosixPath(name), size=download.size, etag=download.etag)

    @asynccontextmanager
    async def open(self, obj: ObjectInfo, *, offset: int = 0) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream the file from ``offset``."""
        download, self._parked = self._parked, None
        if download is None or offset:
            if download is not None:
                await download.aclose()
            download = self._client.download(self._url, what=self._what, start=offset, etag=obj.etag)
        async with download.body() as chunks:
            yield chunks

    async def close(self) -> None:
        """Release a response that was listed but never opened."""
        if self._parked is not None:
            await self._parked.aclose()
            self._parked = None


class UriSource:
    """The ``uri`` source: picks the http file, archive or Hub backend at ``list()`` (see the module doc)."""

    seekable = False
    """Not for the engine: an http read resumes by itself with ``Range`` (``job.http.download.Download``)."""

    def __init__(
        self,
        location: UriLocation,
        *,
        storage_path: Path,
        settings: HttpSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_files: int = MAX_FILES,
        read_ahead: ReadAhead | None = None,
    ) -> None:
        self.location = location
        self._storage_path = storage_path
        self._max_files = max_files
        self._hf = urlsplit(location.uri).scheme == "hf"
        scoped: dict[str, dict[str, SecretStr]] = {location.hf_endpoint: {}}
        if location.hf_token is not None:
            scoped[location.hf_endpoint]["Authorization"] = SecretStr(f"Bearer {location.hf_token.get_secret_value()}")
        # The URI Secret's headers go to the server the URI names (for hf://, the Hub), and only there.
        scoped.setdefault(location.hf_endpoint if self._hf else location.uri, {}).update(location.headers)
        self._client = HttpClient(settings=settings, scoped_headers=scoped, transport=transport)
        self._client.read_ahead = read_ahead
        self._inner: Source | None = None

    @property
    def one_pass(self) -> bool:
        """The backend's (an archive read as a stream); known once ``list()`` has picked it."""
        return self._inner is not None and self._inner.one_pass

    async def _pick(self) -> Source:
        uri = self.location.uri
        if self._hf:
            return HfSource.from_uri(self._client, uri, endpoint=self.location.hf_endpoint)
        kind = archive_kind(httpx.URL(uri).path)
        if kind is not None:
            return ArchiveSource(self._client, uri, kind, storage_path=self._storage_path, max_files=self._max_files)
        first = await self._client.download(uri, what=f"downloading {display_url(uri)}").start()
        assert first.response is not None
        content_type = first.response.headers.get("Content-Type")
        kind = archive_kind_from_content_type(content_type) or archive_kind(filename_of(first.response, uri) or "")
        if kind is None:
            return HttpFileSource(self._client, uri, first=first)
        log.info("%s: unpacking it as a %s archive (Content-Type %s)", display_url(uri), kind, content_type)
        return ArchiveSource(
            self._client, uri, kind, storage_path=self._storage_path, first=first, max_files=self._max_files
        )

    async def list(self) -> AsyncIterator[ObjectInfo]:
        """Pick the backend (once) and yield its listing."""
        if self._inner is None:
            self._inner = await self._pick()
        async for obj in self._inner.list():
            yield obj

    def open(self, obj: ObjectInfo, *, offset: int = 0) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Delegate to the backend ``list()`` picked (an async context manager of byte chunks)."""
        if self._inner is None:
            raise SourceError(f"opening {obj.path}: the uri source was not listed first")
        return self._inner.open(obj, offset=offset)

    async def close(self) -> None:
        """Close the backend, then the connection pool."""
        try:
            if self._inner is not None:
                await self._inner.close()
        finally:
            await self._client.aclose()


__all__ = ["HttpFileSource", "UriSource"]


def _refuse_non_files(download: Download, name: str | None, url: str) -> None:
    """A model file URL answered with a web page or with nothing is not a model: an HTML page whose URL does not
    name an ``.html`` file is a login or error page a proxy or an expired link sent; a 204 has no body at all."""
    response = download.response
    assert response is not None
    where = display_url(url)
    if response.status_code == 204:
        raise SourceError(f"downloading {where}: the server answered 204 No Content, so there is no file", uri=where)
    content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type == "text/html" and not (name or "").lower().endswith((".html", ".htm")):
        raise SourceError(
            f"downloading {where}: the server answered with an HTML page (a login or error page?), not the model file",
            uri=where,
        )
