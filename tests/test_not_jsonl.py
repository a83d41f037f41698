"""A file that is not JSONL at all (a CSV table, a pretty-printed JSON document, a Parquet file)
given as a batch input: one error that says so, not one ``invalid_json_line`` per line.

The error keeps OpenAI's catalogue code ``invalid_json_line`` and the number of the line that
showed it (clients that read the codes see what they know); its message says the file is not
JSONL, what a batch file is, and that ``batchd prepare`` makes one from a table. A file whose
first line may be a broken request keeps its errors line by line.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from batchd.validation import (
    UploadValidator,
    ValidationResult,
    first_line_not_jsonl,
    not_jsonl,
    validate_stream,
)
from tests.conftest import wait_for_status

CHAT = "/v1/chat/completions"
BATCHD_RUN = [sys.executable, "-m", "batchd", "run"]
MODELS = ("gpt-4o-mini",)
HINT = "`batchd prepare` turns a table (CSV, TSV, JSONL or Parquet) into one."
CSV = (
    b"Series_Title,Released_Year,Overview\n"
    b'The Godfather,1972,"An organized crime dynasty\'s aging patriarch, ..."\n'
    b"12 Angry Men,1957,A jury holdout attempts to prevent a miscarriage of justice\n"
)
REQUEST = json.dumps(
    {
        "custom_id": "r1",
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
).encode()


def run(data: bytes, **options: int) -> ValidationResult:
    return validate_stream(
        io.BytesIO(data), endpoint=CHAT, models=MODELS, max_requests=50, **options
    )


def only_error(result: ValidationResult) -> dict[str, object]:
    assert result.error_count == 1, result.errors
    [error] = result.errors
    assert (error["code"], error["param"]) == ("invalid_json_line", None)
    return error


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (CSV, "a CSV table"),
        (b"id;text\n1;hello\n2;bye\n", "a CSV table"),
        (b'"id","text"\n"1","hello"\n', "a CSV table"),
        (b"id\ttext\n1\thello\n2\tbye\n", "a TSV table"),
        (b'{\n  "custom_id": "r1",\n  "method": "POST"\n}\n', "a JSON document with an object"),
        (b"[\n" + REQUEST + b",\n" + REQUEST + b"\n]\n", "a JSON document with an array"),
        (b"PAR1\x15\x04\x15\x10\nmore\nbinary\n", "a Parquet file"),
        (b"PK\x03\x04\x14\x00\x06\x00\nxl/workbook.xml\n", "a ZIP archive"),
        (gzip.compress(REQUEST + b"\n" + REQUEST + b"\n"), "a gzip-compressed file"),
    ],
    ids=[
        "csv",
        "semicolons",
        "quoted-csv",
        "tsv",
        "pretty-object",
        "pretty-array",
        "parquet",
        "xlsx",
        "gzip",
    ],
)
def test_a_file_of_another_kind_gets_one_error(data: bytes, kind: str) -> None:
    result = run(data)
    error = only_error(result)
    assert error["line"] == 1
    message = str(error["message"])
    assert message.startswith(
        f"The input file is not JSONL: line 1 is not a JSON object (it looks like {kind}"
    )
    assert '{"custom_id": ..., "method": "POST", "url": ..., "body": {...}}' in message
    assert message.endswith(HINT)
    assert (result.total, result.model, result.ok) == (0, None, False)


def test_the_line_is_the_first_non_blank_one() -> None:
    error = only_error(run(b"\n  \r\n" + CSV))
    assert error["line"] == 3
    assert "line 3 is not a JSON object" in str(error["message"])


def test_the_rest_of_a_large_table_is_not_read() -> None:
    class CountingReader(io.BytesIO):
        read_bytes = 0

        def read(self, size: int | None = -1, /) -> bytes:
            chunk = super().read(size)
            self.read_bytes += len(chunk)
            return chunk

    table = CSV + b"x,1,some overview text of a movie\n" * 200_000  # 6.6 MB
    reader = CountingReader(table)
    result = validate_stream(reader, endpoint=CHAT, models=MODELS, max_requests=50)
    only_error(result)
    assert reader.read_bytes <= 1024 * 1024 < len(table)  # the first chunk only


def test_a_valid_first_line_keeps_the_errors_of_each_line() -> None:
    result = run(REQUEST + b"\n" + CSV)
    assert [(e["code"], e["line"]) for e in result.errors] == [
        ("invalid_json_line", 2),
        ("invalid_json_line", 3),
        ("invalid_json_line", 4),
    ]
    assert {e["message"] for e in result.errors} == {"This line is not parseable as valid JSON."}


@pytest.mark.parametrize(
    "first",
    [
        b'{"custom_id": "r1", "method": "POST",',  # a request cut short
        b',{"custom_id": "r1"}',  # stray bytes before a request: braces, so not a table
        b"x",  # a word: nothing says it is a table
        b"\x00",  # control bytes
        b"\xff\xfe{\x00\x22\x00",  # UTF-16
        b"[[[[",
    ],
)
def test_a_first_line_that_may_be_a_broken_request_keeps_per_line_errors(first: bytes) -> None:
    assert not_jsonl(1, first) is None
    result = run(first + b"\nnot json either, a, b\n")
    assert [(e["code"], e["line"]) for e in result.errors] == [
        ("invalid_json_line", 1),
        ("invalid_json_line", 2),
    ]


def test_json_lines_that_are_not_objects_keep_their_message() -> None:
    result = run(b'"a, b, c"\n[1, 2]\n')
    assert [(e["code"], e["line"]) for e in result.errors] == [
        ("invalid_request", 1),
        ("invalid_request", 2),
    ]


def test_the_upload_validator_leaves_it_to_the_batch() -> None:
    """At upload the endpoint is unknown (no url in a first line): validation waits for the
    batch, where ``validate_stream`` gives the one error."""
    validator = UploadValidator(models=MODELS, max_requests=50, max_errors=10, max_line_bytes=1024)
    validator.feed(CSV)
    assert validator.finish() is None


def test_first_line_not_jsonl_reads_the_first_non_blank_line(tmp_path: Path) -> None:
    assert first_line_not_jsonl(io.BytesIO(b"\n\n" + CSV)) is not None
    assert first_line_not_jsonl(io.BytesIO(REQUEST + b"\n" + CSV)) is None
    assert first_line_not_jsonl(io.BytesIO(b"")) is None
    assert first_line_not_jsonl(io.BytesIO(b"a," * 100 + b"\n"), max_line_bytes=10) is None


# --------------------------------------------------------------------------- batchd run


def test_batchd_run_on_a_csv_says_it_is_not_jsonl(tmp_path: Path) -> None:
    table = tmp_path / "movies.csv"
    table.write_bytes(CSV)
    for extra in ([], ["--endpoint", CHAT]):
        done = subprocess.run(
            [*BATCHD_RUN, str(table), "-o", str(tmp_path / "out.jsonl"), *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(
            f"batchd: {table}: The input file is not JSONL: line 1 is not a JSON object (it "
            "looks like a CSV table)."
        ), done.stderr
        assert HINT in done.stderr
        assert "--endpoint" not in done.stderr
        assert "Traceback" not in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["movies.csv"]  # no state dir


# --------------------------------------------------------------------------- through the server


def test_a_batch_on_an_uploaded_csv_fails_with_one_error(client: OpenAI) -> None:
    file_id = client.files.create(file=("movies.jsonl", CSV), purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    failed = wait_for_status(client, batch.id, {"in_progress", "failed"})
    assert failed.status == "failed"
    assert failed.errors is not None
    [error] = failed.errors.data
    assert (error.code, error.line, error.param) == ("invalid_json_line", 1, None)
    assert error.message is not None
    assert error.message.startswith("The input file is not JSONL: line 1")
    assert error.message.endswith(HINT)
