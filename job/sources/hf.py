"""Source ``hf://org/model[:revision]``: every file of a Hugging Face Hub model repository.

Listing follows ``huggingface_hub`` (``HfApi.repo_info`` then ``list_repo_tree``), without depending on it:

1. ``GET {endpoint}/api/models/{repo}/revision/{revision}`` pins the revision (default ``main``) to its commit
   sha, so every file comes from one commit even if the branch moves while the job runs (``snapshot_download``
   does the same);
2. ``GET {endpoint}/api/models/{repo}/tree/{sha}?recursive=true&expand=false``, following the ``Link: <...>;
   rel="next"`` header page by page (the Hub pages at 1000 entries). Folders are skipped. An LFS file's size and
   sha256 come from its ``lfs`` object; the sha256 is listed as the digest, so the engine checks the bytes
   against it. The git ``oid`` is kept as the etag.

``open()`` streams ``{endpoint}/{repo}/resolve/{sha}/{path}``. The Hub answers LFS files with a 302 to a CDN
(a presigned URL on another host): the redirect is followed, and ``HF_TOKEN`` (``Authorization: Bearer``) is sent
to the Hub endpoint's origin only, never to the CDN (see :class:`job.http.client.HttpClient`). A broken download
resumes with ``Range`` through the same resolve URL, which hands out a fresh CDN URL.

The Hub answers 401 with ``X-Error-Code: RepoNotFound`` both for a repository that does not exist and for a
private one asked without a token; the message says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from job.errors import SourceAuthError, SourceError, SourceNotFound
from job.http.client import HttpClient
from job.http.urls import display_url
from job.model import ObjectInfo, safe_relative_path

log = logging.getLogger(__name__)

DEFAULT_REVISION = "main"
MAX_PAGES = 100_000
"""A bound on tree pages (1000 entries each on the Hub): a server that links pages in a loop cannot hold the job."""
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_hf_uri(uri: str) -> tuple[str, str]:
    """``hf://org/model[:revision]`` (or ``@revision``) -> ``(repo_id, revision)``; SourceError if malformed."""
    rest = uri.removeprefix("hf://").strip("/")
    for sep in (":", "@"):
        if sep in rest:
            repo, _, revision = rest.partition(sep)
            break
    else:
        repo, revision = rest, DEFAULT_REVISION
    if not _REPO_ID.fullmatch(repo) or ".." in repo or not revision.strip():
        raise SourceError(f"source URI {uri!r} is not hf://org/model[:revision]", uri=uri)
    return repo, revision.strip()


class HfSource:
    """A :class:`~job.sources.base.Source` over one model repository of the Hub at ``endpoint``."""

    seekable = False
    """Not for the engine: an http read resumes by itself with ``Range`` (``job.http.download.Download``)."""
    one_pass = False

    def __init__(self, client: HttpClient, *, endpoint: str, repo: str, revision: str = DEFAULT_REVISION) -> None:
        self._client = client
        self._endpoint = endpoint.rstrip("/")
        self.repo = repo
        self.revision = revision
        self.commit: str | None = None
        """The commit sha ``revision`` resolved to (set by ``list()``)."""
        self.uri = f"hf://{repo}" + ("" if revision == DEFAULT_REVISION else f":{revision}")

    @classmethod
    def from_uri(cls, client: HttpClient, uri: str, *, endpoint: str) -> HfSource:
        """Parse ``hf://org/model[:revision]``."""
        repo, revision = parse_hf_uri(uri)
        return cls(client, endpoint=endpoint, repo=repo, revision=revision)

    def _hint(self, exc: SourceError) -> SourceError:
        """Add what a 401/404 from the Hub most often means to its message."""
        if not isinstance(exc, SourceNotFound | SourceAuthError):
            return exc
        hint = (
            f" (does {self.repo} exist at {self.revision}? If it is private or gated, set HF_TOKEN to a token "
            "that may read it)"
        )
        return type(exc)(str(exc) + hint, uri=exc.uri, path=exc.path)

    async def _resolve_commit(self) -> str:
        url = f"{self._endpoint}/api/models/{self.repo}/revision/{quote(self.revision, safe='')}"
        try:
            doc, _ = await self._client.get_json(url, what=f"resolving {self.uri} on {self._endpoint}")
        except SourceError as exc:
            raise self._hint(exc) from exc.__cause__
        sha = doc.get("sha") if isinstance(doc, dict) else None
        if isinstance(sha, str) and sha:
            if sha != self.revision:
                log.info("%s: revision %s is commit %s", self.uri, self.revision, sha)
            return sha
        return self.revision  # a mirror that does not say: list and read the revision as named

    async def list(self) -> AsyncIterator[ObjectInfo]:
        """Yield every file of the repository at the pinned commit, page by page."""
        self.commit = await self._resolve_commit()
        url: str | None = (
            f"{self._endpoint}/api/models/{self.repo}/tree/{quote(self.commit, safe='')}?recursive=true&expand=false"
        )
        seen: set[str] = set()
        files = 0
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise SourceError(f"listing {self.uri}: the Hub's tree pages do not end (at {display_url(url)})")
            seen.add(url)
            what = f"listing {self.uri} on {self._endpoint}"
            try:
                page, response = await self._client.get_json(url, what=what)
            except SourceError as exc:
                raise self._hint(exc) from exc.__cause__
            if not isinstance(page, list):
                raise SourceError(f"{what}: expected a JSON list of files, got {type(page).__name__}")
            for entry in page:
                obj = self._object(entry)
                if obj is not None:
                    files += 1
                    yield obj
            link = response.links.get("next", {}).get("url")
            url = str(response.url.join(link)) if link else None
        if not files:
            raise SourceNotFound(f"listing {self.uri}: the repository holds no files", uri=self.uri)

    def _object(self, entry: Any) -> ObjectInfo | None:
        if not isinstance(entry, dict) or entry.get("type") != "file":
            return None  # "directory" entries: their files are listed on their own
        raw = entry.get("path")
        try:
            path = safe_relative_path(raw if isinstance(raw, str) else "", what="file")
            lfs = entry.get("lfs")
            digest = None
            if isinstance(lfs, dict):
                size = int(lfs["size"])
                oid = str(lfs.get("oid") or lfs.get("sha256") or "")
                digest = f"sha256:{oid}" if _SHA256.fullmatch(oid) else None
            else:
                size = int(entry["size"])
        except SourceError as exc:
            raise SourceError(f"listing {self.uri}: {exc}", uri=self.uri, path=str(raw)) from None
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"listing {self.uri}: the Hub lists {raw!r} without a size", uri=self.uri) from None
        git_oid = entry.get("oid")
        return ObjectInfo(path=path, size=size, digest=digest, etag=git_oid if isinstance(git_oid, str) else None)

    def _resolve_url(self, path: PurePosixPath) -> str:
        revision = quote(self.commit or self.revision, safe="")
        return f"{self._endpoint}/{self.repo}/resolve/{revision}/{quote(path.as_posix())}"

    @asynccontextmanager
    async def open(self, obj: ObjectInfo, *, offset: int = 0) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream one file through the Hub's resolve URL (following its CDN redirect), from ``offset``.

        No ``If-Match``: the CDN's ETag is not the listed git oid. The pinned commit makes the bytes immutable,
        and an LFS file's listed sha256 is checked by the engine, so a broken read resumes even where the CDN
        gives no validator (``pinned``; If-Range is still sent when it does).
        """
        what = f"downloading {obj.path} from {self.uri}"
        url = self._resolve_url(obj.path)
        download = self._client.download(url, what=what, start=offset, pinned=self.commit is not None)
        try:
            await download.start()
        except SourceError as exc:
            raise self._hint(exc) from exc.__cause__
        async with download.body() as chunks:
            yield chunks

    async def close(self) -> None:
        """Nothing of its own: the http client belongs to the :class:`~job.sources.uri.UriSource`."""
