"""The push parser of the inline requests of Anthropic's Message Batches
(``batchd.service.message_requests.InlineRequests``): bodies split anywhere give the same JSONL,
the params come out as orjson reads them (numbers, escapes, unicode), each problem is its 400 in
Anthropic's words with its path as ``param``, the first problem in the body is the one raised,
and the request limit stops the parse at the first request over it."""

from __future__ import annotations

import contextlib
import gc
import itertools
import weakref
from typing import Any

import orjson
import pytest

from batchd.errors import InvalidRequest
from batchd.service.message_requests import InlineRequests

SHAPE = 'send {"requests": [{"custom_id": ..., "params": {...}}]}.'


def params(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }


def body_of(*requests: Any, **top: Any) -> bytes:
    return orjson.dumps({"requests": list(requests), **top})


def request(custom_id: Any = "r0", **extra: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "params": params(**extra)}


def parse(body: bytes, *, max_requests: int = 100, chunks: list[int] | None = None) -> bytes:
    """The JSONL of ``body``, fed whole or cut at the offsets ``chunks``."""
    parser = InlineRequests(max_requests=max_requests)
    cuts = [0, *(chunks or []), len(body)]
    out = b"".join(parser.feed(body[a:b]) for a, b in itertools.pairwise(cuts))
    return out + parser.finish()


def refused(
    body: bytes, *, max_requests: int = 100, chunks: list[int] | None = None
) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse(body, max_requests=max_requests, chunks=chunks)
    return caught.value


def expected_lines(body: bytes, url: str = "/v1/messages") -> list[dict[str, Any]]:
    return [
        {"custom_id": item["custom_id"], "method": "POST", "url": url, "body": item["params"]}
        for item in orjson.loads(body)["requests"]
    ]


# A small body with what is hard to split: escapes (pairs of surrogates, runs of backslashes,
# an escaped backslash before "ud800"), multi-byte UTF-8, numbers of every form.
TRICKY = (
    b'{ "requests" : [\n'
    b'  {"custom_id": "a-1", "params": {"model": "claude-haiku-4-5", "max_tokens": 1024,\n'
    b'   "system": "caf\\u00e9 \\ud83d\\ude00 \\uD83D\\uDE00 \xf0\x9f\x98\x80 \\\\ud800 '
    b'\\\\\\\\",\n'
    b'   "messages": [{"role": "user", '
    b'"content": "line\\nbreak \\"q\\" \\/ \\t \\u0000 \xc3\xa9"}],\n'
    b'   "temperature": 0.1, "top_p": 1E-7, "top_k": -0, "x": [1.7976931348623157e308,\n'
    b"   5e-324, -0.0, 2.5e+10, 9223372036854775807, -9223372036854775807, 1.0, 100]}},\n"
    b'  {"params": {"max_tokens": 1, "messages": [{"role": "user", "content": []}],\n'
    b'   "model": "claude-haiku-4-5", "stream": false, "metadata": {"user_id": null},\n'
    b'   "stop_sequences": ["\\\\"], "thinking": {"type": "enabled", "budget_tokens": 1}},\n'
    b'   "custom_id": "B_2"},\n'
    b'  {"custom_id": "c3", "params": {"model": "claude-haiku-4-5", "max_tokens": 7,\n'
    b'   "messages": [{"role": "user", "content": "\\\\\\ud83d\\ude00"}], "stream": null}}\n'
    b"] }\n"
)


def test_a_body_gives_one_line_a_request_as_orjson_reads_it() -> None:
    parser = InlineRequests(max_requests=3)
    out = parser.feed(TRICKY) + parser.finish()
    assert out.endswith(b"\n")
    assert out.count(b"\n") == 3
    lines = out.splitlines()
    assert [orjson.loads(line) for line in lines] == expected_lines(TRICKY)
    # The same bytes as orjson writes what it reads: floats, -0.0, escapes and all.
    assert lines == [orjson.dumps(line) for line in expected_lines(TRICKY)]
    assert parser.count == 3
    assert parser.model == "claude-haiku-4-5"
    first = orjson.loads(lines[0])["body"]
    assert first["system"] == "café 😀 😀 😀 \\ud800 \\\\"
    assert first["x"][:3] == [1.7976931348623157e308, 5e-324, -0.0]
    assert first["x"][4:6] == [2**63 - 1, -(2**63 - 1)]
    assert type(first["top_k"]) is int
    assert type(first["x"][-2]) is float
    assert orjson.loads(lines[2])["body"]["messages"][0]["content"] == "\\😀"


def test_split_at_every_byte_the_same_lines() -> None:
    whole = parse(TRICKY)
    for cut in range(len(TRICKY) + 1):
        assert parse(TRICKY, chunks=[cut]) == whole, cut
    assert parse(TRICKY, chunks=list(range(1, len(TRICKY)))) == whole  # byte by byte


def test_each_line_as_soon_as_its_request_is_complete() -> None:
    body = body_of(request("a"), request("b"))
    end_of_a = body.index(b"}}") + 2
    parser = InlineRequests(max_requests=2)
    assert parser.feed(body[: end_of_a - 1]) == b""
    first = parser.feed(body[end_of_a - 1 : end_of_a])
    assert orjson.loads(first)["custom_id"] == "a"
    assert parser.count == 1
    assert parser.feed(b"") == b""  # nothing, and not the end
    rest = parser.feed(body[end_of_a:]) + parser.finish()
    assert orjson.loads(rest)["custom_id"] == "b"
    assert parser.count == 2


def test_the_url_of_the_lines() -> None:
    parser = InlineRequests(max_requests=1, url="/v1/chat/messages")
    out = parser.feed(body_of(request())) + parser.finish()
    assert orjson.loads(out)["url"] == "/v1/chat/messages"


def test_a_generated_body_of_many_requests_in_uneven_chunks() -> None:
    requests = [
        {
            "custom_id": f"id_{i}",
            "params": params(
                temperature=i / 7,
                system=f"s{i} \u2603 " + "\\" * (i % 5),
                messages=[
                    {"role": "user", "content": [{"type": "text", "text": f"t{i}\U0001f600"}]}
                ],
            ),
        }
        for i in range(300)
    ]
    body = orjson.dumps({"requests": requests})
    cuts = list(range(7, len(body), 977))
    out = parse(body, max_requests=300, chunks=cuts)
    assert [orjson.loads(line) for line in out.splitlines()] == expected_lines(body)


# --- the top level ---

TOP_LEVEL = [
    (b"[]", "requests: Field required", "requests"),
    (b"[{}]", "requests: Field required", "requests"),
    (b'"requests"', "requests: Field required", "requests"),
    (b"{}", "requests: Field required", "requests"),
    (b'{"request": []}', "request: Extra inputs are not permitted", "request"),
    (body_of(request(), foo={"a": [1]}), "foo: Extra inputs are not permitted", "foo"),
    (b'{"foo": 1, "requests": [1]}', "foo: Extra inputs are not permitted", "foo"),
    (b'{"": 1, "requests": []}', '"": Extra inputs are not permitted', '""'),
    (body_of(request(), **{"": 0}), '"": Extra inputs are not permitted', '""'),
    (b'{"item": [1]}', "item: Extra inputs are not permitted", "item"),
    (b'{"requests.item": {}}', "requests.item: Extra inputs are not permitted", "requests.item"),
    (b'{"requests": "abc"}', "requests: Input should be a valid list", "requests"),
    (b'{"requests": null, "x": 1}', "requests: Input should be a valid list", "requests"),
    (b'{"requests": {}}', "requests: Input should be a valid list", "requests"),
    (
        b'{"requests": {"item": {"custom_id": "a"}}}',
        "requests: Input should be a valid list",
        "requests",
    ),
    (b'{"requests": {"a": 1}}', "requests: Input should be a valid list", "requests"),
    (
        b'{"requests": [], "requests": []}',
        'requests: the key is given twice; send one "requests" list.',
        "requests",
    ),
    (
        b'{"requests": []}',
        "requests: List should have at least 1 item after validation, not 0",
        "requests",
    ),
    (
        b' {"requests" : [ ] } ',
        "requests: List should have at least 1 item after validation, not 0",
        "requests",
    ),
]


@pytest.mark.parametrize(("body", "message", "param"), TOP_LEVEL)
def test_the_top_level(body: bytes, message: str, param: str) -> None:
    for chunks in (None, [1], [len(body) // 2]):
        error = refused(body, chunks=chunks)
        assert (error.message, error.param) == (message, param)
        assert error.status_code == 400
        assert error.error_type == "invalid_request_error"


NOT_JSON = [
    (b"", "the body is empty"),
    (b" \n ", "the body is empty"),
    (b'{"requests": [', "the body ends before the JSON does"),
    (body_of(request())[:-3], "the body ends before the JSON does in requests.0"),
    (b'{"requests": [}', "parse error: unallowed token at this point in JSON text"),
    (
        b'{"requests": [{"custom_id": "a",}]}',
        "parse error: invalid object key (must be a string) in requests.0",
    ),
    (
        b'{"requests": [{"custom_id": tru}]}',
        "lexical error: invalid string in json text in requests.0",
    ),
    (body_of(request()) + b"{}", "parse error: trailing garbage"),
    (b"{'requests': []}", "lexical error: invalid char in json text"),
    (
        b'{"requests": [{"custom_id": "\xff"}]}',
        "lexical error: invalid bytes in UTF8 string in requests.0",
    ),
    (
        b'{"requests": [{"custom_id": "\\udc00"}]}',
        "a string is not valid UTF-8 (a lone surrogate?) in requests.0",
    ),
    (
        b'{"requests": [{"custom_id": "\xed\xa0\x80"}]}',
        "a string is not valid UTF-8 (a lone surrogate?) in requests.0",
    ),
]


@pytest.mark.parametrize(("body", "problem"), NOT_JSON)
def test_not_json(body: bytes, problem: str) -> None:
    error = refused(body)
    assert error.message == f"The request body is not valid JSON: {problem}; {SHAPE}"
    assert error.param is None


@pytest.mark.parametrize(
    "text",
    [b"\\ud800", b"\\uDBFF ", b"\\ud83d\\u0041", b"\\ud83d\\ud83d\\ude00", b"\\\\\\ud800"],
)
def test_a_high_surrogate_escape_with_no_low_one_is_refused_wherever_it_is_cut(text: bytes) -> None:
    # yajl would read it as "?": refused, as orjson refuses it.
    body = b'{"requests": [{"custom_id": "a", "params": {"model": "m", "max_tokens": 1, '
    body += b'"messages": [1], "system": "x' + text + b'y"}}]}'
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    for cut in range(len(body) + 1):
        error = refused(body, chunks=[cut])
        assert error.message.startswith(
            "The request body is not valid JSON: a \\u escape of a high surrogate with no low one"
        ), cut


def test_a_long_run_of_backslashes_across_chunks() -> None:
    # 4001 backslashes then "ud800": an escaped backslash run, then an escape: refused; 4000:
    # the text "\ud800" after 2000 backslashes: read.
    for run, ok in ((4000, True), (4001, False)):
        text = b"\\" * run + b"ud800"
        body = b'{"requests": [{"custom_id": "a", "params": {"model": "m", "max_tokens": 1, '
        body += b'"messages": [1], "system": "' + text + b'"}}]}'
        for cut in (body.index(b"\\") + 1, body.index(b"\\") + 2000, body.index(b"ud800") - 1):
            if ok:
                line = orjson.loads(parse(body, chunks=[cut]))
                assert line["body"]["system"] == "\\" * (run // 2) + "ud800"
            else:
                assert "high surrogate" in refused(body, chunks=[cut]).message


@pytest.mark.parametrize("number", [b"9223372036854775808", b"-9223372036854775808", b"1e400"])
def test_a_number_out_of_range(number: bytes) -> None:
    body = b'{"requests": [' + orjson.dumps(request("a"))
    body += b', {"custom_id": "b", "params": {"model": "m", "max_tokens": ' + number + b"}}]}"
    error = refused(body)
    assert error.param == "requests.1"
    assert error.message.startswith("requests.1: a number is out of range (parse error: ")
    assert "-(2**63-1) and 2**63-1" in error.message


# --- each request ---


def with_index_3(item: Any) -> bytes:
    return body_of(request("a"), request("b"), request("c"), item)


ITEMS = [
    (5, "requests.3: Input should be a valid dictionary"),
    ([request("d")], "requests.3: Input should be a valid dictionary"),
    ({**request("d"), "foo": 1}, "requests.3.foo: Extra inputs are not permitted"),
    ({"params": params()}, "requests.3.custom_id: Field required"),
    ({"custom_id": "d"}, "requests.3.params: Field required"),
    ({"custom_id": "d", "body": params()}, "requests.3.params: Field required"),
    (request(7), "requests.3.custom_id: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"),
    (request(None), "requests.3.custom_id: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"),
    (request(""), "requests.3.custom_id: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"),
    (request("a b"), "requests.3.custom_id: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"),
    (request("é"), "requests.3.custom_id: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"),
    (request("x\n"), "requests.3.custom_id: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"),
    (
        request("x" * 65),
        "requests.3.custom_id: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'",
    ),
    (
        request("b"),
        "requests.3.custom_id: Duplicate custom_id 'b': each request of a batch needs a unique "
        "custom_id.",
    ),
    (
        {"custom_id": "d", "params": [params()]},
        "requests.3.params: Input should be a valid dictionary",
    ),
    ({"custom_id": "d", "params": None}, "requests.3.params: Input should be a valid dictionary"),
    (request("d", model=None), "requests.3.params.model: Input should be a valid string"),
    (request("d", model=["m"]), "requests.3.params.model: Input should be a valid string"),
    (request("d", model=""), "requests.3.params.model: String should have at least 1 character"),
    (
        request("d", model="claude-sonnet-4-5"),
        "requests.3.params.model: 'claude-sonnet-4-5' differs from 'claude-haiku-4-5' of "
        "requests.0: batchd runs each batch on one model; send one batch per model.",
    ),
    (
        request("d", max_tokens=0),
        "requests.3.params.max_tokens: Input should be greater than or equal to 1",
    ),
    (
        request("d", max_tokens=-5),
        "requests.3.params.max_tokens: Input should be greater than or equal to 1",
    ),
    (
        request("d", max_tokens=True),
        "requests.3.params.max_tokens: Input should be a valid integer",
    ),
    (
        request("d", max_tokens=64.0),
        "requests.3.params.max_tokens: Input should be a valid integer",
    ),
    (
        request("d", max_tokens="64"),
        "requests.3.params.max_tokens: Input should be a valid integer",
    ),
    (
        request("d", max_tokens=None),
        "requests.3.params.max_tokens: Input should be a valid integer",
    ),
    (
        request("d", messages={"role": "user"}),
        "requests.3.params.messages: Input should be a valid list",
    ),
    (
        request("d", messages=[]),
        "requests.3.params.messages: List should have at least 1 item after validation, not 0",
    ),
    (
        request("d", stream=True),
        'requests.3.params.stream: streaming is not supported in a batch; leave "stream" out.',
    ),
    (request("d", stream="no"), "requests.3.params.stream: Input should be a valid boolean"),
    (request("d", stream=0), "requests.3.params.stream: Input should be a valid boolean"),
]


@pytest.mark.parametrize(("item", "message"), ITEMS)
def test_a_request(item: Any, message: str) -> None:
    body = with_index_3(item)
    error = refused(body)
    assert error.message == message
    assert error.param == message.split(":", 1)[0]


@pytest.mark.parametrize("field", ["model", "max_tokens", "messages"])
def test_a_required_param(field: str) -> None:
    item = request("d")
    del item["params"][field]
    error = refused(with_index_3(item))
    assert (error.message, error.param) == (
        f"requests.3.params.{field}: Field required",
        f"requests.3.params.{field}",
    )


def test_the_first_request_sets_the_model() -> None:
    body = body_of(request("a", model="claude-sonnet-4-5"), request("b", model="claude-haiku-4-5"))
    error = refused(body)
    assert error.message.startswith(
        "requests.1.params.model: 'claude-haiku-4-5' differs from 'claude-sonnet-4-5'"
    )
    ok = InlineRequests(max_requests=2)
    ok.feed(body_of(request("a", model="m1"), request("b", model="m1")))
    ok.finish()
    assert ok.model == "m1"


def test_what_is_not_checked_here_goes_through() -> None:
    # Unknown params, content blocks, roles: checked when the request runs.
    item = request("a", foo={"bar": [1, None, True]}, messages=[{"role": "robot", "content": 5}])
    line = orjson.loads(parse(body_of(item)))
    assert line["body"] == item["params"]


def test_a_request_nested_deeper_than_orjson_writes() -> None:
    deep = b"[" * 300 + b"]" * 300
    error = refused(
        body_of(request("a"), request("b", foo=0)).replace(b'"foo":0', b'"foo":' + deep)
    )
    assert error.param == "requests.1.params"
    assert error.message.startswith("requests.1.params: cannot be written as JSON: ")


# --- the order of the problems, the limit, and after a problem ---


def test_the_first_problem_in_the_body_is_raised_however_it_is_cut() -> None:
    body = body_of(request("a"), request("a b"), request("c", stream=True), foo=1) + b" x"
    for cut in range(0, len(body) + 1, 7):
        error = refused(body, chunks=[cut])
        assert error.param == "requests.1.custom_id", cut


def test_the_limit() -> None:
    body = body_of(*(request(f"r{i}") for i in range(4)))
    assert parse(body, max_requests=4).count(b"\n") == 4
    error = refused(body, max_requests=3)
    assert error.param == "requests"
    assert error.message == (
        "requests: List should have at most 3 items after validation, not 4 or more (batchd's "
        "limit of requests in a batch, configurable with the setting message_batch_max_requests)."
    )


def test_the_limit_stops_at_the_first_request_over_it() -> None:
    # Request 3 (over the limit of 3) is invalid, and the body after it not even JSON: the
    # limit is what is raised, at the start of request 3, with 3 requests read.
    head = body_of(request("a"), request("b"), request("c"))[:-2] + b', {"custom_id": 5'
    parser = InlineRequests(max_requests=3)
    lines = parser.feed(head[: head.index(b', {"custom_id": 5')])
    assert lines.count(b"\n") == 3
    with pytest.raises(InvalidRequest) as caught:
        parser.feed(head[head.index(b', {"custom_id": 5') :] + b"}} garbage ]")
    assert caught.value.message.startswith("requests: List should have at most 3 items")
    assert parser.count == 3


def test_a_problem_before_the_limit_comes_first() -> None:
    body = body_of(request("a"), request("a"), request("c"), request("d"))
    assert refused(body, max_requests=2).param == "requests.1.custom_id"


def test_after_a_problem_every_call_raises_it() -> None:
    parser = InlineRequests(max_requests=5)
    body = body_of(request("a"), request("b", max_tokens=0))
    with pytest.raises(InvalidRequest) as first:
        parser.feed(body)
    for call in (lambda: parser.feed(b"{}"), parser.finish):
        with pytest.raises(InvalidRequest) as again:
            call()
        assert again.value is first.value
    assert parser.count == 1


def test_no_use_after_finish() -> None:
    parser = InlineRequests(max_requests=1)
    parser.feed(body_of(request()))
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed(b" ")


@pytest.mark.parametrize("body", [TRICKY[:100], TRICKY, b'{"requests": [{"x": 1}]}', b"{]"])
def test_a_parser_is_freed_when_dropped(body: bytes) -> None:
    # Its C coroutines are not seen by the garbage collector: no cycle may run through them.
    parser = InlineRequests(max_requests=3)
    with contextlib.suppress(InvalidRequest):
        parser.feed(body)
        if body is TRICKY:
            parser.finish()
    dropped = weakref.ref(parser)
    del parser
    gc.collect()
    assert dropped() is None
