"""ModelRegistryClient against respx: requests on the wire, errors, retries, ambiguous POSTs."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from tenacity import RetryCallState, wait_fixed

from job.errors import ConfigError, ModelRegistryError
from job.model_registry.client import ModelRegistryClient
from job.model_registry.token import stat_key
from job.retry import WaitRetryAfter, is_retryable, retry_after

BASE = "http://registry.test"
PREFIX = "/api/model_registry/v1"
TOKEN = "tok-3f9a-secret"


def err(status: int, code: str, message: str, **kw: Any) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message}, **kw)


def sent(route: respx.Route, index: int = -1) -> Any:
    return json.loads(route.calls[index].request.content)


def calls(router: respx.MockRouter) -> list[tuple[str, str]]:
    return [(c.request.method, c.request.url.path.removeprefix(PREFIX)) for c in router.calls]


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE + PREFIX, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client() -> AsyncIterator[ModelRegistryClient]:
    async with ModelRegistryClient(BASE, token=TOKEN, retry_attempts=3, retry_initial_wait=0) as c:
        yield c


# -- requests ------------------------------------------------------------------------------------------


async def test_bearer_token_is_sent(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    route = api.get("/registered_models/1").respond(json={"id": "1"})
    assert await client.get_registered_model("1") == {"id": "1"}
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_no_authorization_header_without_token(api: respx.MockRouter) -> None:
    route = api.get("/registered_models/1").respond(json={"id": "1"})
    async with ModelRegistryClient(BASE + PREFIX + "/", token=None) as c:  # prefix given: not doubled
        await c.get_registered_model("1")
    assert "Authorization" not in route.calls.last.request.headers


def rotate(path: Path, token: str) -> None:
    """What the kubelet does to a projected token: a new file swapped in (new inode, new mtime)."""
    new = path.with_suffix(".new")
    new.write_text(token + "\n")
    new.replace(path)


async def test_a_rotated_token_file_is_read_again(api: respx.MockRouter, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token-1234\n")
    route = api.get("/registered_models/1").respond(json={"id": "1"})
    async with ModelRegistryClient(BASE, token="first-token-1234", token_file=token_file) as c:
        await c.get_registered_model("1")
        rotate(token_file, "second-token-5678")
        await c.get_registered_model("1")
    assert [call.request.headers["Authorization"] for call in route.calls] == [
        "Bearer first-token-1234",
        "Bearer second-token-5678",
    ]


async def test_a_401_reads_the_token_file_again_and_retries_once(
    api: respx.MockRouter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The file changed without a new stat key (same inode, mtime and size are possible within a tick):
    # the 401 itself makes the client look again.
    token_file = tmp_path / "token"
    token_file.write_text("expired-token-00\n")
    route = api.patch("/model_artifacts/7").mock(
        side_effect=lambda request: httpx.Response(200, json={"id": "7"})
        if request.headers["Authorization"] == "Bearer renewed-token-11"
        else err(401, "Unauthorized", "token expired")
    )
    async with ModelRegistryClient(
        BASE, token="expired-token-00", token_file=token_file, retry_attempts=3, retry_initial_wait=0
    ) as c:
        token_file.write_text("renewed-token-11\n")
        c._token.stat = stat_key(token_file)  # as if stat had not told the change apart
        with caplog.at_level(logging.INFO, logger="job.model_registry.client"):
            assert await c.update_model_artifact("7", {}, state="LIVE") == {"id": "7"}
    assert [call.request.headers["Authorization"] for call in route.calls] == [
        "Bearer expired-token-00",
        "Bearer renewed-token-11",
    ]
    assert "sending PATCH" in caplog.text and "renewed-token-11" not in caplog.text


async def test_a_401_with_an_unchanged_token_file_is_an_error_without_the_token(
    api: respx.MockRouter, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("only-token-abcdef\n")
    route = api.get("/registered_models/1").respond(401, json={"code": "x", "message": "bad only-token-abcdef"})
    async with ModelRegistryClient(BASE, token="only-token-abcdef", token_file=token_file, retry_initial_wait=0) as c:
        with pytest.raises(ModelRegistryError, match="401") as caught:
            await c.get_registered_model("1")
    assert route.call_count == 1  # not retried: the file holds the same token
    assert "only-token-abcdef" not in str(caught.value)


async def test_a_missing_token_file_keeps_the_token(api: respx.MockRouter, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("kept-token-123456\n")
    route = api.get("/registered_models/1").respond(json={"id": "1"})
    async with ModelRegistryClient(BASE, token="kept-token-123456", token_file=token_file) as c:
        token_file.unlink()
        await c.get_registered_model("1")
    assert route.calls.last.request.headers["Authorization"] == "Bearer kept-token-123456"


async def test_find_sends_name_and_parent(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    rm = api.get("/registered_model", params={"name": "m x"}).respond(json={"id": "1", "name": "m x"})
    mv = api.get("/model_version", params={"name": "v", "parentResourceId": "1"}).respond(json={"id": "2"})
    ma = api.get("/model_artifact", params={"name": "a", "parentResourceId": "2"}).respond(json={"id": "3"})
    assert (await client.find_registered_model("m x")) == {"id": "1", "name": "m x"}
    assert (await client.find_model_version("v", "1")) == {"id": "2"}
    assert (await client.find_model_artifact("a", "2")) == {"id": "3"}
    assert rm.called and mv.called and ma.called


async def test_find_returns_none_on_the_servers_json_404(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    api.get("/registered_model").mock(
        return_value=err(404, "Not Found", "no registered models found for name=x, externalId=: not found")
    )
    assert await client.find_registered_model("x") is None


async def test_plain_text_404_is_a_wrong_address_not_a_missing_entity(client: ModelRegistryClient) -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        for prefix in (PREFIX, "/api/model_registry/v1alpha3"):  # neither generation serves it
            router.get(f"{prefix}/registered_model").respond(404, text="404 page not found\n")
        with pytest.raises(ModelRegistryError) as info:
            await client.find_registered_model("x")
    assert str(info.value).startswith("looking up registered model 'x': 404 Not Found: 404 page not found (is the")
    assert "does it serve /api/model_registry/v1 or /api/model_registry/v1alpha3?" in str(info.value)


# -- API generations: v1 (current servers) and v1alpha3 (older ones) ----------------------------------------

OLD = "/api/model_registry/v1alpha3"


async def test_auto_uses_v1_when_the_server_serves_it(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    api.get("/registered_model").respond(404, json={"code": "Not Found", "message": "no registered model found"})
    api.get("/registered_models/1").respond(json={"id": "1"})
    assert await client.find_registered_model("x") is None  # a JSON 404: the route exists, the entity does not
    await client.get_registered_model("1")
    assert [str(c.request.url.path) for c in api.calls] == [
        f"{PREFIX}/registered_model",
        f"{PREFIX}/registered_models/1",
    ]


async def test_auto_falls_back_to_v1alpha3_once() -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        v1 = router.get(f"{PREFIX}/registered_models/1").respond(404, text="404 page not found\n")
        old_get = router.get(f"{OLD}/registered_models/1").respond(json={"id": "1"})
        old_post = router.post(f"{OLD}/registered_models").respond(201, json={"id": "2", "name": "m"})
        async with ModelRegistryClient(BASE, token=None) as c:
            assert await c.get_registered_model("1") == {"id": "1"}
            assert await c.create_registered_model({"name": "m"}) == {"id": "2", "name": "m"}
    assert (v1.call_count, old_get.call_count, old_post.call_count) == (1, 1, 1)  # v1 asked once, not per call


@pytest.mark.parametrize(("version", "prefix"), [("v1", PREFIX), ("v1alpha3", OLD)])
async def test_a_forced_api_version_is_the_only_one_asked(version: str, prefix: str) -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get(f"{prefix}/registered_models/1").respond(404, text="404 page not found\n")
        async with ModelRegistryClient(BASE, token=None, api_version=version, retry_attempts=1) as c:
            with pytest.raises(ModelRegistryError, match=f"does it serve {prefix}\\?"):
                await c.get_registered_model("1")
    assert route.call_count == 1


@pytest.mark.parametrize("prefix", [PREFIX, OLD])
async def test_an_address_that_names_the_api_picks_that_generation(prefix: str) -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get(f"{prefix}/registered_models/1").respond(json={"id": "1"})
        async with ModelRegistryClient(BASE + prefix + "/", token=None) as c:
            await c.get_registered_model("1")
    assert route.call_count == 1


def test_an_unknown_api_version_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Model Registry API version must be one of auto, v1, v1alpha3"):
        ModelRegistryClient(BASE, token=None, api_version="v2")


async def test_create_model_version_fills_parent_and_default_author(api: respx.MockRouter) -> None:
    route = api.post("/registered_models/4/versions").respond(201, json={"id": "5"})
    async with ModelRegistryClient(BASE, token=None, author="ci-bot") as c:
        await c.create_model_version("4", {"name": "v1"})
        await c.create_model_version("4", {"name": "v2", "author": "jane"})
    assert sent(route, 0) == {"name": "v1", "registeredModelId": "4", "author": "ci-bot"}
    assert sent(route, 1) == {"name": "v2", "registeredModelId": "4", "author": "jane"}


async def test_create_model_artifact_body(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    route = api.post("/model_versions/5/artifacts").respond(201, json={"id": "6"})
    await client.create_model_artifact("5", {"name": "a", "uri": "s3://b/k"})
    await client.create_model_artifact("5", {"name": "b", "uri": "s3://b/k", "state": "LIVE"})
    # That endpoint applies no defaults (§2, §8): state is always sent.
    assert sent(route, 0) == {"name": "a", "uri": "s3://b/k", "state": "UNKNOWN", "artifactType": "model-artifact"}
    assert sent(route, 1)["state"] == "LIVE"


async def test_create_needs_a_name(client: ModelRegistryClient) -> None:
    with pytest.raises(ValueError, match="needs a name"):
        await client.create_model_artifact("5", {"uri": "x"})


async def test_patch_always_sends_state_and_drops_read_only_fields(
    api: respx.MockRouter, client: ModelRegistryClient
) -> None:
    route = api.patch("/model_artifacts/6").respond(json={"id": "6"})
    read_back = {
        "id": "6",
        "name": "a",
        "artifactType": "model-artifact",
        "createTimeSinceEpoch": "1",
        "description": "d",
        "customProperties": {"s": {"metadataType": "MetadataStructValue", "struct_value": '{"a":1}'}},
    }
    await client.update_model_artifact("6", read_back, state="LIVE")
    body = sent(route)
    assert body["state"] == "LIVE"
    assert body["description"] == "d"
    assert not {"id", "name", "artifactType", "createTimeSinceEpoch"} & body.keys()
    # struct re-encoded to base64 for input (§6)
    assert json.loads(base64.b64decode(body["customProperties"]["s"]["struct_value"])) == {"a": 1}


async def test_patch_without_state_re_sends_the_current_one(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    api.get("/model_versions/2").respond(json={"id": "2", "state": "ARCHIVED"})
    route = api.patch("/model_versions/2").respond(json={"id": "2"})
    await client.update_model_version("2", {"description": "new"})
    assert calls(api) == [("GET", "/model_versions/2"), ("PATCH", "/model_versions/2")]
    assert sent(route) == {"description": "new", "state": "ARCHIVED"}  # not reset to LIVE (§7)


async def test_update_registered_model(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    route = api.patch("/registered_models/1").respond(json={"id": "1"})
    await client.update_registered_model("1", {"owner": "o", "name": "ignored"}, state="LIVE")
    assert sent(route) == {"owner": "o", "state": "LIVE"}


async def test_list_follows_pages(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    api.get("/model_versions/2/artifacts", params={"nextPageToken": "t1"}).respond(
        json={"items": [{"id": "8"}], "nextPageToken": "", "pageSize": 100, "size": 1}
    )
    api.get("/model_versions/2/artifacts").respond(
        json={"items": [{"id": "7"}], "nextPageToken": "t1", "pageSize": 100, "size": 1}
    )
    assert [a["id"] for a in await client.list_model_artifacts("2")] == ["7", "8"]
    api.get("/registered_models/1/versions").respond(json={"items": [], "nextPageToken": "", "size": 0})
    assert await client.list_model_versions("1") == []


@pytest.mark.parametrize("bad", ["abc", "0", "7/../1", "", "1?x=2"])
async def test_ids_are_checked_before_any_request(api: respx.MockRouter, client: ModelRegistryClient, bad: str) -> None:
    with pytest.raises(ConfigError, match="not a Model Registry id"):
        await client.get_model_artifact(bad)
    assert not api.calls


def test_missing_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle"):
        ModelRegistryClient(BASE, token=None, verify=str(tmp_path / "nope.pem"))


# -- errors --------------------------------------------------------------------------------------------


async def test_error_message_carries_code_and_server_message(
    api: respx.MockRouter, client: ModelRegistryClient
) -> None:
    api.get("/model_artifacts/7").mock(return_value=err(404, "Not Found", "no artifact found for id 7: not found"))
    with pytest.raises(ModelRegistryError) as info:
        await client.get_model_artifact("7")
    assert str(info.value) == "getting model artifact 7: 404 Not Found: no artifact found for id 7: not found"
    assert (info.value.status, info.value.code) == (404, "Not Found")


async def test_conflict_on_create(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    api.post("/registered_models").mock(
        return_value=err(409, "Conflict", "registered model with name m already exists: conflict")
    )
    with pytest.raises(ModelRegistryError) as info:
        await client.create_registered_model({"name": "m"})
    assert str(info.value) == (
        "creating registered model 'm': 409 Conflict: registered model with name m already exists: conflict"
    )
    assert info.value.status == 409


async def test_plain_text_error_body_is_cut_to_one_short_line(
    api: respx.MockRouter, client: ModelRegistryClient
) -> None:
    api.get("/registered_models/1").respond(400, text="bad\nthing " + "x" * 500)
    with pytest.raises(ModelRegistryError) as info:
        await client.get_registered_model("1")
    message = str(info.value)
    assert message.startswith("getting registered model 1: 400 Bad Request: bad thing xxx")
    assert "\n" not in message and len(message) < 300


async def test_token_never_in_messages_or_logs(
    api: respx.MockRouter, client: ModelRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api.get("/registered_models/1").mock(
        side_effect=[httpx.Response(503), err(401, "Unauthorized", f"token {TOKEN} rejected")]
    )
    with pytest.raises(ModelRegistryError) as info:
        await client.get_registered_model("1")
    assert TOKEN not in str(info.value)
    assert "***" in str(info.value)
    assert TOKEN not in caplog.text
    assert "GET /api/model_registry/v1/registered_models/1 -> 503" in caplog.text


# -- retries -------------------------------------------------------------------------------------------


async def test_retries_503_then_succeeds(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    route = api.get("/model_artifacts/7").mock(
        side_effect=[
            httpx.Response(503, text="upstream down"),
            httpx.Response(502),
            httpx.Response(200, json={"id": "7"}),
        ]
    )
    assert await client.get_model_artifact("7") == {"id": "7"}
    assert route.call_count == 3


async def test_retries_transport_errors_then_succeeds(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    route = api.patch("/model_artifacts/7").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(200, json={"id": "7"})]
    )
    assert await client.update_model_artifact("7", {}, state="LIVE") == {"id": "7"}
    assert route.call_count == 3


async def test_429_with_retry_after_is_retried(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    route = api.get("/model_artifacts/7").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "0"}), httpx.Response(200, json={"id": "7"})]
    )
    assert await client.get_model_artifact("7") == {"id": "7"}
    assert route.call_count == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_no_retry_on_4xx(api: respx.MockRouter, client: ModelRegistryClient, status: int) -> None:
    route = api.get("/model_artifacts/7").mock(return_value=err(status, "X", "no"))
    with pytest.raises(ModelRegistryError) as info:
        await client.get_model_artifact("7")
    assert route.call_count == 1
    assert info.value.status == status


async def test_retries_are_bounded(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    route = api.get("/model_artifacts/7").mock(return_value=err(503, "Service Unavailable", "busy"))
    with pytest.raises(ModelRegistryError) as info:
        await client.get_model_artifact("7")
    assert route.call_count == 3
    assert str(info.value) == "getting model artifact 7: 503 Service Unavailable: busy"


async def test_transport_failure_after_all_attempts(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    api.get("/model_artifacts/7").mock(side_effect=httpx.ConnectError("All connection attempts failed"))
    with pytest.raises(ModelRegistryError) as info:
        await client.get_model_artifact("7")
    assert str(info.value) == (
        "getting model artifact 7: cannot reach the Model Registry at http://registry.test: "
        "ConnectError: All connection attempts failed (after 3 attempts)"
    )
    assert info.value.status is None


# -- ambiguous POSTs -----------------------------------------------------------------------------------


async def test_post_that_landed_before_its_answer_was_lost_is_not_sent_again(
    api: respx.MockRouter, client: ModelRegistryClient
) -> None:
    post = api.post("/registered_models").mock(side_effect=httpx.ReadTimeout("lost"))
    api.get("/registered_model", params={"name": "m"}).respond(
        json={
            "id": "9",
            "name": "m",
            "state": "LIVE",
            "customProperties": {"d": {"metadataType": "MetadataStructValue", "struct_value": '{"a":1}'}},
        }
    )
    body = {
        "name": "m",
        "customProperties": {"d": {"metadataType": "MetadataStructValue", "struct_value": "eyJhIjoxfQ=="}},
    }
    created = await client.create_registered_model(body)
    assert created["id"] == "9"
    assert post.call_count == 1
    assert calls(api) == [("POST", "/registered_models"), ("GET", "/registered_model")]


async def test_post_that_did_not_land_is_sent_again(api: respx.MockRouter, client: ModelRegistryClient) -> None:
    post = api.post("/model_versions/2/artifacts").mock(
        side_effect=[httpx.Response(502), httpx.Response(201, json={"id": "3"})]
    )
    api.get("/model_artifact").mock(return_value=err(404, "Not Found", "no artifact found: not found"))
    assert (await client.create_model_artifact("2", {"name": "a"}))["id"] == "3"
    assert calls(api) == [
        ("POST", "/model_versions/2/artifacts"),
        ("GET", "/model_artifact"),
        ("POST", "/model_versions/2/artifacts"),
    ]
    assert post.call_count == 2


async def test_someone_elses_entity_appearing_during_retry_is_a_conflict(
    api: respx.MockRouter, client: ModelRegistryClient
) -> None:
    api.post("/registered_models/1/versions").mock(side_effect=httpx.RemoteProtocolError("reset"))
    api.get("/model_version").respond(json={"id": "4", "name": "v", "registeredModelId": "1", "author": "other"})
    with pytest.raises(ModelRegistryError) as info:
        await client.create_model_version("1", {"name": "v", "author": "me"})
    assert info.value.status == 409
    assert "different entity with that name (id 4)" in str(info.value)


# -- retry policy (job.retry) --------------------------------------------------------------------------


def _state_with(exc: BaseException) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.set_exception((type(exc), exc, None))
    return state


def _status_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://x/")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError("x", request=request, response=response)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError("x"), True),
        (httpx.ReadTimeout("x"), True),
        (_status_error(503), True),
        (_status_error(500), True),
        (_status_error(429), True),
        (_status_error(408), True),
        (_status_error(400), False),
        (_status_error(404), False),
        (_status_error(409), False),
        (ModelRegistryError("x", status=502), True),
        (ModelRegistryError("x", status=409), False),
        (ModelRegistryError("x"), False),
        (ValueError("x"), False),
    ],
)
def test_is_retryable(exc: BaseException, expected: bool) -> None:
    assert is_retryable(exc) is expected


def test_retry_after_seconds_date_and_cap() -> None:
    assert retry_after(_status_error(429, {"Retry-After": "7"})) == 7.0
    assert retry_after(_status_error(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}), now=1445412480.0) == 10.0
    assert retry_after(_status_error(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), now=1445412490.0) == 0.0
    assert retry_after(_status_error(503, {"Retry-After": "soon"})) is None
    assert retry_after(_status_error(503)) is None
    assert retry_after(httpx.ConnectError("x")) is None

    wait = WaitRetryAfter(wait_fixed(1.5), cap=30)
    assert wait(_state_with(_status_error(429, {"Retry-After": "4"}))) == 4.0
    assert wait(_state_with(_status_error(429, {"Retry-After": "3600"}))) == 30
    assert wait(_state_with(_status_error(503))) == 1.5


async def test_a_redirect_is_not_followed_so_the_token_stays_with_the_registry(client: ModelRegistryClient) -> None:
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{BASE}{PREFIX}/model_artifacts/7").mock(
            return_value=httpx.Response(307, headers={"Location": "http://elsewhere.test/steal"})
        )
        elsewhere = router.get("http://elsewhere.test/steal").mock(return_value=httpx.Response(200, json={}))
        with pytest.raises(ModelRegistryError, match=r"getting model artifact 7: 307"):
            await client.get_model_artifact("7")
    assert not elsewhere.called


async def test_an_answer_over_the_bound_is_refused_without_reading_it_all() -> None:
    """A 600 MiB answer took 1.9 GB; now anything over MAX_ANSWER is a one-line error."""
    from job.model_registry import api

    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        router.get(f"{PREFIX}/registered_models/1").respond(json={"id": "1", "pad": "x" * (api.MAX_ANSWER + 10)})
        async with ModelRegistryClient(BASE, token=None, retry_attempts=1) as c:
            with pytest.raises(ModelRegistryError, match="answer is over 16 MiB"):
                await c.get_registered_model("1")
