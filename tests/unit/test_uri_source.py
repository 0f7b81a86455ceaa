"""The uri source's http layer with respx (exact request sequences), and its pure helpers.

Real servers (drops, archives, the Hub) are in tests/integration/test_uri.py.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx
from pydantic import SecretStr

from job.config import UriLocation
from job.errors import SourceAuthError, SourceError, SourceNotFound
from job.http.client import HttpClient
from job.http.settings import HttpSettings
from job.http.urls import display_url, filename_of
from job.model import ObjectInfo
from job.sources.archive import ArchiveSource
from job.sources.hf import HfSource, parse_hf_uri
from job.sources.uri import HttpFileSource, UriSource
from tests.servers.http import range_responder, tar_bytes

FAST = HttpSettings(initial_wait=0.001, max_wait=0.01)
DATA = bytes(range(256)) * 40
URL = "https://files.example/models/model.bin"


class Dropping(httpx.AsyncByteStream):
    """A body that sends ``data[:n]`` and then breaks like a dropped connection."""

    def __init__(self, data: bytes, n: int) -> None:
        self.data, self.n = data, n

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: self.n]
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def source(uri: str = URL, **kw: object) -> UriSource:
    return UriSource(UriLocation(uri, **kw), storage_path=Path("/nonexistent"), settings=FAST)  # type: ignore[arg-type]


async def read_all(src: UriSource) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        for obj in [o async for o in src.list()]:
            async with src.open(obj) as chunks:
                out[str(obj.path)] = b"".join([c async for c in chunks])
    finally:
        await src.close()
    return out


# --- pure helpers ---------------------------------------------------------------------------------------------


def test_display_url_drops_userinfo_query_and_fragment() -> None:
    assert display_url("https://u:p@h.example:8443/a/b%20c?X-Amz-Signature=s#f") == "https://h.example:8443/a/b%20c"
    assert display_url("http://h.example/x") == "http://h.example/x"


@pytest.mark.parametrize(
    ("disposition", "url", "expected"),
    [
        (None, "https://h/dir/model%20v2.bin?sig=1", "model v2.bin"),
        ('attachment; filename="weights.safetensors"', "https://h/download?id=3", "weights.safetensors"),
        ("attachment; filename*=UTF-8''na%C3%AFve.bin", "https://h/d", "naïve.bin"),
        ('attachment; filename="../../etc/passwd"', "https://h/dir/safe.bin", "safe.bin"),
        ('attachment; filename=".."', "https://h/dir/", None),
        (None, "https://h/dir/%2e%2e", None),
        (None, "https://h/a%2Fb", None),
    ],
)
def test_filename_of(disposition: str | None, url: str, expected: str | None) -> None:
    response = httpx.Response(200, headers={"Content-Disposition": disposition} if disposition else {})
    assert filename_of(response, url) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://org/model", ("org/model", "main")),
        ("hf://org/model:v1.0", ("org/model", "v1.0")),
        ("hf://org/model@refs/pr/1", ("org/model", "refs/pr/1")),
        ("hf://gpt2", ("gpt2", "main")),
    ],
)
def test_parse_hf_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_hf_uri(uri) == expected


@pytest.mark.parametrize("uri", ["hf://", "hf://a/b/c", "hf://../x", "hf://org/model:"])
def test_parse_hf_uri_refuses(uri: str) -> None:
    with pytest.raises(SourceError, match="not hf://org/model"):
        parse_hf_uri(uri)


# --- one file -------------------------------------------------------------------------------------------------


@respx.mock
async def test_single_file_is_one_get_named_after_the_url() -> None:
    route = respx.get(URL).mock(side_effect=range_responder(DATA))
    src = source()
    objects = [o async for o in src.list()]
    assert objects == [ObjectInfo(path=objects[0].path, size=len(DATA), etag='"v1"')]
    assert str(objects[0].path) == "model.bin"
    async with src.open(objects[0]) as chunks:
        assert b"".join([c async for c in chunks]) == DATA
    await src.close()
    assert route.call_count == 1  # the listing's response is the one streamed
    assert route.calls[0].request.headers["Accept-Encoding"] == "identity"


@respx.mock
async def test_unknown_length_lists_size_none() -> None:
    respx.get(URL).mock(return_value=httpx.Response(200, stream=httpx.ByteStream(DATA)))
    src = source()
    assert [o.size async for o in src.list()] == [None]
    await src.close()


@respx.mock
async def test_a_server_that_gzips_anyway_is_decoded_and_has_no_size() -> None:
    respx.get(URL).mock(
        return_value=httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=gzip.compress(DATA))
    )
    src = source()
    objects = [o async for o in src.list()]
    assert objects[0].size is None
    async with src.open(objects[0]) as chunks:
        assert b"".join([c async for c in chunks]) == DATA
    await src.close()


@respx.mock
async def test_open_at_an_offset_sends_range_and_if_match() -> None:
    responder = range_responder(DATA)
    respx.get(URL).mock(side_effect=responder)
    src = HttpFileSource(HttpClient(settings=FAST), URL)
    [obj] = [o async for o in src.list()]
    async with src.open(obj, offset=1000) as chunks:
        assert b"".join([c async for c in chunks]) == DATA[1000:]
    assert responder.requests[-1].headers["Range"] == "bytes=1000-"
    assert responder.requests[-1].headers["If-Match"] == '"v1"'


@respx.mock
async def test_open_at_an_offset_on_a_server_without_ranges_says_it_cannot_seek() -> None:
    respx.get(URL).mock(side_effect=range_responder(DATA, ranges=False))
    src = HttpFileSource(HttpClient(settings=FAST), URL)
    [obj] = [o async for o in src.list()]
    with pytest.raises(SourceError, match="ignored the Range request"):
        async with src.open(obj, offset=10):
            pass


# --- resume ---------------------------------------------------------------------------------------------------


@respx.mock
async def test_a_broken_body_resumes_with_range_and_if_match(caplog: pytest.LogCaptureFixture) -> None:
    responder = range_responder(DATA)
    headers = {"ETag": '"v1"', "Accept-Ranges": "bytes", "Content-Length": str(len(DATA))}
    route = respx.get(URL).mock(
        side_effect=[httpx.Response(200, headers=headers, stream=Dropping(DATA, 1000)), responder]
    )
    with caplog.at_level(logging.WARNING):
        assert await read_all(source()) == {"model.bin": DATA}
    assert route.call_count == 2
    assert responder.requests[0].headers["Range"] == "bytes=1000-"
    assert responder.requests[0].headers["If-Match"] == '"v1"'
    assert "resuming with a Range request" in caplog.text


@respx.mock
async def test_a_broken_body_without_range_support_fails_clearly() -> None:
    respx.get(URL).mock(return_value=httpx.Response(200, stream=Dropping(DATA, 1000)))
    with pytest.raises(SourceError, match=r"after 1000 bytes .*does not support range requests.*cannot resume"):
        await read_all(source())


@respx.mock
async def test_resume_gives_up_after_its_attempts() -> None:
    headers = {"Accept-Ranges": "bytes", "ETag": '"v1"'}
    first = httpx.Response(200, headers=headers, stream=Dropping(DATA, 10))
    again = [
        httpx.Response(
            206,
            headers={**headers, "Content-Range": f"bytes {10 * n}-{len(DATA) - 1}/{len(DATA)}"},
            stream=Dropping(DATA[10 * n :], 10),
        )
        for n in range(1, 7)
    ]
    respx.get(URL).mock(side_effect=[first, *again])
    with pytest.raises(SourceError, match="broke 6 times"):
        await read_all(source())


@respx.mock
async def test_a_file_replaced_before_the_resume_is_an_error() -> None:
    headers = {"ETag": '"v1"', "Accept-Ranges": "bytes"}
    respx.get(URL).mock(
        side_effect=[httpx.Response(200, headers=headers, stream=Dropping(DATA, 100)), httpx.Response(412)]
    )
    with pytest.raises(SourceError, match="HTTP 412.*changed since it was listed"):
        await read_all(source())


@respx.mock
async def test_a_wrong_content_range_is_an_error() -> None:
    headers = {"Accept-Ranges": "bytes", "ETag": '"v1"'}
    bad = httpx.Response(
        206, headers={**headers, "Content-Range": f"bytes 0-{len(DATA) - 1}/{len(DATA)}"}, content=DATA
    )
    respx.get(URL).mock(side_effect=[httpx.Response(200, headers=headers, stream=Dropping(DATA, 100)), bad])
    with pytest.raises(SourceError, match="asked for bytes from 100"):
        await read_all(source())


# --- errors, retries, redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, SourceNotFound), (410, SourceNotFound), (401, SourceAuthError), (403, SourceAuthError), (400, SourceError)],
)
@respx.mock
async def test_error_statuses_map_to_source_errors_without_the_query(status: int, error: type[SourceError]) -> None:
    respx.get(url__startswith=URL).mock(return_value=httpx.Response(status, json={"error": "nope"}))
    with pytest.raises(error) as info:
        await read_all(source(URL + "?X-Amz-Signature=secret-sig"))
    assert type(info.value) is error
    message = str(info.value)
    assert f"downloading {URL}: HTTP {status}" in message and "nope" in message
    assert "secret-sig" not in message and "X-Amz" not in message


@respx.mock
async def test_an_s3_error_body_gives_code_and_message_only() -> None:
    body = (
        "<Error><Code>SignatureDoesNotMatch</Code><Message>The signature does not match</Message>"
        "<SignatureProvided>secret-sig</SignatureProvided></Error>"
    )
    respx.get(url__startswith=URL).mock(return_value=httpx.Response(403, text=body, headers={"x-amz-request-id": "R1"}))
    with pytest.raises(SourceAuthError) as info:
        await read_all(source())
    assert "SignatureDoesNotMatch: The signature does not match (request id R1)" in str(info.value)
    assert "secret-sig" not in str(info.value)


@respx.mock
async def test_retryable_statuses_are_retried_honouring_retry_after() -> None:
    route = respx.get(URL).mock(
        side_effect=[httpx.Response(503, headers={"Retry-After": "0"}), httpx.Response(429), range_responder(DATA)]
    )
    assert await read_all(source()) == {"model.bin": DATA}
    assert route.call_count == 3


@respx.mock
async def test_retries_end_with_the_last_status() -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(502))
    with pytest.raises(SourceError, match="HTTP 502"):
        await read_all(source())
    assert route.call_count == FAST.attempts


@respx.mock
async def test_secret_headers_go_to_their_origin_only(caplog: pytest.LogCaptureFixture) -> None:
    hop = respx.get(URL).mock(return_value=httpx.Response(302, headers={"Location": "/models/v2/model.bin"}))
    cdn = respx.get("https://files.example/models/v2/model.bin").mock(
        return_value=httpx.Response(307, headers={"Location": "https://cdn.example/blob?sig=1"})
    )
    final = respx.get(url__startswith="https://cdn.example/blob").mock(side_effect=range_responder(DATA))
    src = source(headers={"X-Api-Key": SecretStr("key-123"), "Authorization": SecretStr("Bearer tok-456")})
    with caplog.at_level(logging.DEBUG):
        assert await read_all(src) == {"model.bin": DATA}
    for route in (hop, cdn):  # same origin: sent
        assert route.calls[0].request.headers["X-Api-Key"] == "key-123"
        assert route.calls[0].request.headers["Authorization"] == "Bearer tok-456"
    sent = final.calls[0].request.headers
    assert "X-Api-Key" not in sent and "Authorization" not in sent
    assert "key-123" not in caplog.text and "tok-456" not in caplog.text


@respx.mock
async def test_redirects_are_bounded() -> None:
    respx.get(URL).mock(return_value=httpx.Response(302, headers={"Location": URL}))
    with pytest.raises(SourceError, match="more than 10 redirects"):
        await read_all(source())


@respx.mock
async def test_a_transport_error_is_retried_then_reported() -> None:
    route = respx.get(URL).mock(side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(SourceError, match="ConnectError: connection refused"):
        await read_all(source())
    assert route.call_count == FAST.attempts


# --- dispatch -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ({"Content-Type": "application/x-tar"}, "tar"),
        ({"Content-Type": "application/zip; charset=binary"}, "zip"),
        ({"Content-Disposition": 'attachment; filename="model.tgz"'}, "tar.gz"),
    ],
)
@respx.mock
async def test_an_archive_is_recognised_by_its_headers(headers: dict[str, str], kind: str) -> None:
    url = "https://files.example/download?id=7"
    respx.get(url).mock(return_value=httpx.Response(200, headers=headers, content=b""))
    src = source(url)
    picked = await src._pick()
    assert isinstance(picked, ArchiveSource) and picked.kind == kind
    await picked.close()
    await src.close()


@respx.mock
async def test_an_archive_by_content_type_is_unpacked_from_the_same_response() -> None:
    payload = tar_bytes({"a/b.txt": b"hello", "c.txt": b""})
    route = respx.get(URL).mock(
        return_value=httpx.Response(200, headers={"Content-Type": "application/x-tar"}, content=payload)
    )
    assert await read_all(source()) == {"a/b.txt": b"hello", "c.txt": b""}
    assert route.call_count == 2  # the listing pass (that first response), then the copy pass


async def test_hf_uris_go_to_the_hub_source() -> None:
    src = source("hf://org/model:v2", hf_endpoint="https://hub.example")
    picked = await src._pick()
    assert isinstance(picked, HfSource) and (picked.repo, picked.revision) == ("org/model", "v2")
    await src.close()


@respx.mock
async def test_hub_token_goes_to_the_hub_only_and_listing_follows_link_pages() -> None:
    hub = "https://hub.example"
    sha = "c" * 40
    respx.get(f"{hub}/api/models/org/m/revision/main").mock(return_value=httpx.Response(200, json={"sha": sha}))
    tree = f"{hub}/api/models/org/m/tree/{sha}"
    lfs_oid = "ab" * 32
    respx.get(tree, params={"cursor": "2"}).mock(
        return_value=httpx.Response(
            200, json=[{"type": "file", "path": "w.bin", "size": 134, "oid": "o2", "lfs": {"oid": lfs_oid, "size": 5}}]
        )
    )
    respx.get(tree).mock(
        return_value=httpx.Response(
            200,
            json=[
                {"type": "directory", "path": "d", "size": 0},
                {"type": "file", "path": "d/c.json", "size": 2, "oid": "o1"},
            ],
            headers={"Link": f'</api/models/org/m/tree/{sha}?recursive=true&expand=false&cursor=2>; rel="next"'},
        )
    )
    respx.get(f"{hub}/org/m/resolve/{sha}/w.bin").mock(
        return_value=httpx.Response(302, headers={"Location": "https://cdn.example/x?Signature=s"})
    )
    cdn = respx.get(url__startswith="https://cdn.example/x").mock(return_value=httpx.Response(200, content=b"12345"))
    respx.get(f"{hub}/org/m/resolve/{sha}/d/c.json").mock(return_value=httpx.Response(200, content=b"{}"))
    src = source("hf://org/m", hf_endpoint=hub, hf_token=SecretStr("hf_tok"))
    objects = [o async for o in src.list()]
    assert [(str(o.path), o.size, o.digest, o.etag) for o in objects] == [
        ("d/c.json", 2, None, "o1"),
        ("w.bin", 5, f"sha256:{lfs_oid}", "o2"),
    ]
    for route in respx.routes:
        for call in route.calls:
            expected = call.request.url.host == "hub.example"
            assert ("Authorization" in call.request.headers) == expected, call.request.url
    async with src.open(objects[1]) as chunks:
        assert b"".join([c async for c in chunks]) == b"12345"
    assert "Authorization" not in cdn.calls[0].request.headers
    await src.close()


@respx.mock
async def test_hub_401_explains_private_repositories() -> None:
    respx.get(url__startswith="https://hub.example/api/").mock(
        return_value=httpx.Response(
            401, headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository Not Found"}
        )
    )
    with pytest.raises(SourceNotFound, match=r"HTTP 401.*Repository Not Found.*set HF_TOKEN"):
        await read_all(source("hf://org/secret", hf_endpoint="https://hub.example"))


@pytest.mark.parametrize(
    ("response", "why"),
    [
        (httpx.Response(200, headers={"Content-Type": "text/html; charset=utf-8"}, content=b"<html>log in</html>"),
         "answered with an HTML page"),
        (httpx.Response(204), "204 No Content"),
    ],
)  # fmt: skip
@respx.mock
async def test_a_web_page_or_no_content_is_not_stored_as_the_model(response: httpx.Response, why: str) -> None:
    respx.get(URL).mock(return_value=response)
    with pytest.raises(SourceError, match=why):
        await read_all(source())


@respx.mock
async def test_an_html_file_the_url_names_is_a_file() -> None:
    url = "https://files.example/docs/model-card.html"
    respx.get(url).mock(
        return_value=httpx.Response(200, headers={"Content-Type": "text/html"}, content=b"<h1>card</h1>")
    )
    assert await read_all(source(url)) == {"model-card.html": b"<h1>card</h1>"}
