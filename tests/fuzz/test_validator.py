"""hypothesis on :mod:`batchd.validation`, for what ``test_validation_unit.py`` and
``test_upload_validation.py`` do not cover: the validator's fast path (simdjson) against its full
checks on mutated lines, and the upload-time validator fed arbitrary files in arbitrary chunks
against ``validate_stream`` on the whole file.

(That arbitrary bytes never raise and that every error has a catalogue code and a line within the
file is ``test_arbitrary_input_never_raises``; the line splitter's independence of chunk
boundaries is ``test_splitting_does_not_depend_on_chunk_boundaries``; the corpus files, chunked,
are ``test_upload_validator_agrees_with_the_stored_file_validator``.)
"""

from __future__ import annotations

import io
import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchd.protocol import BATCH_ENDPOINTS
from batchd.validation import BOM, UploadValidator, Validator, validate_stream
from tests.corpus_cases import CATALOGUE
from tests.fuzz.support import CHAT, JSON_VALUES, MODELS, chat_line, fuzz


def _validate(lines: list[bytes], *, fast: bool, max_requests: int = 10) -> Any:
    validator = Validator(endpoint=CHAT, models=MODELS, max_requests=max_requests, max_errors=20)
    if not fast:
        validator._accept = lambda raw: None  # type: ignore[method-assign]
    for lineno, raw in enumerate(lines, 1):
        validator.feed(lineno, raw)
    result = validator.finish()
    return (result.total, result.model, result.error_count, result.errors)


_REQUEST_VALUES = (
    st.sampled_from(
        [None, True, False, 0, 1, "", "a", "b", "POST", "GET", CHAT, "/chat/completions", *MODELS]
    )
    | st.just([{"role": "user", "content": "hi"}])
    | JSON_VALUES
)


def _object(pairs: list[tuple[str, bytes]]) -> bytes:
    """A JSON object from (key, encoded value) pairs, duplicates kept."""
    return (
        b"{" + b", ".join(json.dumps(key).encode() + b": " + value for key, value in pairs) + b"}"
    )


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    """A valid request line, then edits: a key set, dropped or given twice, bytes cut or added."""
    line = chat_line(draw(st.sampled_from(["a", "b", "c"])))
    for _ in range(draw(st.integers(0, 3))):
        target = line if draw(st.booleans()) else line.get("body")
        if not isinstance(target, dict):
            continue
        key = draw(
            st.sampled_from(
                ["custom_id", "method", "url", "body", "model", "messages", "stream", "input"]
            )
        )
        if draw(st.booleans()):
            target[key] = draw(_REQUEST_VALUES)
        else:
            target.pop(key, None)
    # Encoded by hand, so that a key may come twice (JSON allows it; the last one counts).
    body = line.get("body")
    body_pairs = (
        [(key, json.dumps(value).encode()) for key, value in body.items()]
        if isinstance(body, dict)
        else None
    )
    pairs = [(key, json.dumps(value).encode()) for key, value in line.items() if key != "body"]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        key = draw(st.sampled_from(["custom_id", "method", "url", "model", "messages", "stream"]))
        target_pairs = body_pairs if key in ("model", "messages", "stream") else pairs
        if target_pairs is not None:
            value = draw(_REQUEST_VALUES | st.sampled_from([CHAT, MODELS[0], "POST", "z"]))
            at = draw(st.integers(0, len(target_pairs)))
            target_pairs.insert(at, (key, json.dumps(value).encode()))
    if body_pairs is not None:
        pairs.append(("body", _object(body_pairs)))
    elif "body" in line:
        pairs.append(("body", json.dumps(line["body"]).encode()))
    raw = _object(pairs)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(raw)))
        edit = draw(
            st.sampled_from([b"", b" ", b"\\u0073", b'"', b",", b"}", b"\x00", b"\xff", BOM])
        )
        cut = draw(st.integers(0, 2))
        raw = raw[:at] + edit + raw[at + cut :]
    return raw


@fuzz(300)
@given(lines=st.lists(mutated_lines(), min_size=1, max_size=4))
def test_fast_path_agrees_with_the_full_checks(lines: list[bytes]) -> None:
    """The simdjson fast path accepts a line only when the full checks would: the results,
    errors included, are the same with and without it."""
    assert _validate(lines, fast=True) == _validate(lines, fast=False)


@pytest.mark.parametrize(
    ("raw", "error_code"),
    [
        # "stream": true would reach the upstream of a batch
        (
            b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": '
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], '
            b'"stream": false, "stream": true}}',
            "streaming_unsupported",
        ),
        # the custom_id of the output would be "", not "a"
        (
            b'{"custom_id": "a", "custom_id": "", "method": "POST", "url": '
            b'"/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": '
            b'[{"role": "user", "content": "hi"}]}}',
            "invalid_request",
        ),
        (
            b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": '
            b'{"model": "gpt-4o-mini", "model": "unknown", "messages": '
            b'[{"role": "user", "content": "x"}]}}',
            "model_not_found",
        ),
    ],
    ids=["stream", "custom_id", "model"],
)
def test_a_key_given_twice_is_checked_as_the_runner_reads_it(raw: bytes, error_code: str) -> None:
    """simdjson reads the first of two equal keys, orjson (the full checks, the runner) the last:
    the fast path leaves such a line to the full checks, which see what the runner will send."""
    fast, full = _validate([raw], fast=True), _validate([raw], fast=False)
    assert fast == full
    total, _model, error_count, errors = fast
    assert (total, error_count) == (0, 1)
    assert errors[0]["code"] == error_code, errors


@st.composite
def batch_files(draw: st.DrawFn) -> bytes:
    """Valid, mutated, blank, too long and binary lines; LF or CRLF; a BOM; a last newline or
    not."""
    lines = draw(
        st.lists(
            mutated_lines()
            | st.sampled_from("abcd").map(lambda custom_id: orjson.dumps(chat_line(custom_id)))
            | st.sampled_from([b"", b"  ", b"x" * 90, b"{"])
            | st.binary(max_size=20),
            max_size=8,
        )
    )
    ends = draw(
        st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=len(lines), max_size=len(lines))
    )
    data = b"".join(line + end for line, end in zip(lines, ends, strict=True))
    if draw(st.booleans()):
        data = data.rstrip(b"\r\n")
    return (BOM if draw(st.booleans()) else b"") + data


@fuzz(300)
@given(
    data=batch_files(),
    cuts=st.lists(st.integers(0, 4096), max_size=12),
    max_line_bytes=st.sampled_from([40, 64, 4096]),
    max_requests=st.integers(1, 6),
    max_errors=st.integers(1, 6),
)
def test_upload_validator_agrees_with_validate_stream(
    data: bytes, cuts: list[int], max_line_bytes: int, max_requests: int, max_errors: int
) -> None:
    """The file fed to the upload-time validator in arbitrary chunks gives what validating the
    stored file for the same endpoint gives; every error with a catalogue code and a line in it."""
    limits = {"max_requests": max_requests, "max_errors": max_errors}
    validator = UploadValidator(models=MODELS, max_line_bytes=max_line_bytes, **limits)
    at = 0
    for cut in sorted(cuts):
        if cut > at:
            validator.feed(data[at:cut])
            at = cut
    validator.feed(data[at:])
    finished = validator.finish()
    if finished is None:
        return  # no batch endpoint in the first request: validated once the batch names one
    endpoint, result = finished
    assert endpoint in BATCH_ENDPOINTS
    whole = validate_stream(
        io.BytesIO(data), endpoint=endpoint, models=MODELS, max_line_bytes=max_line_bytes, **limits
    )
    assert (result.total, result.model, result.error_count, result.errors) == (
        whole.total,
        whole.model,
        whole.error_count,
        whole.errors,
    )
    physical_lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    for error in result.errors:
        assert error["code"] in CATALOGUE
        assert error["line"] is None or 1 <= error["line"] <= physical_lines
