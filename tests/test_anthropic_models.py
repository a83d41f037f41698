"""``GET /v1/models`` for Anthropic's SDK: ``client.models.list()`` and ``.retrieve(id)`` of the
official ``anthropic`` SDK against a real ``batchd serve`` (a route with three aliases on the fake
upstream) get Anthropic's ``ModelInfo``, its pagination (``limit``, ``after_id``, ``before_id``)
and its error envelope, because the request carries ``anthropic-version``; a client without it
(OpenAI's SDK, Azure's prefixes) still gets OpenAI's shapes."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime

import anthropic
import httpx
import openai
import pytest

from tests.engine_support import MODEL, Served, served
from tests.test_anthropic_messages import ALIAS, KEY
from tests.test_anthropic_messages import client as anthropic_sdk

ALIASES = [ALIAS, "claude-sonnet-4-5", "claude-opus-4-1"]
#: The names in the order of OpenAI's list: the route, then its aliases.
NAMES = [MODEL, *ALIASES]
VERSION = {"anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("anthropic-models")
    keys = [{"key": KEY, "project": "a"}]
    with served(root, {"aliases": ALIASES}, {"latency_ms": 1}, api_keys=keys) as env:
        yield env


def openai_sdk(env: Served) -> openai.OpenAI:
    """OpenAI's SDK on the server, with the key."""
    return env.client.with_options(api_key=KEY)


def get(env: Served, path: str, **headers: str) -> httpx.Response:
    return httpx.get(env.server.base_url + path, headers={"x-api-key": KEY, **headers})


def test_the_sdk_lists_every_name_as_model_info(env: Served) -> None:
    openai_list = openai_sdk(env).models.list().data
    assert [m.id for m in openai_list] == NAMES  # the same names, in the same order
    with anthropic_sdk(env) as sdk:
        models = list(sdk.models.list())
    assert [m.id for m in models] == NAMES
    created = datetime.fromtimestamp(openai_list[0].created, UTC)
    for model in models:
        assert model.type == "model"
        assert model.lifecycle == "active"
        assert model.created_at == created
        assert model.deprecated_at is None
        assert model.retires_at is None
        assert model.capabilities is None
    assert models[0].display_name == MODEL
    assert models[1].display_name == f"{ALIAS} (alias of {MODEL})"
    answer = get(env, "/v1/models", **VERSION)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"data", "has_more", "first_id", "last_id"}
    assert (body["has_more"], body["first_id"], body["last_id"]) == (False, MODEL, NAMES[-1])
    info = body["data"][0]
    assert info["created_at"] == created.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert {"type", "id", "display_name", "created_at", "lifecycle"} <= set(info)
    assert answer.headers["request-id"] == answer.headers["x-request-id"]


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_the_sdk_pages_through_the_list(env: Served, limit: int) -> None:
    with anthropic_sdk(env) as sdk:
        first = sdk.models.list(limit=limit)
        pages = list(first.iter_pages())
        assert [m.id for m in sdk.models.list(limit=limit)] == NAMES  # auto-pagination
    assert len(pages) == math.ceil(len(NAMES) / limit)
    assert [len(page.data) for page in pages[:-1]] == [limit] * (len(pages) - 1)
    assert [page.has_more for page in pages] == [True] * (len(pages) - 1) + [False]
    for page in pages:
        assert (page.first_id, page.last_id) == (page.data[0].id, page.data[-1].id)


def test_before_id_pages_go_backwards(env: Served) -> None:
    with anthropic_sdk(env) as sdk:
        one = sdk.models.list(before_id=NAMES[-1], limit=1)
        assert [m.id for m in one.data] == [NAMES[-2]]
        assert one.has_more is True
        assert [m.id for m in one] == NAMES[-2::-1]  # one page at a time, backwards
        two = sdk.models.list(before_id=NAMES[-1], limit=2)
        assert [[m.id for m in page.data] for page in two.iter_pages()] == [NAMES[1:3], NAMES[:1]]
        first = sdk.models.list(before_id=NAMES[0])
        assert (first.data, first.has_more, first.first_id, first.last_id) == (
            [],
            False,
            None,
            None,
        )
        after = sdk.models.list(after_id=NAMES[1], limit=1)
        assert [m.id for m in after.data] == [NAMES[2]]
        assert after.has_more is True
        assert list(sdk.models.list(lifecycle=["retired"])) == []  # each model is active
        assert [m.id for m in sdk.models.list(lifecycle=["active", "deprecated"])] == NAMES


def test_the_sdk_retrieves_a_model_or_an_alias(env: Served) -> None:
    with anthropic_sdk(env) as sdk:
        alias = sdk.models.retrieve(ALIAS)
        route = sdk.models.retrieve(MODEL)
        with pytest.raises(anthropic.NotFoundError) as unknown:
            sdk.models.retrieve("claude-nowhere")
    assert (alias.id, alias.type, alias.lifecycle) == (ALIAS, "model", "active")
    assert alias.display_name == f"{ALIAS} (alias of {MODEL})"
    assert (route.id, route.display_name) == (MODEL, MODEL)
    body = unknown.value.body
    assert isinstance(body, dict)
    assert set(body) == {"type", "error", "request_id"}
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "claude-nowhere" in body["error"]["message"]
    assert ALIAS in body["error"]["message"]  # the served names are listed
    assert body["request_id"] == unknown.value.response.headers["request-id"]


def test_bad_requests_are_anthropic_s_400s(env: Served) -> None:
    bad_version = {"anthropic-version": "2023-6-1"}
    with anthropic_sdk(env) as sdk:
        with pytest.raises(anthropic.BadRequestError) as version:
            sdk.models.list(extra_headers=bad_version)
        assert "2023-6-1" in str(version.value)
        with pytest.raises(anthropic.BadRequestError):
            sdk.models.retrieve(ALIAS, extra_headers=bad_version)
        with pytest.raises(anthropic.BadRequestError) as limit:
            sdk.models.list(limit=1001)
        assert "limit" in str(limit.value)
        with pytest.raises(anthropic.BadRequestError) as cursor:
            sdk.models.list(after_id="claude-nowhere")
        assert "after_id" in str(cursor.value)
    with (
        anthropic_sdk(env, api_key="not-a-key") as wrong,
        pytest.raises(anthropic.AuthenticationError) as key,
    ):
        wrong.models.list()
    assert key.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_openai_clients_still_get_openai_s_shapes(env: Served) -> None:
    model = openai_sdk(env).models.retrieve(ALIAS)
    assert (model.id, model.object, model.owned_by) == (ALIAS, "model", "batchd")
    with pytest.raises(openai.NotFoundError) as unknown:
        openai_sdk(env).models.retrieve("claude-nowhere")
    assert unknown.value.code == "model_not_found"
    listed = get(env, "/v1/models")
    assert listed.json()["object"] == "list"
    assert "request-id" not in listed.headers
    # Azure's prefixes answer OpenAI's shapes, with or without anthropic-version
    for headers in ({}, VERSION):
        azure = get(env, "/openai/v1/models", **headers)
        assert azure.status_code == 200, azure.text
        assert azure.json() == listed.json()


def test_anthropic_version_brings_anthropic_s_envelope_on_any_path(env: Served) -> None:
    answer = get(env, "/v1/files/file-nowhere", **VERSION)
    assert answer.status_code == 404
    body = answer.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert body["request_id"] == answer.headers["request-id"] == answer.headers["x-request-id"]
    plain = get(env, "/v1/files/file-nowhere")
    assert plain.status_code == 404
    assert set(plain.json()) == {"error"}
    assert "request-id" not in plain.headers
