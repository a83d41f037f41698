"""Unit tests of :mod:`batchd.validation` (no server): lines, limits, caps and the catalogue."""

from __future__ import annotations

import io
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchd import validation
from batchd.protocol import BATCH_ENDPOINTS
from batchd.validation import (
    BOM,
    LineTooLong,
    ValidationResult,
    Validator,
    iter_lines,
    normalize_url,
    validate_stream,
)
from tests.corpus_cases import CATALOGUE

CHAT = "/v1/chat/completions"
MODELS = ("gpt-4o-mini", "text-embedding-3-small")
JSON_BAD = "This line is not parseable as valid JSON."


def req(
    custom_id: str = "r1", *, url: str = CHAT, model: str = "gpt-4o-mini", **body: Any
) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).encode()


def run(data: bytes, **kwargs: Any) -> ValidationResult:
    options: dict[str, Any] = {"endpoint": CHAT, "models": MODELS, "max_requests": 50}
    return validate_stream(io.BytesIO(data), **{**options, **kwargs})


def codes(result: ValidationResult) -> list[tuple[str, int | None, str | None]]:
    return [(e["code"], e["line"], e["param"]) for e in result.errors]


class RecordingReader(io.BytesIO):
    """A reader that records the size of every read, to prove long lines are skipped in chunks."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def readline(self, size: int | None = -1, /) -> bytes:
        raise AssertionError("readline could load a whole line: read bounded chunks")

    def read(self, size: int | None = -1, /) -> bytes:
        assert size is not None
        assert size > 0, "a read without a size would load the whole file"
        chunk = super().read(size)
        self.reads.append(len(chunk))
        return chunk


# -- iter_lines ----------------------------------------------------------------------------------


def test_iter_lines_strips_lf_and_crlf_and_keeps_physical_numbers() -> None:
    data = b"a\r\nb\n\n  \r\nc"
    assert list(iter_lines(io.BytesIO(data), 100)) == [
        (1, 0, b"a"),
        (2, 3, b"b"),
        (3, 5, b""),
        (4, 6, b"  "),
        (5, 10, b"c"),
    ]


def test_iter_lines_strips_bom_on_line_one_only() -> None:
    data = BOM + b"a\n" + BOM + b"b\n"
    assert list(iter_lines(io.BytesIO(data), 100)) == [(1, 3, b"a"), (2, 5, BOM + b"b")]


def test_iter_lines_bom_does_not_count_against_the_limit() -> None:
    # A first line of exactly the limit after its BOM is neither too long nor split in two.
    assert list(iter_lines(io.BytesIO(BOM + b"0123456789\nxy\n"), 10)) == [
        (1, 3, b"0123456789"),
        (2, 14, b"xy"),
    ]
    assert list(iter_lines(io.BytesIO(BOM + b"0123456789A\nxy\n"), 10)) == [
        (1, 0, LineTooLong(11)),
        (2, 15, b"xy"),
    ]


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_iter_lines_limit_is_on_content_whatever_the_line_end(end: bytes) -> None:
    assert list(iter_lines(io.BytesIO(b"0123456789" + end + b"z"), 10)) == [
        (1, 0, b"0123456789"),
        (2, 10 + len(end), b"z"),
    ]
    assert list(iter_lines(io.BytesIO(b"0123456789A" + end + b"z"), 10)) == [
        (1, 0, LineTooLong(11)),
        (2, 11 + len(end), b"z"),
    ]


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_long_line_is_skipped_in_bounded_reads(end: bytes) -> None:
    length = 5 * 1024 * 1024 + 7
    reader = RecordingReader(b"x" * length + end + b"next\n")
    assert list(iter_lines(reader, 1000)) == [
        (1, 0, LineTooLong(length)),
        (2, length + len(end), b"next"),
    ]
    assert max(reader.reads) <= 1024 * 1024  # never the whole 5 MB line at once
    assert len(reader.reads) >= 5


def test_long_line_at_end_of_file_without_newline() -> None:
    assert list(iter_lines(io.BytesIO(b"ok\n" + b"y" * 3000), 1000)) == [
        (1, 0, b"ok"),
        (2, 3, LineTooLong(3000)),
    ]
    assert list(iter_lines(io.BytesIO(b"0123456789"), 10)) == [(1, 0, b"0123456789")]
    assert list(iter_lines(io.BytesIO(b"0123456789A"), 10)) == [(1, 0, LineTooLong(11))]


def test_validator_reports_line_too_long_and_counts_it_as_a_request() -> None:
    data = req("r1") + b"\n" + b'{"custom_id": "' + b"x" * 500 + b'"}\n' + req("r3") + b"\n"
    result = run(data, max_line_bytes=200, max_requests=2)
    assert result.errors == [
        {
            "code": "invalid_request",
            "message": "This line is 517 bytes long; a request may be at most 200 bytes.",
            "param": None,
            "line": 2,
        },
        {
            "code": "too_many_tasks",
            "message": "The input file has 3 requests; a batch may have at most 2. Split it into "
            "several batches.",
            "param": None,
            "line": None,
        },
    ]


# -- the validator -------------------------------------------------------------------------------


def test_valid_file_sets_total_and_model() -> None:
    result = run(BOM + req("a") + b"\r\n\r\n" + req("b") + b"\r\n   \n" + req("c"))
    assert result.ok
    assert (result.total, result.model, result.errors, result.error_count) == (
        3,
        "gpt-4o-mini",
        [],
        0,
    )


def test_blank_lines_are_not_requests() -> None:
    data = b"\n \n\t\n" + req("a") + b"\n\n\n" + req("b") + b"\n\r\n\n"
    result = run(data, max_requests=2)
    assert result.ok
    assert result.total == 2
    assert codes(run(data, max_requests=1)) == [("too_many_tasks", None, None)]


@pytest.mark.parametrize("data", [b"", b"\n", b" \r\n\t\n", BOM, BOM + b"\n\n"])
def test_empty_file(data: bytes) -> None:
    result = run(data)
    assert not result.ok
    assert codes(result) == [("empty_file", None, None)]


def test_any_error_clears_total_and_model() -> None:
    result = run(req("a") + b"\n" + req("b") + b"\n{\n")
    assert not result.ok
    assert (result.total, result.model) == (0, None)
    assert codes(result) == [("invalid_json_line", 3, None)]


def test_one_error_per_missing_required_key() -> None:
    result = run(b'{}\n{"custom_id": "x", "url": null}\n')
    assert codes(result) == [
        ("missing_required_parameter", 1, "custom_id"),
        ("missing_required_parameter", 1, "method"),
        ("missing_required_parameter", 1, "url"),
        ("missing_required_parameter", 1, "body"),
        ("missing_required_parameter", 2, "method"),
        ("missing_required_parameter", 2, "url"),
        ("missing_required_parameter", 2, "body"),
    ]
    assert [e["message"] for e in result.errors[:4]] == [
        "Missing required parameter: 'custom_id'.",
        "Missing required parameter: 'method'.",
        "Missing required parameter: 'url'.",
        "Missing required parameter: 'body'.",
    ]


def test_duplicate_custom_ids_are_exact_matches() -> None:
    data = b"\n".join([req("a"), req("A"), req("a "), req("a"), req("b"), req("a")])
    result = run(data)
    assert codes(result) == [
        ("duplicate_custom_id", 4, "custom_id"),
        ("duplicate_custom_id", 6, "custom_id"),
    ]
    assert result.errors[0]["message"] == (
        "The custom_id 'a' is a duplicate of the custom_id of an earlier request; every request "
        "in a batch needs its own."
    )


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("/v1/chat/completions", "/chat/completions"),
        ("/chat/completions", "/v1/chat/completions"),
        ("/chat/completions", "/chat/completions"),
        ("/v1/embeddings", "/embeddings"),
    ],
)
def test_azure_style_urls_name_the_same_endpoint(endpoint: str, url: str) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user"}], "input": "x"}
    line = {"custom_id": "a", "method": "POST", "url": url, "body": body}
    result = run(orjson.dumps(line), endpoint=endpoint)
    assert result.ok, result.errors


@pytest.mark.parametrize("url", ["/v1/embeddings", "chat/completions", "/v2/chat/completions"])
def test_other_urls_do_not_match(url: str) -> None:
    result = run(req(url=url))
    assert codes(result) == [("invalid_url", 1, "url")]
    assert result.errors[0]["message"] == (
        "The URL provided for this request does not match the batch endpoint "
        "(/v1/chat/completions)."
    )


def test_normalize_url() -> None:
    assert normalize_url("/chat/completions") == "/v1/chat/completions"
    assert normalize_url("/v1/embeddings") == "/v1/embeddings"
    assert normalize_url("https://x/v1/embeddings") == "https://x/v1/embeddings"


@pytest.mark.parametrize(("endpoint", "required"), sorted(BATCH_ENDPOINTS.items()))
def test_each_endpoint_requires_its_body_fields(endpoint: str, required: tuple[str, ...]) -> None:
    line = {"custom_id": "a", "method": "POST", "url": endpoint, "body": {"model": "gpt-4o-mini"}}
    result = run(orjson.dumps(line), endpoint=endpoint)
    assert codes(result) == [("invalid_request", 1, f"body.{name}") for name in required]
    assert all(e["message"].endswith(" parameter is required.") for e in result.errors)


def test_model_mismatch_against_first_configured_model() -> None:
    data = b"\n".join(
        [req("a", model="nope"), req("b", model=MODELS[1]), req("c"), req("d", model=MODELS[1])]
    )
    assert codes(run(data)) == [
        ("model_not_found", 1, "body.model"),
        ("model_mismatch", 3, "body.model"),
    ]


def test_stream_true_is_rejected() -> None:
    assert codes(run(req(stream=True))) == [("streaming_unsupported", 1, "body.stream")]
    assert run(req(stream=False)).ok


def test_deeply_nested_values_are_reported_not_raised() -> None:
    # orjson reads up to 1024 levels but writes only 254: quoting such a value must not crash.
    deep = b"[" * 300 + b"]" * 300
    line = b'{"custom_id": ' + deep + b', "method": ' + deep + b', "url": "/v1/chat/completions", '
    line += b'"body": {"model": ' + deep + b', "messages": [1]}}'
    result = run(line)
    assert [e["message"] for e in result.errors] == [
        "'custom_id' must be a non-empty string, got [...].",
        "Invalid method [...]: only 'POST' is supported.",
        "Model parameter must be a string, got [...].",
    ]
    assert codes(run(b"[" * 5000)) == [("invalid_json_line", 1, None)]


def test_quoted_client_strings_are_clipped() -> None:
    name = "m" * 10_000
    result = run(req(name, model=name) + b"\n" + req(name))
    assert codes(result) == [
        ("model_not_found", 1, "body.model"),
        ("duplicate_custom_id", 2, "custom_id"),
    ]
    # A message quotes at most 100 characters of a client's string (the served models aside).
    assert all(len(e["message"]) < 600 for e in result.errors)
    assert "m" * 101 not in result.errors[0]["message"]
    assert "'" + "m" * 97 + "...'" in result.errors[0]["message"]


# -- caps and stopping ---------------------------------------------------------------------------


def test_error_cap_adds_one_summary_entry() -> None:
    result = run(b"x\n" * 5, max_errors=3)
    assert result.error_count == 5
    assert codes(result) == [
        ("invalid_json_line", 1, None),
        ("invalid_json_line", 2, None),
        ("invalid_json_line", 3, None),
        ("too_many_errors", None, None),
    ]
    assert result.errors[-1]["message"] == "5 errors in total; only the first 3 are listed."


def test_no_summary_when_errors_fit_exactly() -> None:
    result = run(b"x\n" * 3, max_errors=3)
    assert result.error_count == 3
    assert [e["code"] for e in result.errors] == ["invalid_json_line"] * 3


def test_file_level_errors_are_listed_past_the_cap() -> None:
    result = run(b"x\n" * 3, max_errors=3, max_requests=2)
    assert result.error_count == 4  # three bad lines and too_many_tasks
    assert [e["code"] for e in result.errors] == ["invalid_json_line"] * 3 + ["too_many_tasks"]
    result = run(b"x\n" * 4, max_errors=3, max_requests=2)
    assert result.error_count == 5
    assert [e["code"] for e in result.errors[3:]] == ["too_many_tasks", "too_many_errors"]
    assert result.errors[-1] == {
        "code": "too_many_errors",
        "message": "5 errors in total; only the first 4 are listed.",
        "param": None,
        "line": None,
    }


def test_should_stop_interrupts_validation() -> None:
    every = validation._CHECK_STOP_EVERY
    padding = "p" * 1000  # more than one read chunk (1 MiB) before the first check
    data = b"".join(req(f"r{i}", content=padding) + b"\n" for i in range(3 * every))
    calls: list[int] = []

    def stop() -> bool:
        calls.append(1)
        return True

    fh = io.BytesIO(data)
    result = validate_stream(fh, endpoint=CHAT, models=MODELS, max_requests=10, should_stop=stop)
    assert result.stopped
    assert not result.ok
    assert len(calls) == 1
    assert result.total == every  # stopped at the first check
    assert fh.tell() < len(data)  # the rest of the file was not read
    assert result.errors == []  # finish() did not run: no too_many_tasks for a partial file


def test_should_stop_false_lets_validation_finish() -> None:
    every = validation._CHECK_STOP_EVERY
    data = b"".join(req(f"r{i}") + b"\n" for i in range(2 * every + 1))
    calls: list[int] = []

    def keep_going() -> bool:
        calls.append(1)
        return False

    result = run(data, max_requests=10_000, should_stop=keep_going)
    assert result.ok
    assert not result.stopped
    assert result.total == 2 * every + 1
    assert len(calls) == 2  # checked periodically, not on every line


def test_validator_feed_and_finish_directly() -> None:
    validator = Validator(endpoint=CHAT, models=MODELS, max_requests=10)
    validator.feed(1, req("a"))
    validator.feed(2, b"")
    validator.feed(3, LineTooLong(10**9))
    result = validator.finish()
    assert codes(result) == [("invalid_request", 3, None)]
    assert (result.total, result.model) == (0, None)


# -- property: arbitrary input never raises --------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_body = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from([*MODELS, "nope"]) | _json,
        "messages": st.just([{"role": "user", "content": "hi"}]) | _json,
        "input": _json,
        "stream": st.booleans() | _json,
    },
)
_request = st.fixed_dictionaries(
    {},
    optional={
        "custom_id": st.sampled_from(["a", "b", ""]) | _json,
        "method": st.just("POST") | _json,
        "url": st.sampled_from([CHAT, "/chat/completions", "/v1/embeddings"]) | _json,
        "body": _body | _json,
    },
).map(orjson.dumps)
_line = (
    _request
    | _json.map(orjson.dumps)
    | st.binary(max_size=40)
    | st.sampled_from([b"", b"  ", b"\t", BOM, b"\r", b"{", b"\x00", b"\xff", b"x" * 100])
)
_file = st.tuples(
    st.booleans(),
    st.lists(st.tuples(_line, st.sampled_from([b"\n", b"\r\n"])), max_size=12),
    st.booleans(),
).map(
    lambda t: (
        (BOM if t[0] else b"") + b"".join(line + end for line, end in t[1])[: None if t[2] else -1]
    )
)


@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=_file | st.binary(max_size=300))
def test_arbitrary_input_never_raises(data: bytes) -> None:
    max_errors = 6
    result = validate_stream(
        io.BytesIO(data),
        endpoint=CHAT,
        models=MODELS,
        max_requests=5,
        max_errors=max_errors,
        max_line_bytes=64,
    )
    physical_lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    assert len(result.errors) <= max_errors + 2  # + one file-level error + the summary
    assert result.error_count >= len(result.errors) - 1
    assert result.ok == (not result.errors)
    last_line = 0
    seen_file_level = False
    for error in result.errors:
        assert set(error) == {"code", "message", "param", "line"}
        assert error["code"] in CATALOGUE
        assert isinstance(error["message"], str)
        assert error["message"]
        assert error["param"] is None or isinstance(error["param"], str)
        line = error["line"]
        if line is None:
            seen_file_level = True
        else:
            assert 1 <= line <= physical_lines
            assert not seen_file_level  # file-level entries come last
            assert line >= last_line  # per-line entries in file order
            last_line = line
    if result.ok:
        assert 1 <= result.total <= 5
        assert result.model in MODELS
    else:
        assert (result.total, result.model) == (0, None)


@pytest.mark.parametrize(
    "stream_key", [b'"stream"', b'"\\u0073tream"', b'"str\\u0065am"', b'"\\u0073\\u0074ream"']
)
def test_stream_true_is_caught_however_the_key_is_spelled(stream_key: bytes) -> None:
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], '
    line = (
        b'{"custom_id": "s", "method": "POST", "url": "/v1/chat/completions", "body": '
        + body
        + stream_key
        + b": true}}\n"
    )
    assert codes(run(line)) == [("streaming_unsupported", 1, "body.stream")]


def test_integers_beyond_64_bits_are_valid_json() -> None:
    # simdjson (the fast path) rejects them; the full parse accepts them, as JSON allows.
    assert run(req("big", seed=2**70) + b"\n").ok


_JSONISH = st.lists(
    st.sampled_from(
        [
            b"{",
            b"}",
            b"[",
            b"]",
            b'"',
            b":",
            b",",
            b"1",
            b"-",
            b".",
            b"e",
            b"true",
            b" ",
            b"\r",
            b"\\",
            b"u",
            BOM,
            b"\x00",
            b"\xff",
            b"\xed\xa0\x80",
            b"18446744073709551616",
        ]
    ),
    max_size=4,
).map(b"".join)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_JSONISH, _JSONISH)
def test_fast_path_never_accepts_what_the_full_parse_rejects(prefix: bytes, suffix: bytes) -> None:
    """A valid request with bytes around it: simdjson (the fast path) must not accept a line
    that orjson (the full checks) rejects."""
    raw = prefix + req("r1") + suffix
    validator = validation.Validator(endpoint=CHAT, models=MODELS, max_requests=10)
    if validator._accept(raw):
        orjson.loads(raw)  # must not raise
