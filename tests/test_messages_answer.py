"""The answer side of Anthropic's Messages API over a chat-completions provider
(:mod:`batchd.providers.messages` and :mod:`batchd.providers.messages_stream`): a chat completion
as a Message (:func:`message_body`), an upstream error as a Messages error (:func:`error_body`),
and a streamed chat completion as Messages events (:func:`message_events`), cut anywhere,
broken, reset or cut short.

Every Message and stream event is parsed by the ``anthropic`` SDK's own types.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from anthropic.types import Message
from anthropic.types.shared import ErrorResponse

from batchd.providers.base import ProviderStreamError
from batchd.providers.messages import chat_body, error_body, message_body, message_events
from tests.messages_support import (
    FULL_USAGE,
    MODEL,
    TEXT_EVENTS,
    TEXT_STREAM,
    TOOL_STREAM,
    bytewise,
    call,
    call_delta,
    completion,
    delta,
    events,
    message_end,
    no_usage_start,
    sse,
    translate,
)

# -- the answer ---------------------------------------------------------------------------------


def test_a_text_answer_is_a_message() -> None:
    body = message_body(completion(), model=MODEL)
    assert body == {
        "id": "msg_abc123",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    message = Message.model_validate(body)
    assert message.content[0].type == "text"
    assert message.usage.input_tokens == 12


def test_tool_calls_become_tool_use_blocks_after_the_text() -> None:
    calls = [
        call("call_1", "weather", '{"city": "Paris"}'),
        call("toolu_2", "weather", '{"city": "Rome"}'),
        call("call_3", "noop", ""),
    ]
    body = message_body(completion("Checking.", finish="tool_calls", calls=calls), model=MODEL)
    assert body["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_call_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
        {"type": "tool_use", "id": "toolu_call_3", "name": "noop", "input": {}},
    ]
    assert body["stop_reason"] == "tool_use"
    Message.model_validate(body)


def test_a_call_without_id_gets_one_and_an_empty_text_gives_no_block() -> None:
    calls = [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = message_body(completion("", finish="tool_calls", calls=calls), model=MODEL)
    [block] = body["content"]
    assert block["type"] == "tool_use"
    assert block["id"].startswith("toolu_")
    assert len(block["id"]) == len("toolu_") + 24
    Message.model_validate(body)


def test_a_legacy_function_call_is_a_tool_use() -> None:
    chat = completion(None, finish="function_call")
    chat["choices"][0]["message"]["function_call"] = {"name": "f", "arguments": '{"a": 1}'}
    body = message_body(chat, model=MODEL)
    assert body["content"][0]["name"] == "f"
    assert body["content"][0]["input"] == {"a": 1}
    assert body["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "tools", "expected"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("function_call", True, "tool_use"),
        ("content_filter", False, "refusal"),
        (None, False, "end_turn"),
        ("abort", False, "end_turn"),
        ("stop", True, "tool_use"),  # some servers end tool calls with "stop"
        ("length", True, "max_tokens"),
    ],
)
def test_stop_reasons(finish: str | None, tools: bool, expected: str) -> None:
    calls = [call("c", "f", "{}")] if tools else None
    body = message_body(completion("x", finish=finish, calls=calls), model=MODEL)
    assert body["stop_reason"] == expected
    assert body["stop_sequence"] is None
    Message.model_validate(body)


def test_a_matched_stop_string_is_a_stop_sequence() -> None:
    body = message_body(completion("x", stop_reason="END"), model=MODEL)  # vLLM's field
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "END")
    token = message_body(completion("x", stop_reason=128001), model=MODEL)  # a stop token id
    assert (token["stop_reason"], token["stop_sequence"]) == ("end_turn", None)
    Message.model_validate(body)


def test_cached_prompt_tokens_are_read_from_the_cache() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    body = message_body(completion(usage=usage), model=MODEL)
    assert body["usage"] == {
        "input_tokens": 36,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 64,
    }
    chat = completion()
    del chat["usage"]
    assert message_body(chat, model=MODEL)["usage"]["input_tokens"] == 0


def test_ids_come_from_the_chat_id_or_are_random() -> None:
    assert message_body({**completion(), "id": "cmpl-9"}, model=MODEL)["id"] == "msg_cmpl-9"
    chat = completion()
    del chat["id"]
    first, second = (message_body(chat, model=MODEL)["id"] for _ in range(2))
    assert first.startswith("msg_")
    assert len(first) == 28
    assert first != second


def test_text_parts_and_refusals_are_text() -> None:
    chat = completion()
    chat["choices"][0]["message"]["content"] = [
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]
    assert message_body(chat, model=MODEL)["content"] == [{"type": "text", "text": "ab"}]
    chat["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "I can't."}
    chat["choices"][0]["finish_reason"] = "content_filter"
    body = message_body(chat, model=MODEL)
    assert body["content"] == [{"type": "text", "text": "I can't."}]
    assert body["stop_reason"] == "refusal"


@pytest.mark.parametrize(
    ("chat", "words"),
    [
        ({}, "no choices"),
        ([], "no choices"),
        ({"choices": []}, "no choices"),
        ({"choices": [1]}, "no choices"),
        ({"choices": [{"index": 0}]}, "no message"),
        ({"choices": [{"message": {"content": 5}}]}, "not a string"),
        ({"choices": [{"message": {"tool_calls": {}}}]}, "not an array"),
        (completion(calls=[call("c", "f", "{not json")]), "not a JSON object"),
        (completion(calls=[call("c", "f", "[1, 2]")]), "not a JSON object"),
        (completion(calls=[{"id": "c", "function": {"arguments": "{}"}}]), "no function name"),
        (completion(calls=["c"]), "no function name"),
    ],
)
def test_a_body_that_is_not_a_chat_completion_is_a_value_error(chat: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        message_body(chat, model=MODEL)


def test_a_tool_round_trip_gives_the_upstream_its_own_ids() -> None:
    answer = message_body(
        completion(None, finish="tool_calls", calls=[call("call_9", "f", '{"x": 1}')]),
        model=MODEL,
    )
    sent: Any = Message.model_validate(answer).to_param()
    tool_use = answer["content"][0]
    follow_up = {
        "model": MODEL,
        "max_tokens": 16,
        "messages": [
            {"role": "user", "content": "go"},
            {"role": sent["role"], "content": [block.model_dump() for block in sent["content"]]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "2"}],
            },
        ],
    }
    # model_dump adds the SDK's optional fields (caller, toolset_name) as null
    assert chat_body(follow_up)["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [call("call_9", "f", '{"x":1}')]},
        {"role": "tool", "tool_call_id": "call_9", "content": "2"},
    ]


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (408, "timeout_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        (200, "api_error"),
        (None, "api_error"),
    ],
)
def test_error_types_follow_the_status(status: int | None, kind: str) -> None:
    body = {"error": {"message": "upstream says no", "type": "x", "param": None, "code": None}}
    envelope = error_body(status, body, "batchd's own words")
    assert envelope == {"type": "error", "error": {"type": kind, "message": "upstream says no"}}
    if kind != "request_too_large":  # documented by Anthropic, missing from the SDK's union
        ErrorResponse.model_validate(envelope)


@pytest.mark.parametrize(
    ("status", "body", "message", "expected"),
    [
        (None, None, "the upstream did not answer within 30s", ("timeout_error", None)),
        (None, None, "Read timed out", ("timeout_error", None)),
        (None, None, "connection refused", ("api_error", None)),
        (400, {"error": "bad prompt"}, None, ("invalid_request_error", "bad prompt")),
        (500, {"detail": "boom"}, None, ("api_error", "boom")),
        (500, {"message": "crash"}, "ours", ("api_error", "crash")),
        (500, {"error": {"code": 1}}, "ours", ("api_error", "ours")),
        (502, "<html>", None, ("api_error", "the upstream answered HTTP 502")),
        (None, None, None, ("api_error", "the upstream failed")),
    ],
)
def test_error_messages(
    status: int | None, body: Any, message: str | None, expected: tuple[str, str | None]
) -> None:
    kind, text = expected
    envelope = error_body(status, body, message)
    assert envelope["error"] == {"type": kind, "message": text or message}


# -- the stream ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_text_stream() -> None:
    assert events(await translate([TEXT_STREAM])) == TEXT_EVENTS


@pytest.mark.anyio
@pytest.mark.parametrize(
    "split",
    [
        pytest.param(bytewise, id="byte by byte"),
        pytest.param(lambda raw: bytewise(raw.replace(b"\n", b"\r\n")), id="CRLF byte by byte"),
        pytest.param(lambda raw: [raw.replace(b"\n", b"\r\n")], id="CRLF whole"),
        pytest.param(lambda raw: [raw.replace(b"\n", b"\r")], id="CR"),
        pytest.param(lambda raw: [raw[:7], raw[7:60], raw[60:61], raw[61:]], id="odd cuts"),
    ],
)
async def test_a_stream_split_anywhere_reads_the_same(
    split: Callable[[bytes], list[bytes]],
) -> None:
    assert events(await translate(split(TEXT_STREAM))) == TEXT_EVENTS


@pytest.mark.anyio
@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
async def test_an_event_over_several_data_lines_is_one_event(end: bytes) -> None:
    first, second = json.dumps(delta("Hel")), json.dumps(delta("lo"))
    cut = first.index('"choices"')
    raw = b"data: " + first[:cut].encode() + end + b"data: " + first[cut:].encode() + end + end
    raw += (b"data: " + second.encode() + end + end).replace(b"\n", end)
    raw += TEXT_STREAM.split(b"\n\n", 3)[3].replace(b"\n", end)  # finish, usage, [DONE]
    assert events(await translate(bytewise(raw))) == TEXT_EVENTS


@pytest.mark.anyio
async def test_comments_and_other_fields_are_skipped() -> None:
    raw = b": keep-alive\n\nid: 1\nretry: 10\n" + TEXT_STREAM
    assert events(await translate([raw])) == TEXT_EVENTS


@pytest.mark.anyio
async def test_tool_calls_stream_as_tool_use_blocks() -> None:
    found = events(await translate(bytewise(TOOL_STREAM)))
    tool_a = {"type": "tool_use", "id": "toolu_call_a", "name": "weather", "input": {}}
    tool_b = {**tool_a, "id": "toolu_call_b"}

    def json_delta(index: int, text: str) -> dict[str, Any]:
        return {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": text},
        }

    assert found == [
        no_usage_start(),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Let me check."},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": tool_a},
        json_delta(1, '{"city": '),
        json_delta(1, '"Paris"}'),
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": tool_b},
        json_delta(2, '{"city": "Rome"}'),
        {"type": "content_block_stop", "index": 2},
        *message_end("tool_use", FULL_USAGE),
    ]


@pytest.mark.anyio
async def test_arguments_before_the_name_wait_for_it() -> None:
    raw = sse(
        delta(calls=[call_delta(0, '{"a"', "call_a")]),
        delta(calls=[call_delta(0, ": 1}", name="f")]),
        delta(calls=[call_delta(1, "{}", "call_b")]),  # its name never comes
        delta(finish="stop"),
        b"[DONE]",
    )
    found = events(await translate([raw]))
    starts = [e["content_block"] for e in found if e["type"] == "content_block_start"]
    assert starts == [
        {"type": "tool_use", "id": "toolu_call_a", "name": "f", "input": {}},
        {"type": "tool_use", "id": "toolu_call_b", "name": "", "input": {}},
    ]
    partial = [e["delta"]["partial_json"] for e in found if e["type"] == "content_block_delta"]
    assert partial == ['{"a": 1}', "{}"]
    assert found[-2]["delta"]["stop_reason"] == "tool_use"
    assert found[-2]["usage"] == {"output_tokens": 0}


@pytest.mark.anyio
async def test_usage_on_the_first_chunk_is_in_message_start() -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 10},
    }
    final = {
        "prompt_tokens": 30,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 10},
    }
    raw = sse(delta("a", usage=usage), delta("b", finish="length", usage=final), b"[DONE]")
    found = events(await translate([raw]))
    assert found[0]["message"]["usage"] == {
        "input_tokens": 20,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 10,
    }
    assert (
        found[-2]
        == message_end(
            "max_tokens",
            {
                "input_tokens": 20,
                "output_tokens": 2,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 10,
            },
        )[0]
    )


@pytest.mark.anyio
async def test_a_matched_stop_string_ends_with_stop_sequence() -> None:
    raw = sse(delta("x"), delta(finish="stop", stop_reason="###"), b"[DONE]")
    found = events(await translate([raw]))
    assert found[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "###"}


@pytest.mark.anyio
async def test_text_after_a_tool_call_opens_a_new_block() -> None:
    raw = sse(
        delta(calls=[call_delta(0, "{}", "c", "f")]),
        delta("and then"),
        delta(finish="tool_calls"),
        b"[DONE]",
    )
    found = events(await translate([raw]))
    kinds = [(e["type"], e.get("index")) for e in found]
    assert kinds == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None),
        ("message_stop", None),
    ]


@pytest.mark.anyio
async def test_an_upstream_error_event_ends_the_stream() -> None:
    error = {"error": {"message": "Too many requests", "type": "rate_limit", "code": 429}}
    raw = sse(delta("par"), error, delta("ignored"), b"[DONE]")
    found = events(await translate(bytewise(raw)))
    assert found[1:] == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "par"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "error", "error": {"type": "rate_limit_error", "message": "Too many requests"}},
    ]


@pytest.mark.anyio
async def test_llama_cpp_error_lines_and_error_events_are_errors() -> None:
    body = json.dumps({"error": {"code": 500, "message": "context full", "type": "server_error"}})
    for raw in (
        b"error: " + body.encode() + b"\n\n",
        b"event: error\ndata: " + body.encode() + b"\n\n",
    ):
        found = events(await translate([raw]))
        assert found == [
            {"type": "error", "error": {"type": "api_error", "message": "context full"}}
        ]


@pytest.mark.anyio
async def test_a_broken_upstream_is_an_error_event() -> None:
    partial = sse(delta("Hel"))
    found = events(
        await translate([partial], fail=ProviderStreamError("the upstream sent nothing for 30s"))
    )
    assert found[-2:] == [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "error",
            "error": {
                "type": "timeout_error",
                "message": "the upstream stream broke: the upstream sent nothing for 30s",
            },
        },
    ]


@pytest.mark.anyio
async def test_a_reset_upstream_is_an_api_error_event() -> None:
    broke = ProviderStreamError("the upstream connection broke: connection reset")
    found = events(await translate([], fail=broke))
    assert found == [
        {
            "type": "error",
            "error": {
                "type": "api_error",
                "message": "the upstream stream broke: the upstream connection broke: "
                "connection reset",
            },
        }
    ]


@pytest.mark.anyio
async def test_a_cut_stream_is_an_error_but_a_finished_one_needs_no_done() -> None:
    found = events(await translate([sse(delta("Hel"))]))
    assert found[-1] == {
        "type": "error",
        "error": {
            "type": "api_error",
            "message": "the upstream stream ended before its answer did",
        },
    }
    assert "message_stop" not in [e["type"] for e in found]
    finished = events(await translate([sse(delta("Hel"), delta(finish="stop"))]))
    assert finished[-1] == {"type": "message_stop"}
    assert events(await translate([])) == [found[-1]]


@pytest.mark.anyio
async def test_an_event_not_json_is_an_error() -> None:
    found = events(await translate([b"data: {oops\n\n"]))
    assert found == [
        {
            "type": "error",
            "error": {"type": "api_error", "message": "the upstream sent an event not JSON: {oops"},
        }
    ]


@pytest.mark.anyio
async def test_done_alone_is_an_empty_message() -> None:
    found = events(await translate([b"data: [DONE]\n\n"]))
    assert [e["type"] for e in found] == ["message_start", "message_delta", "message_stop"]
    assert found[0]["message"]["id"].startswith("msg_")


@pytest.mark.anyio
async def test_nothing_is_read_after_done_and_the_upstream_is_closed() -> None:
    read: list[bytes] = []
    closed: list[bool] = []

    async def upstream() -> AsyncIterator[bytes]:
        try:
            for chunk in (sse(delta("a"), b"[DONE]"), b"data: never\n\n", b"x"):
                read.append(chunk)
                yield chunk
        finally:
            closed.append(True)

    out = [chunk async for chunk in message_events(upstream(), model=MODEL)]
    assert len(read) == 1
    assert closed == [True]
    assert events(b"".join(out))[-1] == {"type": "message_stop"}
