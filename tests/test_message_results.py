"""Anthropic's Message Batches results out of batchd's output and error files
(:mod:`batchd.service.message_results`): each kind of line (a Message, an Anthropic error body,
OpenAI's envelope, odd bodies, each non-HTTP code, cancelled and expired requests), a file
streamed in chunks split anywhere, and the ``errored`` line of a request that never ran.

Every produced line is parsed by the ``anthropic`` SDK's own ``MessageBatchIndividualResponse``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types.messages import (
    MessageBatchCanceledResult,
    MessageBatchErroredResult,
    MessageBatchExpiredResult,
    MessageBatchIndividualResponse,
    MessageBatchSucceededResult,
)

from batchd.engine.finalize import CANCELLED, EXPIRED
from batchd.engine.journal import JournalEntry
from batchd.service.message_results import ResultLines, errored_line, result_line

MESSAGE: dict[str, Any] = {
    "id": "msg_01abc",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [
        {"type": "text", "text": 'Hello — a réponse with "quotes" and\nnewlines.'},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x", "n": 2}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "output_tokens": 34,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 5,
    },
}


def answered(custom_id: str, status: int, body: Any, request_id: str = "req_up1") -> bytes:
    """A line of the output file (2xx) or of the error file, as batchd writes it."""
    return JournalEntry.from_response(0, custom_id, status, request_id, body).output_line()


def unanswered(custom_id: str, code: str, message: str) -> bytes:
    return JournalEntry.from_error(0, custom_id, code, message).output_line()


def parsed(line: bytes) -> MessageBatchIndividualResponse:
    """``line`` (one result, ending in a newline) read by the SDK."""
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    return MessageBatchIndividualResponse.model_validate(orjson.loads(line))


def errored(line: bytes, custom_id: str = "r1") -> tuple[str, str, str | None]:
    """The ``(type, message, request_id)`` of an ``errored`` result line."""
    response = parsed(line)
    assert response.custom_id == custom_id
    result = response.result
    assert isinstance(result, MessageBatchErroredResult)
    assert result.error.type == "error"
    return result.error.error.type, result.error.error.message, result.error.request_id


# -- one line -----------------------------------------------------------------------------------


def test_success_is_the_message() -> None:
    line = answered("r1", 200, MESSAGE)
    out = result_line(line)
    response = parsed(out)
    assert response.custom_id == "r1"
    assert isinstance(response.result, MessageBatchSucceededResult)
    message = response.result.message
    assert message.id == "msg_01abc"
    assert message.content[0].type == "text"
    assert message.content[0].text == MESSAGE["content"][0]["text"]
    assert message.content[1].type == "tool_use"
    assert message.content[1].input == {"q": "x", "n": 2}
    assert message.stop_reason == "tool_use"
    assert message.usage.cache_read_input_tokens == 5
    assert orjson.loads(out)["result"]["message"] == MESSAGE  # nothing added or lost
    assert result_line(line.rstrip(b"\n")) == out  # with or without its newline


def test_success_ignores_headers_and_other_2xx() -> None:
    record = orjson.loads(answered("r1", 201, MESSAGE))
    record["response"]["headers"] = {"x-batchd-cache": "hit", "age": "12"}
    response = parsed(result_line(orjson.dumps(record)))
    assert isinstance(response.result, MessageBatchSucceededResult)
    assert response.result.message.id == "msg_01abc"


@pytest.mark.parametrize(
    "body", [{"choices": []}, "ok", None, [MESSAGE], {"type": "error"}], ids=repr
)
def test_a_2xx_without_a_message_is_an_api_error(body: Any) -> None:
    kind, message, request_id = errored(result_line(answered("r1", 200, body)))
    assert kind == "api_error"
    assert message.startswith("The upstream answered HTTP 200 with a body that is not a Message: ")
    assert repr(body)[:50] in message
    assert request_id == "req_up1"


def test_anthropic_error_body_with_its_request_id_is_kept() -> None:
    body = {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_anthropic",
    }
    out = result_line(answered("r1", 529, body, request_id="req_batchd"))
    assert errored(out) == ("overloaded_error", "Overloaded", "req_anthropic")
    assert orjson.loads(out)["result"]["error"] == body


@pytest.mark.parametrize("present", [False, True])
def test_anthropic_error_body_gets_the_response_request_id(present: bool) -> None:
    body: dict[str, Any] = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    if present:
        body["request_id"] = None
    out = result_line(answered("r1", 400, body, request_id="req_up9"))
    assert errored(out) == ("invalid_request_error", "max_tokens: Field required", "req_up9")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_openai_envelope_is_typed_by_its_status(status: int, kind: str) -> None:
    body = {"error": {"message": f"failed {status}", "type": "x", "param": None, "code": None}}
    out = result_line(answered("r1", status, body))
    assert errored(out) == (kind, f"failed {status}", "req_up1")


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"error": "bare error string"}, "bare error string"),
        ({"message": "a message"}, "a message"),
        ({"detail": "Not Found"}, "Not Found"),
    ],
)
def test_other_error_messages_are_read(body: Any, text: str) -> None:
    assert errored(result_line(answered("r1", 404, body))) == ("not_found_error", text, "req_up1")


@pytest.mark.parametrize(
    "body",
    [
        "<html><body>502 Bad Gateway</body></html>",
        None,
        {"foo": 1},
        {"error": {"code": 7}},
        {"detail": [{"loc": ["body"], "msg": "field required"}]},
        [1, 2, 3],
        12.5,
        "",
    ],
    ids=repr,
)
def test_odd_bodies_say_what_the_upstream_answered(body: Any) -> None:
    kind, message, request_id = errored(result_line(answered("r1", 502, body)))
    assert kind == "api_error"
    assert message == f"The upstream answered HTTP 502: {body!r}"
    assert request_id == "req_up1"


def test_an_odd_body_is_typed_by_its_status_and_cut_short() -> None:
    body = "Too Many Requests " * 100
    kind, message, _ = errored(result_line(answered("r1", 429, body)))
    assert kind == "rate_limit_error"
    assert message.startswith("The upstream answered HTTP 429: 'Too Many Requests Too")
    assert message.endswith("…")
    assert len(message) < 250


def test_request_too_large_keeps_anthropic_type() -> None:
    # Anthropic's own type for 413; the SDK's ErrorObject union may not list it, so read raw.
    body = {"error": {"message": "too big", "type": "x", "param": None, "code": None}}
    out = orjson.loads(result_line(answered("r1", 413, body)))
    assert out["result"]["error"]["error"] == {"type": "request_too_large", "message": "too big"}


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("request_timeout", "timeout_error"),
        ("connection_error", "api_error"),
        ("invalid_upstream_response", "api_error"),
        ("server_error", "api_error"),
        ("provider_closed", "api_error"),
        ("model_not_found", "not_found_error"),
        ("unsupported_endpoint", "invalid_request_error"),
        ("invalid_request", "invalid_request_error"),
        ("invalid_request_error", "invalid_request_error"),
        ("rate_limit_error", "rate_limit_error"),
        ("upstream_http_529", "overloaded_error"),
        ("upstream_http_418", "invalid_request_error"),
        ("error", "api_error"),
        ("something_new", "api_error"),
    ],
)
def test_non_http_errors_keep_batchd_message(code: str, kind: str) -> None:
    out = result_line(unanswered("r1", code, "what went wrong"))
    assert errored(out) == (kind, f"{code}: what went wrong", None)


def test_cancelled_and_expired_requests() -> None:
    cancelled = parsed(result_line(unanswered("c", *CANCELLED)))
    assert cancelled.custom_id == "c"
    assert isinstance(cancelled.result, MessageBatchCanceledResult)
    expired = parsed(result_line(unanswered("e", *EXPIRED)))
    assert expired.custom_id == "e"
    assert isinstance(expired.result, MessageBatchExpiredResult)
    assert orjson.loads(result_line(unanswered("e", *EXPIRED))) == {
        "custom_id": "e",
        "result": {"type": "expired"},
    }


@pytest.mark.parametrize(
    ("record", "text"),
    [
        ({"id": "batch_req_1", "response": None, "error": None}, "batchd recorded neither"),
        ({"custom_id": "r1", "error": {"message": "no code"}}, "error: no code"),
        ({"custom_id": "r1", "error": {"code": "request_timeout"}}, "request_timeout"),
        ({"custom_id": "r1", "response": {"status_code": "200"}}, "without a status"),
        ({"custom_id": "r1", "response": {"status_code": True}}, "without a status"),
        ({"custom_id": 7, "response": {"status_code": 500}}, "HTTP 500: None"),
    ],
)
def test_odd_records_do_not_raise(record: dict[str, Any], text: str) -> None:
    response = parsed(result_line(orjson.dumps(record)))
    expected = record.get("custom_id")
    assert response.custom_id == ("" if expected is None else str(expected))
    assert isinstance(response.result, MessageBatchErroredResult)
    assert text in response.result.error.error.message


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b'"text"', b"", b"{"])
def test_a_line_that_is_no_json_object_raises(line: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - orjson's or ours
        result_line(line)


def test_errored_line() -> None:
    out = errored_line("r9", "The batch failed validation: line 3 lacks max_tokens.")
    kind, message, request_id = errored(out, custom_id="r9")
    assert (kind, request_id) == ("invalid_request_error", None)
    assert message == "The batch failed validation: line 3 lacks max_tokens."
    assert errored(errored_line("r1", "boom", error_type="api_error"))[:2] == ("api_error", "boom")


# -- a streamed file ----------------------------------------------------------------------------

SAMPLE_LINES = [
    answered("ok-1", 200, MESSAGE),
    answered(
        "bad", 400, {"type": "error", "error": {"type": "invalid_request_error", "message": "m"}}
    ),
    unanswered("cut", *CANCELLED),
    answered("envelope", 429, {"error": {"message": "slow down", "type": "rate_limit"}}),
    unanswered("late", "request_timeout", "did not answer within 600s"),
    answered("ok-2", 200, {**MESSAGE, "id": "msg_2"}),
]
SAMPLE = b"".join(SAMPLE_LINES)
EXPECTED = b"".join(result_line(line) for line in SAMPLE_LINES)


def convert(chunks: list[bytes]) -> bytes:
    lines = ResultLines()
    return b"".join(lines.feed(chunk) for chunk in chunks) + lines.finish()


def test_sample_covers_every_kind() -> None:
    kinds = [parsed(line).result.type for line in EXPECTED.splitlines(keepends=True)]
    assert kinds == ["succeeded", "errored", "canceled", "errored", "errored", "succeeded"]


def test_whole_file_in_one_chunk() -> None:
    assert convert([SAMPLE]) == EXPECTED


@pytest.mark.parametrize("data", [SAMPLE, SAMPLE.rstrip(b"\n")], ids=["newline", "no-newline"])
def test_split_at_every_byte(data: bytes) -> None:
    for cut in range(len(data) + 1):
        assert convert([data[:cut], data[cut:]]) == EXPECTED, cut


def test_split_in_three_at_many_places() -> None:
    for first in range(0, len(SAMPLE), 7):
        for second in range(first, len(SAMPLE), 53):
            chunks = [SAMPLE[:first], SAMPLE[first:second], SAMPLE[second:]]
            assert convert(chunks) == EXPECTED, (first, second)


def test_byte_by_byte() -> None:
    assert convert([SAMPLE[i : i + 1] for i in range(len(SAMPLE))]) == EXPECTED


def test_a_line_straddling_many_chunks() -> None:
    long_message = {**MESSAGE, "content": [{"type": "text", "text": "x" * 50_000}]}
    data = SAMPLE_LINES[0] + answered("long", 200, long_message) + SAMPLE_LINES[2]
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    lines = ResultLines()
    outputs = [lines.feed(chunk) for chunk in chunks]
    assert all(out == b"" for out in outputs[1:-2])  # the long line ended in none of these
    out = b"".join(outputs) + lines.finish()
    results = [parsed(line) for line in out.splitlines(keepends=True)]
    assert [r.custom_id for r in results] == ["ok-1", "long", "cut"]
    long_result = results[1].result
    assert isinstance(long_result, MessageBatchSucceededResult)
    assert long_result.message.content[0].type == "text"
    assert long_result.message.content[0].text == "x" * 50_000


def test_missing_trailing_newline_is_given_by_finish() -> None:
    lines = ResultLines()
    assert lines.feed(SAMPLE_LINES[0] + SAMPLE_LINES[2].rstrip(b"\n")) == result_line(
        SAMPLE_LINES[0]
    )
    assert lines.finish() == result_line(SAMPLE_LINES[2])
    assert lines.finish() == b""


def test_blank_lines_are_skipped_and_finish_resets() -> None:
    lines = ResultLines()
    assert lines.feed(b"\n\n  \n" + SAMPLE_LINES[0] + b"\r\n\n") == result_line(SAMPLE_LINES[0])
    assert lines.feed(b"   ") == b""
    assert lines.finish() == b""
    assert convert([]) == b""
    assert lines.feed(SAMPLE) == EXPECTED  # ready for another file
    assert lines.finish() == b""
