"""URLs as the http layer shows and scopes them: names for messages, origins for secret headers, file names.

Messages name URLs as ``scheme://host[:port]/path`` (:func:`display_url`): no query string (presigned
signatures), no userinfo, and never a header value; a server's own words go through ``job.redaction``.
"""

from __future__ import annotations

import email.message
from urllib.parse import unquote

import httpx

__all__ = ["display_url", "filename_of", "origin_of"]


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
