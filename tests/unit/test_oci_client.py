"""OciClient request sequences, pinned with respx: uploads, auth challenges, mounts, errors, TLS fallback."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx
from pydantic import SecretStr

from job.errors import DestinationAuthError, DestinationError, SourceAuthError, SourceNotFound, UploadRejected
from job.oci.client import OciClient
from job.oci.protocol import parse_challenge
from job.readahead import ReadAhead

REG = "127.0.0.1:5000"
BASE = f"https://{REG}"
REALM = "https://127.0.0.1:5001/token"
PASSWORD = "pa55-word"
BEARER = f'Bearer realm="{REALM}",service="reg"'


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def client(**kwargs: object) -> OciClient:
    return OciClient(REG, **kwargs)  # type: ignore[arg-type]


def login() -> dict[str, object]:
    return {"username": "user", "password": SecretStr(PASSWORD)}


def seq(mock: respx.MockRouter) -> list[str]:
    """``METHOD path?query`` of every request, in order."""
    return [f"{c.request.method} {c.request.url.raw_path.decode()}" for c in mock.calls]


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


def ping(mock: respx.MockRouter, status: int = 200, challenge: str | None = None) -> None:
    headers = {"WWW-Authenticate": challenge} if challenge else {}
    mock.get(f"{BASE}/v2/").respond(status, headers=headers)


# --- uploads ---------------------------------------------------------------------------------------


async def test_single_patch_upload_streams_with_content_length_and_closes_with_the_digest(
    mock: respx.MockRouter,
) -> None:
    ping(mock)
    mock.post(f"{BASE}/v2/m/blobs/uploads/").respond(202, headers={"Location": "/v2/m/blobs/uploads/u1?_state=a"})
    patch = mock.patch(f"{BASE}/v2/m/blobs/uploads/u1", params={"_state": "a"}).respond(
        202, headers={"Location": "/v2/m/blobs/uploads/u1?_state=b"}
    )
    put = mock.put(f"{BASE}/v2/m/blobs/uploads/u1").respond(201)
    c = client()
    session = await c.start_upload("m")
    assert session is not None and session.location == f"{BASE}/v2/m/blobs/uploads/u1?_state=a"
    digest = await c.upload(session, chunks(b"hello ", b"world"), 11)
    await c.aclose()

    assert digest == sha(b"hello world")
    assert seq(mock) == [
        "GET /v2/",
        "POST /v2/m/blobs/uploads/",
        "PATCH /v2/m/blobs/uploads/u1?_state=a",
        f"PUT /v2/m/blobs/uploads/u1?_state=b&digest={digest.replace(':', '%3A')}",
    ]
    sent = patch.calls.last.request
    assert sent.headers["Content-Length"] == "11" and "Content-Range" not in sent.headers
    assert "Transfer-Encoding" not in sent.headers
    assert sent.content == b"hello world"
    assert put.calls.last.request.url.params["_state"] == "b"  # the session state is kept


async def test_chunked_mode_sends_content_range_and_follows_each_new_location(mock: respx.MockRouter) -> None:
    ping(mock)
    mock.post(f"{BASE}/v2/m/blobs/uploads/").respond(202, headers={"Location": f"{BASE}/v2/m/blobs/uploads/u?s=0"})
    ranges: list[tuple[str, str, bytes]] = []

    def on_patch(request: httpx.Request) -> httpx.Response:
        ranges.append((request.headers["Content-Range"], request.headers["Content-Length"], request.content))
        # Alternate absolute and relative Locations: both must work.
        n = len(ranges)
        location = f"/v2/m/blobs/uploads/u?s={n}" if n % 2 else f"{BASE}/v2/m/blobs/uploads/u?s={n}"
        return httpx.Response(202, headers={"Location": location})

    mock.patch(f"{BASE}/v2/m/blobs/uploads/u").mock(side_effect=on_patch)
    put = mock.put(f"{BASE}/v2/m/blobs/uploads/u").respond(201)
    c = client()
    session = await c.start_upload("m")
    assert session is not None
    digest = await c.upload(session, chunks(b"abc", b"defghij"), 10, chunk_size=4)
    await c.aclose()

    assert ranges == [("0-3", "4", b"abcd"), ("4-7", "4", b"efgh"), ("8-9", "2", b"ij")]
    assert [c.request.url.params["s"] for c in mock.calls if c.request.method == "PATCH"] == ["0", "1", "2"]
    assert put.calls.last.request.url.params["s"] == "3"
    assert put.calls.last.request.url.params["digest"] == digest == sha(b"abcdefghij")


async def test_a_failed_streamed_patch_is_not_replayed(mock: respx.MockRouter) -> None:
    ping(mock)
    mock.post(f"{BASE}/v2/m/blobs/uploads/").respond(202, headers={"Location": "/v2/m/blobs/uploads/u"})
    patch = mock.patch(f"{BASE}/v2/m/blobs/uploads/u").respond(
        500, json={"errors": [{"code": "UNKNOWN", "message": "disk full"}]}
    )
    c = client()
    session = await c.start_upload("m")
    assert session is not None
    with pytest.raises(UploadRejected, match="500 UNKNOWN: disk full") as caught:
        await c.upload(session, chunks(b"data"), 4)
    await c.aclose()
    assert patch.call_count == 1
    assert caught.value.status == 500 and caught.value.code == "UNKNOWN"


async def test_head_skips_a_blob_the_repository_has(mock: respx.MockRouter) -> None:
    ping(mock)
    data = b'{"config": true}'
    mock.head(f"{BASE}/v2/m/blobs/{sha(data)}").respond(200)
    c = client()
    assert await c.push_blob("m", data) == sha(data)
    await c.aclose()
    assert seq(mock) == ["GET /v2/", f"HEAD /v2/m/blobs/{sha(data)}"]


async def test_push_blob_uploads_a_missing_blob_monolithically(mock: respx.MockRouter) -> None:
    ping(mock)
    data = b"{}"
    mock.head(f"{BASE}/v2/m/blobs/{sha(data)}").respond(404)
    mock.post(f"{BASE}/v2/m/blobs/uploads/").respond(202, headers={"Location": "/v2/m/blobs/uploads/u"})
    put = mock.put(f"{BASE}/v2/m/blobs/uploads/u").respond(201)
    c = client()
    await c.push_blob("m", data)
    await c.aclose()
    assert put.calls.last.request.content == data
    assert put.calls.last.request.url.params["digest"] == sha(data)


@pytest.mark.parametrize(("status", "mounted"), [(201, True), (202, False)])
async def test_cross_repository_mount(mock: respx.MockRouter, status: int, mounted: bool) -> None:
    ping(mock)
    digest = sha(b"layer")
    headers = {"Location": "/v2/m/blobs/uploads/u"} if status == 202 else {"Location": f"/v2/m/blobs/{digest}"}
    post = mock.post(f"{BASE}/v2/m/blobs/uploads/").respond(status, headers=headers)
    c = client()
    session = await c.start_upload("m", mount=digest, mount_from="base/busybox")
    await c.aclose()
    assert post.calls.last.request.url.params["mount"] == digest
    assert post.calls.last.request.url.params["from"] == "base/busybox"
    assert (session is None) is mounted
    if not mounted:
        assert session is not None and session.location == f"{BASE}/v2/m/blobs/uploads/u"


async def test_cancel_upload_deletes_the_session_and_never_raises(mock: respx.MockRouter) -> None:
    ping(mock)
    mock.post(f"{BASE}/v2/m/blobs/uploads/").respond(202, headers={"Location": "/v2/m/blobs/uploads/u?_state=x"})
    delete = mock.delete(f"{BASE}/v2/m/blobs/uploads/u").mock(side_effect=httpx.ConnectError("gone"))
    c = client()
    session = await c.start_upload("m")
    assert session is not None
    await c.cancel_upload(session)
    await c.cancel_upload(session)  # once only
    await c.aclose()
    assert delete.call_count == 1


# --- auth ------------------------------------------------------------------------------------------


def token_route(mock: respx.MockRouter, *tokens: str) -> respx.Route:
    return mock.get(REALM).mock(side_effect=[httpx.Response(200, json={"token": t, "expires_in": 300}) for t in tokens])


async def test_401_then_token_then_retry(mock: respx.MockRouter) -> None:
    ping(mock)  # an anonymous /v2/ (some registries allow it): the challenge comes with the request
    scope = "repository:lib/x:pull"
    manifest = mock.get(f"{BASE}/v2/lib/x/manifests/1").mock(
        side_effect=[
            httpx.Response(401, headers={"WWW-Authenticate": f'{BEARER},scope="{scope}"'}),
            httpx.Response(200, content=b"{}", headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}),
        ]
    )
    tokens = mock.get(REALM).respond(200, json={"access_token": "tok-1"})
    c = client(**login(), side="source")
    result = await c.get_manifest("lib/x", "1")
    await c.aclose()

    assert result.digest == sha(b"{}") and result.media_type == "application/vnd.oci.image.manifest.v1+json"
    token_request = tokens.calls.last.request
    assert token_request.url.params.get_list("scope") == [scope] and token_request.url.params["service"] == "reg"
    assert token_request.headers["Authorization"] == "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    assert "Authorization" not in manifest.calls[0].request.headers
    assert manifest.calls[1].request.headers["Authorization"] == "Bearer tok-1"
    assert "application/vnd.oci.image.index.v1+json" in manifest.calls[1].request.headers["Accept"]


async def test_insufficient_scope_gets_a_new_token_for_the_scopes_the_registry_names(mock: respx.MockRouter) -> None:
    ping(mock, 401, BEARER)
    mock.get(f"{BASE}/v2/base/x/manifests/1").respond(200, content=b"{}")
    both = "repository:base/x:pull repository:target/y:pull,push"
    post = mock.post(f"{BASE}/v2/target/y/blobs/uploads/").mock(
        side_effect=[
            httpx.Response(401, headers={"WWW-Authenticate": f'{BEARER},scope="{both}",error="insufficient_scope"'}),
            httpx.Response(201),
        ]
    )
    tokens = token_route(mock, "pull-base", "push-target", "mount-token")
    c = client(**login())
    await c.get_manifest("base/x", "1")
    assert await c.start_upload("target/y") is None
    await c.aclose()

    assert [r.request.url.params.get_list("scope") for r in tokens.calls] == [
        ["repository:base/x:pull"],
        ["repository:target/y:pull,push"],
        ["repository:base/x:pull", "repository:target/y:pull,push"],
    ]
    assert [r.request.headers["Authorization"] for r in post.calls] == ["Bearer push-target", "Bearer mount-token"]


async def test_the_same_token_is_not_resent_on_insufficient_scope(mock: respx.MockRouter) -> None:
    ping(mock, 401, BEARER)
    scope = "repository:m:pull,push"
    post = mock.post(f"{BASE}/v2/m/blobs/uploads/").respond(
        401,
        headers={"WWW-Authenticate": f'{BEARER},scope="{scope}",error="insufficient_scope"'},
        json={"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]},
    )
    token_route(mock, "pull-only")
    c = client(**login())
    with pytest.raises(DestinationAuthError, match="401 DENIED") as caught:
        await c.start_upload("m")
    await c.aclose()
    assert post.call_count == 1
    assert PASSWORD not in str(caught.value) and "pull-only" not in str(caught.value)


async def test_a_pull_push_token_serves_a_later_pull_of_the_same_repository(mock: respx.MockRouter) -> None:
    ping(mock, 401, BEARER)
    mock.post(f"{BASE}/v2/m/blobs/uploads/").respond(202, headers={"Location": "/v2/m/blobs/uploads/u"})
    head = mock.head(f"{BASE}/v2/m/blobs/{sha(b'x')}").respond(404)
    tokens = token_route(mock, "push")
    c = client(**login())
    await c.start_upload("m")
    assert not await c.blob_exists("m", sha(b"x"))
    await c.aclose()
    assert tokens.call_count == 1 and head.calls.last.request.headers["Authorization"] == "Bearer push"


async def test_basic_auth_after_a_basic_challenge_and_a_refused_login_names_no_secret(mock: respx.MockRouter) -> None:
    ping(mock, 401, 'Basic realm="basic-realm"')
    route = mock.get(f"{BASE}/v2/m/manifests/1").respond(
        401,
        headers={"WWW-Authenticate": 'Basic realm="basic-realm"'},
        json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
    )
    c = client(**login(), side="source")
    with pytest.raises(SourceAuthError) as caught:
        await c.get_manifest("m", "1")
    await c.aclose()
    assert route.call_count == 1  # the login went with the first request, and was refused: no loop
    assert route.calls.last.request.headers["Authorization"].startswith("Basic ")
    message = str(caught.value)
    assert "401 UNAUTHORIZED: authentication required" in message and "login was refused" in message
    assert PASSWORD not in message and base64.b64encode(f"user:{PASSWORD}".encode()).decode() not in message


async def test_a_refused_token_request_is_an_auth_error(mock: respx.MockRouter) -> None:
    ping(mock, 401, BEARER)
    mock.get(REALM).respond(401, json={"details": "bad login"})
    c = client(**login())
    with pytest.raises(DestinationAuthError, match="getting a registry token") as caught:
        await c.start_upload("m")
    await c.aclose()
    assert PASSWORD not in str(caught.value)


async def test_no_login_over_plain_http_to_the_realm_of_an_https_registry(mock: respx.MockRouter) -> None:
    ping(mock, 401, 'Bearer realm="http://127.0.0.1:5001/token",service="reg"')
    realm = mock.get("http://127.0.0.1:5001/token").respond(200, json={"token": "t"})
    c = client(**login())
    with pytest.raises(DestinationError, match="plain http"):
        await c.start_upload("m")
    await c.aclose()
    assert realm.call_count == 0


async def test_tokens_stay_on_the_registry_origin_across_redirects(mock: respx.MockRouter) -> None:
    ping(mock, 401, BEARER)
    token_route(mock, "secret-token")
    digest = sha(b"blob")
    mock.get(f"{BASE}/v2/m/blobs/{digest}").respond(307, headers={"Location": "https://127.0.0.1:9000/store/b?sig=abc"})
    storage = mock.get("https://127.0.0.1:9000/store/b").respond(200, content=b"blob")
    c = client(**login(), side="source")
    assert await c.read_blob("m", digest) == b"blob"
    await c.aclose()
    assert "Authorization" not in storage.calls.last.request.headers


# --- errors, retries, ranges, TLS ------------------------------------------------------------------


async def test_404_on_a_pull_is_source_not_found_with_the_registry_message(mock: respx.MockRouter) -> None:
    ping(mock)
    mock.get(f"{BASE}/v2/m/manifests/v9").respond(
        404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {"Tag": "v9"}}]}
    )
    c = client(side="source")
    with pytest.raises(SourceNotFound, match=f"reading manifest {REG}/m:v9: 404 MANIFEST_UNKNOWN: manifest unknown"):
        await c.get_manifest("m", "v9")
    await c.aclose()


async def test_403_on_a_push_is_a_destination_auth_error(mock: respx.MockRouter) -> None:
    ping(mock)
    mock.put(f"{BASE}/v2/m/manifests/v1").respond(403, json={"errors": [{"code": "DENIED", "message": "no"}]})
    c = client()
    with pytest.raises(DestinationAuthError, match="403 DENIED: no"):
        await c.put_manifest("m", "v1", b"{}", "application/vnd.oci.image.manifest.v1+json")
    await c.aclose()


async def test_manifest_put_sends_the_content_type_and_returns_the_digest_of_the_bytes(mock: respx.MockRouter) -> None:
    ping(mock)
    route = mock.put(f"{BASE}/v2/m/manifests/v1").respond(201)
    c = client()
    data = json.dumps({"schemaVersion": 2}).encode()
    assert await c.put_manifest("m", "v1", data, "application/vnd.oci.image.index.v1+json") == sha(data)
    await c.aclose()
    assert route.calls.last.request.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    assert route.calls.last.request.content == data


async def test_idempotent_requests_retry_5xx_and_honour_retry_after(mock: respx.MockRouter) -> None:
    ping(mock)
    route = mock.get(f"{BASE}/v2/m/manifests/1").mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "0"}),
            httpx.ConnectError("reset"),
            httpx.Response(200, content=b"{}"),
        ]
    )
    c = client(side="source")
    await c.get_manifest("m", "1")
    await c.aclose()
    assert route.call_count == 3


async def test_ranged_blob_reads(mock: respx.MockRouter) -> None:
    ping(mock)
    digest = sha(b"0123456789")
    route = mock.get(f"{BASE}/v2/m/blobs/{digest}").mock(
        side_effect=[httpx.Response(206, content=b"3456"), httpx.Response(200, content=b"0123456789")]
    )
    c = client(side="source")
    assert await c.read_blob("m", digest, start=3, length=4) == b"3456"
    # A registry that ignores Range answers 200 with everything: the client cuts the window itself.
    assert await c.read_blob("m", digest, start=3, length=4) == b"3456"
    await c.aclose()
    assert [call.request.headers["Range"] for call in route.calls] == ["bytes=3-6", "bytes=3-6"]


async def test_tls_verify_off_falls_back_to_plain_http(mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/v2/").mock(side_effect=httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER]"))
    mock.get(f"http://{REG}/v2/").respond(200)
    route = mock.head(f"http://{REG}/v2/m/blobs/{sha(b'')}").respond(200)
    c = client(tls_verify=False)
    assert await c.blob_exists("m", sha(b""))
    await c.aclose()
    assert route.call_count == 1 and c.base_url == f"http://{REG}"


async def test_tls_verify_on_never_falls_back(mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/v2/").mock(side_effect=httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]"))
    plain = mock.get(f"http://{REG}/v2/").respond(200)
    c = client(side="source")
    with pytest.raises(Exception, match="CA bundle"):
        await c.blob_exists("m", sha(b""))
    await c.aclose()
    assert plain.call_count == 0


def test_challenge_parsing() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"'
    )
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push repository:c:pull",
        "error": "insufficient_scope",
    }
    basic = parse_challenge('Basic realm="basic-realm"')
    assert basic is not None and basic.scheme == "basic" and basic.params == {"realm": "basic-realm"}
    assert parse_challenge(None) is None


async def test_a_token_is_refreshed_before_it_expires(mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("job.oci.protocol.time.monotonic", lambda: now[0])
    ping(mock, 401, BEARER)
    route = mock.head(f"{BASE}/v2/m/blobs/{sha(b'')}").respond(200)
    mock.get(REALM).mock(
        side_effect=[httpx.Response(200, json={"token": f"t{i}", "expires_in": 100}) for i in range(1, 3)]
    )
    c = client(**login())
    await c.blob_exists("m", sha(b""))
    now[0] += 79  # still fresh: 80% of its lifetime has not passed
    await c.blob_exists("m", sha(b""))
    now[0] += 2  # past 80%: a streamed PATCH must never start with a token about to expire
    await c.blob_exists("m", sha(b""))
    await c.aclose()
    assert [r.request.headers["Authorization"] for r in route.calls] == ["Bearer t1", "Bearer t1", "Bearer t2"]


@pytest.mark.parametrize("status", [206, 200])
async def test_a_long_read_asks_for_its_range_and_reads_ahead_only_when_slow(
    mock: respx.MockRouter, status: int
) -> None:
    ping(mock)
    data = bytes(range(256)) * 64
    digest = sha(data)
    route = mock.get(f"{BASE}/v2/m/blobs/{digest}").respond(status, content=data)
    c = client(side="source")
    c.read_ahead = ReadAhead(4, 4096, segment=1024)
    async with c.open_blob("m", digest, size=len(data)) as body:
        assert b"".join([chunk async for chunk in body]) == data
    await c.aclose()
    # one GET, with the Range that tells whether reads ahead may follow (the registry here is fast; a 200
    # means they never could: each would carry the whole blob)
    assert [call.request.headers["Range"] for call in route.calls] == [f"bytes=0-{len(data) - 1}"]
