"""Anthropic's Messages API served over a chat-completions provider: the ``anthropic`` SDK
reading our answers, and :class:`MessagesBridge` and :func:`messages_provider` over a fake
provider (batches, one request forwarded, streams, errors and refusals as results).

The SDK's client reads the answers through an ``httpx2.MockTransport`` (its streaming
accumulator builds the final Message from our events).
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import Message

from batchd.providers.base import ProviderOptions, ProviderRequest, ProviderResult, ProviderStream
from batchd.providers.messages import (
    CHAT,
    MESSAGES,
    MessagesBridge,
    MessagesParamError,
    chat_body,
    error_body,
    message_body,
    messages_provider,
)
from tests.messages_support import (
    FULL_USAGE,
    MODEL,
    TEXT_EVENTS,
    TEXT_STREAM,
    TOOL_STREAM,
    Embeddings,
    FakeChat,
    FakeStream,
    Served,
    bytewise,
    call,
    completion,
    delta,
    events,
    http_error,
    params,
    request,
    sse,
    translate,
)

# -- the SDK reads what we send -----------------------------------------------------------------


def sdk_client(status: int, content: bytes, content_type: str) -> anthropic.Anthropic:
    def answer(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/messages"
        return httpx2.Response(status, content=content, headers={"content-type": content_type})

    return anthropic.Anthropic(
        api_key="test-key",
        base_url="http://batchd.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )


def test_the_sdk_reads_a_message() -> None:
    chat = completion("Sure.", finish="tool_calls", calls=[call("call_1", "f", '{"q": "x"}')])
    body = json.dumps(message_body(chat, model=MODEL)).encode()
    with sdk_client(200, body, "application/json") as client:
        message = client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "q"}]
        )
    assert message.id == "msg_abc123"
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"q": "x"}  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_the_sdk_accumulates_a_streamed_message() -> None:
    raw = await translate(bytewise(TOOL_STREAM))
    with (
        sdk_client(200, raw, "text/event-stream") as client,
        client.messages.stream(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "q"}]
        ) as stream,
    ):
        message = stream.get_final_message()
    assert message.model_dump(exclude_none=True) == {
        "id": "msg_s1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "toolu_call_a",
                "name": "weather",
                "input": {"city": "Paris"},
            },
            {
                "type": "tool_use",
                "id": "toolu_call_b",
                "name": "weather",
                "input": {"city": "Rome"},
            },
        ],
        "stop_reason": "tool_use",
        "usage": FULL_USAGE,
    }


@pytest.mark.anyio
async def test_the_sdk_raises_a_streamed_error() -> None:
    error = {"error": {"message": "overloaded", "code": 503}}
    raw = await translate([sse(delta("a"), error)])
    with (
        sdk_client(200, raw, "text/event-stream") as client,
        client.messages.stream(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "q"}]
        ) as stream,
        pytest.raises(anthropic.APIStatusError) as caught,
    ):
        stream.get_final_message()
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "overloaded"},
    }


def test_the_sdk_raises_an_error_answer() -> None:
    body = json.dumps(error_body(429, {"error": {"message": "slow down"}})).encode()
    with (
        sdk_client(429, body, "application/json") as client,
        pytest.raises(anthropic.RateLimitError) as caught,
    ):
        client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "q"}]
        )
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


# -- the bridge ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_execute_translates_requests_and_answers_in_order() -> None:
    provider = FakeChat()
    bridge = MessagesBridge(provider)
    group = [
        request(10, params("one")),
        request(11, params("two", thinking={"type": "enabled", "budget_tokens": 2000})),
        request(12, {**params("three"), "model": "alias"}),
    ]
    results = await bridge.execute(group)
    [sent] = provider.groups
    assert [(r.index, r.custom_id, r.endpoint) for r in sent] == [
        (10, "req-10", CHAT),
        (12, "req-12", CHAT),
    ]
    assert sent[0].body == chat_body(params("one"))
    assert [r.index for r in results] == [10, 11, 12]
    first, second, third = results
    assert (first.ok, first.status_code, first.request_id) == (True, 200, "req-1")
    # the model that answered (the chat answer's), never the name or alias the request used
    assert first.body == message_body(completion("echo one"), model="upstream-model")
    Message.model_validate(first.body)
    assert Message.model_validate(third.body).model == "upstream-model"
    assert not second.ok
    assert (second.error_code, second.status_code, second.retryable) == (
        "invalid_request_error",
        400,
        False,
    )
    assert str(second.error_message).startswith("'thinking' ")
    assert second.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": second.error_message},
    }


@pytest.mark.anyio
async def test_execute_sends_nothing_when_nothing_translates() -> None:
    provider = FakeChat()
    results = await MessagesBridge(provider).execute(
        [request(0, {"model": MODEL}), request(1, params(stream=True))]
    )
    assert provider.groups == []
    assert [r.status_code for r in results] == [400, 400]
    assert (
        results[0].error_message == "'max_tokens' is required: the most tokens the answer may have."
    )
    assert "'stream' must be false" in str(results[1].error_message)


@pytest.mark.anyio
async def test_error_answers_keep_their_status_and_retry_but_speak_anthropic() -> None:
    provider = FakeChat(
        {"slow": http_error(429, "Rate limit reached", 2.5), "bad": http_error(400, "too long")}
    )
    slow, bad = await MessagesBridge(provider).execute(
        [request(0, params("slow")), request(1, params("bad"))]
    )
    assert (
        slow.status_code,
        slow.retryable,
        slow.retry_after,
        slow.error_code,
        slow.request_id,
    ) == (
        429,
        True,
        2.5,
        "upstream_code",
        "req-err",
    )
    assert slow.error_message == "Rate limit reached"
    assert slow.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached"},
    }
    assert (bad.status_code, bad.retryable) == (400, False)
    assert bad.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "too long"},
    }


@pytest.mark.anyio
async def test_no_answer_passes_unchanged() -> None:
    timeout = ProviderResult.failure(
        3, "request_timeout", "the upstream did not answer within 5s", retryable=True
    )
    provider = FakeChat({"wait": lambda index: timeout})
    [result] = await MessagesBridge(provider).execute([request(3, params("wait"))])
    assert result is timeout


@pytest.mark.anyio
@pytest.mark.parametrize("body", [{"object": "list", "data": []}, ["not", "a", "completion"], None])
async def test_an_unreadable_2xx_is_a_retryable_invalid_upstream_response(body: Any) -> None:
    provider = FakeChat({"odd": lambda index: ProviderResult.success(index, 200, body, "req-odd")})
    [result] = await MessagesBridge(provider).execute([request(0, params("odd"))])
    assert (result.error_code, result.retryable, result.status_code, result.request_id) == (
        "invalid_upstream_response",
        True,
        200,
        "req-odd",
    )
    assert result.error_message == (
        "the upstream answered HTTP 200 with a body that is not a chat completion (no choices)"
    )
    assert result.body is None


@pytest.mark.anyio
async def test_forward_translates_one_request() -> None:
    provider = FakeChat()
    bridge = MessagesBridge(provider)
    result = await bridge.forward(MESSAGES, params("hello", system="sys"))
    assert provider.forwarded == [(CHAT, chat_body(params("hello", system="sys")))]
    assert result.ok
    assert result.body == message_body(completion("echo hello"), model="upstream-model")
    refused_result = await bridge.forward(MESSAGES, params(max_tokens=0))
    assert refused_result.status_code == 400
    assert len(provider.forwarded) == 1


@pytest.mark.anyio
async def test_stream_wraps_the_provider_stream() -> None:
    provider = FakeChat()
    inner = FakeStream(bytewise(TEXT_STREAM))
    provider.started = inner
    started = await MessagesBridge(provider).stream(MESSAGES, params("hi"))
    assert isinstance(started, ProviderStream)
    assert (started.status_code, started.content_type, started.request_id) == (
        200,
        "text/event-stream",
        "req-stream",
    )
    [(endpoint, body)] = provider.streamed
    assert endpoint == CHAT
    assert body == {
        **chat_body(params("hi")),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    [start, *rest] = events(b"".join([chunk async for chunk in started.chunks()]))
    assert start["message"]["model"] == "route-model"  # the route that answers, not the alias
    assert [{**start, "message": {**start["message"], "model": MODEL}}, *rest] == TEXT_EVENTS
    await started.aclose()
    assert inner.closed == 1


@pytest.mark.anyio
async def test_stream_errors_and_refusals_are_results() -> None:
    provider = FakeChat()
    provider.started = http_error(503, "loading model")(0)
    bridge = MessagesBridge(provider)
    result = await bridge.stream(MESSAGES, params(stream=True))
    assert isinstance(result, ProviderResult)
    assert (result.status_code, result.retryable) == (503, True)
    assert result.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "loading model"},
    }
    refusal = await bridge.stream(MESSAGES, params(stream=True, container="c"))
    assert isinstance(refusal, ProviderResult)
    assert refusal.status_code == 400
    assert len(provider.streamed) == 1


@pytest.mark.anyio
async def test_another_endpoint_is_not_served_by_the_bridge() -> None:
    provider = FakeChat()
    bridge = MessagesBridge(provider)
    other = ProviderRequest(1, "req-1", CHAT, params())
    fine, wrong = await bridge.execute([request(0, params("ok")), other])
    [sent] = provider.groups
    assert [r.index for r in sent] == [0]
    assert fine.ok
    assert (wrong.index, wrong.error_code, wrong.retryable, wrong.status_code) == (
        1,
        "unsupported_endpoint",
        False,
        None,
    )
    assert wrong.error_message == (
        "the Messages bridge of model 'route-model' serves /v1/messages, not /v1/chat/completions"
    )
    forwarded = await bridge.forward(CHAT, params())
    streamed = await bridge.stream("/v1/completions", params())
    assert isinstance(streamed, ProviderResult)
    assert (forwarded.error_code, streamed.error_code) == ("unsupported_endpoint",) * 2
    assert (provider.forwarded, provider.streamed) == ([], [])


def test_the_bridge_shows_the_provider() -> None:
    provider = FakeChat()
    bridge = MessagesBridge(provider)
    assert (bridge.model, bridge.name, bridge.streaming) == ("route-model", "fake", True)
    assert bridge.provider is provider
    assert bridge.endpoints == frozenset({MESSAGES})


def test_messages_provider_picks_the_provider_or_a_bridge() -> None:
    native = Served("native-model", ProviderOptions())
    assert messages_provider(native) is native
    chat = FakeChat()
    bridge = messages_provider(chat)
    assert isinstance(bridge, MessagesBridge)
    assert bridge.provider is chat
    with pytest.raises(MessagesParamError) as caught:
        messages_provider(Embeddings("vectors-model", ProviderOptions()))
    assert caught.value.message == (
        "The model 'vectors-model' (provider 'vectors') serves neither /v1/messages nor "
        "/v1/chat/completions (which Messages requests are translated to); it serves: "
        "/v1/embeddings."
    )
