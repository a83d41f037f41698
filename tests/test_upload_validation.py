"""Validation while a batch file uploads: the push-based line splitter, the upload validator
(which must agree with the validator that re-reads a stored file), and reuse of its result."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

from batchd.config import Settings
from batchd.validation import BOM, LineSplitter, LineTooLong, UploadValidator, validate_stream
from tests.conftest import wait_for_status
from tests.corpus_cases import (
    MAX_ERRORS,
    MAX_REQUEST_BYTES,
    MAX_REQUESTS,
    CorpusCase,
    all_cases,
)
from tests.serverproc import BatchdServer, write_config

MODELS = ("gpt-4o-mini", "text-embedding-3-small")
PIECES = [b"a", b"{}", b"\n", b"\r", b"\r\n", BOM, b" ", b"x" * 9]


def split(
    data: bytes, max_line_bytes: int, sizes: list[int]
) -> list[tuple[int, int, bytes | LineTooLong]]:
    splitter = LineSplitter(max_line_bytes)
    out: list[tuple[int, int, bytes | LineTooLong]] = []
    i = 0
    for size in sizes:
        out += splitter.feed(data[i : i + size])
        i += size
    out += splitter.feed(data[i:])
    return out + splitter.close()


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join),
    st.integers(1, 12),
    st.lists(st.integers(1, 8), max_size=60),
)
def test_splitting_does_not_depend_on_chunk_boundaries(
    data: bytes, max_line_bytes: int, sizes: list[int]
) -> None:
    lines = split(data, max_line_bytes, sizes)
    assert lines == split(data, max_line_bytes, [])
    for _lineno, offset, raw in lines:
        if isinstance(raw, bytes):  # the offset is where the line's bytes are
            assert data[offset : offset + len(raw)] == raw


def test_split_against_a_plain_model() -> None:
    """Without over-long lines the splitter is ``split(b"\\n")`` minus a final empty piece, with
    one "\\r" stripped from each terminated line and a BOM stripped from line 1, each line with
    the offset of its first byte."""
    rng = random.Random(7)
    for _ in range(2000):
        data = b"".join(rng.choice(PIECES[:-1]) for _ in range(rng.randint(0, 30)))
        pieces = data.split(b"\n")
        expected = []
        position = 0
        for n, piece in enumerate(pieces, 1):
            last = n == len(pieces)
            if last and not piece:
                break
            bom = len(BOM) if n == 1 and piece.startswith(BOM) else 0
            line = piece[bom:]
            if not last and line.endswith(b"\r"):
                line = line[:-1]
            expected.append((n, position + bom, line))
            position += len(piece) + 1
        sizes = [rng.randint(1, 5) for _ in range(20)]
        assert split(data, 10_000, sizes) == expected, data


def session_settings() -> Settings:
    return Settings.load(
        models=[{"name": m, "provider": "openai"} for m in MODELS],
        max_requests_per_batch=MAX_REQUESTS,
        max_validation_errors=MAX_ERRORS,
        max_request_bytes=MAX_REQUEST_BYTES,
    )


@pytest.mark.parametrize(
    "case", [c for c in all_cases() if c.purpose == "batch"], ids=lambda c: c.name
)
def test_upload_validator_agrees_with_the_stored_file_validator(
    case: CorpusCase, tmp_path: Path
) -> None:
    path = case.build(tmp_path)
    data = path.read_bytes()
    validator = UploadValidator.for_settings(session_settings())
    rng = random.Random(len(data))
    i = 0
    while i < len(data):
        size = rng.choice([1, 7, 4096, 65536, 1 << 20])
        validator.feed(data[i : i + size])
        i += size
    finished = validator.finish()
    if finished is None:
        return  # the first request names no batch endpoint: validated when the batch exists
    endpoint, result = finished
    stored = validate_stream(
        io.BytesIO(data),
        endpoint=endpoint,
        models=MODELS,
        max_requests=MAX_REQUESTS,
        max_errors=MAX_ERRORS,
        max_line_bytes=MAX_REQUEST_BYTES,
    )
    assert (result.total, result.model, result.error_count) == (
        stored.total,
        stored.model,
        stored.error_count,
    )
    assert result.errors == stored.errors


def _request(custom_id: str, model: str) -> bytes:
    return (
        b'{"custom_id": "%s", "method": "POST", "url": "/v1/chat/completions", "body": '
        b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}}\n'
        % (custom_id.encode(), model.encode())
    )


def test_upload_result_is_reused_only_while_it_still_applies(tmp_path: Path) -> None:
    """A result computed at upload is used for the batch; after the routing table changes (a
    restart with another config) the file is validated again, against the new table."""
    data_dir = tmp_path / "data"
    first = write_config(tmp_path / "first.toml")
    data = _request("a", "gpt-4o-mini") + _request("b", "gpt-4o-mini")
    server = BatchdServer(data_dir, first).start()
    try:
        with OpenAI(base_url=server.api_url, api_key="k", max_retries=0) as client:
            file_id = client.files.create(file=("in.jsonl", data), purpose="batch").id
            batch = client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            done = wait_for_status(client, batch.id, {"in_progress", "failed"})
            assert (done.status, done.request_counts.total) == ("in_progress", 2)
            # The same file for another endpoint: the upload-time result does not apply.
            other = client.batches.create(
                input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
            )
            failed = wait_for_status(client, other.id, {"in_progress", "failed"})
            assert [e.code for e in failed.errors.data] == ["invalid_url", "invalid_request"] * 2
    finally:
        server.stop()
    log = server.log()
    assert f"batch {batch.id}: input validated while it was uploaded" in log
    assert f"batch {other.id}: input validated while it was uploaded" not in log

    second = write_config(
        tmp_path / "second.toml",
        models=[{"name": "another-model", "provider": "openai", "base_url": "http://x/v1"}],
    )
    server = BatchdServer(data_dir, second).start()
    try:
        with OpenAI(base_url=server.api_url, api_key="k", max_retries=0) as client:
            batch = client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            failed = wait_for_status(client, batch.id, {"in_progress", "failed"})
    finally:
        server.stop()
    assert failed.status == "failed"
    assert [(e.code, e.line) for e in failed.errors.data] == [
        ("model_not_found", 1),
        ("model_not_found", 2),
    ]
    assert f"batch {batch.id}: input validated while it was uploaded" not in server.log()
