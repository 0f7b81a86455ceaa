"""Resuming an http download only where the server vouches for the same bytes, with respx (exact requests).

A cut body resumes with ``Range`` and ``If-Range`` (the strong ETag, else a strong ``Last-Modified``): a 206
is spliced on; a 200 (the file changed, or the server ignores ``Range``) and a server with no validator give a
retryable error, and the engine sends the file again from its start instead of splicing two versions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx

from job.config import UriLocation
from job.engine.transfer import TransferSettings, transfer
from job.errors import SourceError
from job.http.client import HttpClient
from job.http.download import strong_last_modified
from job.http.settings import HttpSettings
from job.retry import RetrySettings, is_retryable
from job.sources.uri import UriSource
from tests.fakes import MemoryDestination

FAST = HttpSettings(initial_wait=0.001, max_wait=0.01)
ENGINE = TransferSettings(retry=RetrySettings(initial_wait=0.001, max_wait=0.01))
URL = "https://files.example/models/model.bin"
V1 = bytes(range(256)) * 40
V2 = bytes(reversed(range(256))) * 40  # same size: only the bytes tell the versions apart
CUT = 1000
DATE = "Tue, 04 Jun 2024 10:00:00 GMT"
MODIFIED = "Mon, 03 Jun 2024 09:00:00 GMT"
MODIFIED_V2 = "Tue, 04 Jun 2024 09:59:00 GMT"


class Cut(httpx.AsyncByteStream):
    """A body that sends ``data[:n]`` and then breaks like a dropped connection."""

    def __init__(self, data: bytes, n: int) -> None:
        self.data, self.n = data, n

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: self.n]
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def first(data: bytes = V1, **headers: str) -> httpx.Response:
    """The first answer: the whole file, cut after ``CUT`` bytes."""
    base = {"Accept-Ranges": "bytes", "Content-Length": str(len(data)), "Date": DATE}
    return httpx.Response(200, headers={**base, **headers}, stream=Cut(data, CUT))


def partial(data: bytes = V1, **headers: str) -> httpx.Response:
    """A 206 with the rest of ``data`` from ``CUT``."""
    base = {"Accept-Ranges": "bytes", "Date": DATE, "Content-Range": f"bytes {CUT}-{len(data) - 1}/{len(data)}"}
    return httpx.Response(206, headers={**base, **headers}, content=data[CUT:])


def whole(data: bytes, **headers: str) -> httpx.Response:
    base = {"Accept-Ranges": "bytes", "Content-Length": str(len(data)), "Date": DATE}
    return httpx.Response(200, headers={**base, **headers}, content=data)


async def copy(route: respx.Route) -> tuple[dict[str, bytes], list[httpx.Request]]:
    """Run the engine from the uri source into memory; what was stored, and the requests sent."""
    destination = MemoryDestination()
    source = UriSource(UriLocation(URL), storage_path=Path("/nonexistent"), settings=FAST)
    await transfer(source, destination, ENGINE)
    return destination.stored, [call.request for call in route.calls]


async def read_once() -> bytes:
    """One download through the http client, no engine: its errors surface as they are."""
    client = HttpClient(settings=FAST)
    try:
        async with client.download(URL, what="downloading model.bin").body() as chunks:
            return b"".join([c async for c in chunks])
    finally:
        await client.aclose()


# --- the validator ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Last-Modified": MODIFIED, "Date": DATE}, MODIFIED),
        ({"Last-Modified": "Tue, 04 Jun 2024 09:59:59 GMT", "Date": DATE}, "Tue, 04 Jun 2024 09:59:59 GMT"),
        ({"Last-Modified": DATE, "Date": DATE}, None),  # changed within the second its date names: proves nothing
        ({"Last-Modified": MODIFIED}, None),  # no Date: the client cannot tell
        ({"Last-Modified": "yesterday", "Date": DATE}, None),
        ({"Date": DATE}, None),
    ],
)
def test_last_modified_is_strong_only_a_second_before_the_date(headers: dict[str, str], expected: str | None) -> None:
    assert strong_last_modified(httpx.Headers(headers)) == expected


# --- resumed: the same version ---------------------------------------------------------------------------------


@respx.mock
async def test_with_an_etag_the_resume_sends_if_range_and_if_match_and_a_206_is_spliced() -> None:
    route = respx.get(URL).mock(side_effect=[first(ETag='"v1"'), partial(ETag='"v1"')])
    stored, requests = await copy(route)
    assert stored == {"model.bin": V1}
    assert [r.headers.get("Range") for r in requests] == [None, f"bytes={CUT}-"]
    assert requests[1].headers["If-Range"] == '"v1"'
    assert requests[1].headers["If-Match"] == '"v1"'


@respx.mock
async def test_with_last_modified_only_the_resume_sends_if_range_with_the_date_and_a_206_is_spliced() -> None:
    route = respx.get(URL).mock(side_effect=[first(**{"Last-Modified": MODIFIED}), partial()])
    stored, requests = await copy(route)
    assert stored == {"model.bin": V1}
    assert [r.headers.get("Range") for r in requests] == [None, f"bytes={CUT}-"]
    assert requests[1].headers["If-Range"] == MODIFIED
    assert "If-Match" not in requests[1].headers


# --- a 200 to If-Range: the file changed, so it is read again whole ------------------------------------------


@respx.mock
async def test_a_200_to_if_range_restarts_the_file_and_never_splices() -> None:
    """Before: first MiB of v1 + the rest of v2. Now: GET (cut), GET Range+If-Range (200, v2), GET: v2 whole."""
    route = respx.get(URL).mock(
        side_effect=[
            first(**{"Last-Modified": MODIFIED}),
            whole(V2, **{"Last-Modified": MODIFIED_V2}),
            whole(V2, **{"Last-Modified": MODIFIED_V2}),
        ]
    )
    stored, requests = await copy(route)
    assert stored == {"model.bin": V2}
    assert [r.headers.get("Range") for r in requests] == [None, f"bytes={CUT}-", None]
    assert [r.headers.get("If-Range") for r in requests] == [None, MODIFIED, None]


@respx.mock
async def test_a_200_to_if_range_is_a_retryable_error_naming_the_change() -> None:
    respx.get(URL).mock(side_effect=[first(**{"Last-Modified": MODIFIED}), whole(V2, **{"Last-Modified": MODIFIED_V2})])
    with pytest.raises(SourceError, match=r"changed since the download started.*HTTP 200.*byte 1000") as caught:
        await read_once()
    assert is_retryable(caught.value)


@respx.mock
async def test_with_an_etag_a_file_changed_since_it_was_listed_is_an_error_not_a_new_copy() -> None:
    """A server that ignores If-Match but honours If-Range: the restart sees the new ETag and refuses it."""
    route = respx.get(URL).mock(side_effect=[first(ETag='"v1"'), whole(V2, ETag='"v2"'), whole(V2, ETag='"v2"')])
    with pytest.raises(SourceError, match=r'changed since it was listed \(ETag "v2", listed "v1"\)') as caught:
        await copy(route)
    assert not is_retryable(caught.value)
    assert route.call_count == 3


# --- a server that ignores Range: the file is read again whole -------------------------------------------------


@respx.mock
async def test_a_server_that_ignores_range_gets_the_file_sent_again_whole() -> None:
    route = respx.get(URL).mock(side_effect=[first(ETag='"v1"'), whole(V1, ETag='"v1"'), whole(V1, ETag='"v1"')])
    stored, requests = await copy(route)
    assert stored == {"model.bin": V1}
    assert [r.headers.get("Range") for r in requests] == [None, f"bytes={CUT}-", None]


@respx.mock
async def test_a_server_that_ignores_range_is_a_retryable_error() -> None:
    respx.get(URL).mock(side_effect=[first(ETag='"v1"'), whole(V1, ETag='"v1"')])
    with pytest.raises(SourceError, match=r"ignored the Range request \(HTTP 200\)") as caught:
        await read_once()
    assert is_retryable(caught.value)


# --- no validator: no resume, the file is read again whole -----------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},  # neither ETag nor Last-Modified
        {"Last-Modified": DATE},  # a date as recent as the answer: not strong
        {"ETag": 'W/"v1"', "Last-Modified": MODIFIED},  # a weak ETag: If-Range takes neither it nor the date
    ],
    ids=["none", "recent-date", "weak-etag"],
)
@respx.mock
async def test_without_a_validator_a_cut_restarts_the_file_without_a_range_request(headers: dict[str, str]) -> None:
    route = respx.get(URL).mock(side_effect=[first(**headers), whole(V1, **headers)])
    stored, requests = await copy(route)
    assert stored == {"model.bin": V1}
    assert [r.headers.get("Range") for r in requests] == [None, None]


@respx.mock
async def test_without_a_validator_the_error_says_why_and_is_retryable() -> None:
    respx.get(URL).mock(side_effect=[first()])
    with pytest.raises(SourceError, match=r"after 1000 bytes and the server gave no validator") as caught:
        await read_once()
    assert is_retryable(caught.value)


@respx.mock
async def test_a_pinned_download_resumes_without_a_validator() -> None:
    """A Hub file at a commit sha is immutable (and its digest checked): it resumes even without one."""
    route = respx.get(URL).mock(side_effect=[first(), partial()])
    client = HttpClient(settings=FAST)
    try:
        async with client.download(URL, what="downloading model.bin", pinned=True).body() as chunks:
            assert b"".join([c async for c in chunks]) == V1
    finally:
        await client.aclose()
    assert [call.request.headers.get("Range") for call in route.calls] == [None, f"bytes={CUT}-"]
    assert "If-Range" not in route.calls[1].request.headers
