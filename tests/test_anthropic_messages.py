"""``POST /v1/messages`` end to end: the official ``anthropic`` SDK against a real ``batchd
serve`` whose route (an alias ``claude-haiku-4-5`` of an ``openai`` route on the fake upstream)
translates Messages to chat completions: whole and streamed answers, the request the upstream
received, Anthropic's error classes for a missing key, an unknown model, a parameter that cannot
be translated, an upstream failure, and Anthropic's envelope without ``anthropic-version``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from batchd.providers.messages import chat_body
from tests.engine_support import MODEL, Served, served, upstream_attempts
from tests.upstream import answers

KEY = "key-of-the-anthropic-tests-0123456789"
ALIAS = "claude-haiku-4-5"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("anthropic")
    keys = [{"key": KEY, "project": "a"}]
    with served(root, {"aliases": [ALIAS]}, {"latency_ms": 1}, api_keys=keys) as env:
        yield env


@contextlib.contextmanager
def client(env: Served, **options: Any) -> Iterator[anthropic.Anthropic]:
    """The SDK on the server (closed on the way out: its connections too)."""
    options.setdefault("api_key", KEY)
    with anthropic.Anthropic(base_url=env.server.base_url, max_retries=0, **options) as sdk:
        yield sdk


def upstream_text(params: dict[str, Any]) -> str:
    """What the fake upstream answers the chat request that ``params`` translate to."""
    sent = {**chat_body(params), "model": MODEL}  # the route's name, not the alias
    text: str = answers.chat_completion(sent)["choices"][0]["message"]["content"]
    return text


def params_of(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": ALIAS,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def test_a_message_is_answered_through_the_chat_route(env: Served) -> None:
    env.upstream.reset()
    params = params_of("Name three rivers.", system="Be brief.", stop_sequences=["\n\n"])
    # the SDK has no temperature argument any more; the API still takes it
    with client(env) as sdk:
        message = sdk.messages.create(**params, extra_body={"temperature": 0})
    params["temperature"] = 0
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == upstream_text(params)  # type: ignore[union-attr]
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    sent = {**chat_body(params), "model": MODEL}
    assert upstream_attempts(env.upstream, [sent]) == [1]


def test_a_streamed_message_has_the_same_text(env: Served) -> None:
    params = params_of("Stream me a sentence.")
    with client(env) as sdk, sdk.messages.stream(**params) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == upstream_text(params)
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_the_key_may_come_in_x_api_key(env: Served) -> None:
    """The SDK sends ``Authorization: Bearer``; Anthropic's own curl examples ``x-api-key``."""
    answer = httpx.post(
        env.server.base_url + "/v1/messages",
        json=params_of("By x-api-key."),
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["type"] == "message"
    assert answer.headers["request-id"] == answer.headers["x-request-id"]


def test_errors_come_in_anthropic_s_classes_and_envelope(env: Served) -> None:
    with (
        client(env, api_key="not-a-key") as wrong,
        pytest.raises(anthropic.AuthenticationError) as e,
    ):
        wrong.messages.create(**params_of("x"))
    assert e.value.body["type"] == "error"  # type: ignore[index]
    assert e.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with client(env) as sdk:
        with pytest.raises(anthropic.NotFoundError) as unknown:
            sdk.messages.create(**{**params_of("x"), "model": "claude-nowhere"})
        assert "claude-nowhere" in str(unknown.value)
        assert ALIAS in str(unknown.value)  # the served names are listed
        no_max_tokens = {k: v for k, v in params_of("x").items() if k != "max_tokens"}
        with pytest.raises(anthropic.BadRequestError) as missing:  # (create() checks it too)
            sdk.post("/v1/messages", body=no_max_tokens, cast_to=anthropic.types.Message)
        assert "max_tokens" in str(missing.value)
        with pytest.raises(anthropic.BadRequestError) as thinking:
            sdk.messages.create(
                **params_of("x"), thinking={"type": "enabled", "budget_tokens": 1024}
            )
        assert "thinking" in str(thinking.value)
        with pytest.raises(anthropic.InternalServerError) as failed:
            sdk.messages.create(**params_of("FAULT:500 this one fails"))
        assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_anthropic_version_is_required(env: Served) -> None:
    url = env.server.base_url + "/v1/messages"
    answer = httpx.post(url, json=params_of("x"), headers={"x-api-key": KEY})
    assert answer.status_code == 400
    body = answer.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in body["error"]["message"]
    assert body["request_id"] == answer.headers["request-id"] == answer.headers["x-request-id"]
    unknown = httpx.post(
        url, json=params_of("x"), headers={"x-api-key": KEY, "anthropic-version": "2023-6-1"}
    )
    assert unknown.status_code == 400
    assert "2023-6-1" in unknown.json()["error"]["message"]
