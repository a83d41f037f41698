"""``batchd prepare`` and ``batchd join`` on real files: tables in, batch files, results back."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer.main
from typer.testing import CliRunner, Result

from batchd.cli import app

IMDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb_top_1000.csv"

SYSTEM = 'Answer in JSON: {{"categories": string[], "summary": string}}'
CHAT_TEMPLATE = {
    "temperature": 0.1,
    "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "{Series_Title} ({Released_Year}): {Overview}"},
    ],
}


def cli(*args: object) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def user_error(result: Result) -> str:
    """The stderr of a command that failed as a user error: exit 2, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    return result.stderr


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_template(path: Path, template: Any) -> Path:
    path.write_text(json.dumps(template), encoding="utf-8")
    return path


def chat_result(custom_id: str, content: str, finish_reason: str = "stop") -> dict[str, Any]:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    response = {"status_code": 200, "request_id": "req_1", "body": body}
    return {"id": "batch_req_1", "custom_id": custom_id, "response": response, "error": None}


def http_error(custom_id: str, status: int, code: str, message: str) -> dict[str, Any]:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    response = {"status_code": status, "request_id": "req_2", "body": body}
    return {"id": "batch_req_2", "custom_id": custom_id, "response": response, "error": None}


def batch_error(custom_id: str, code: str, message: str) -> dict[str, Any]:
    error = {"code": code, "message": message}
    return {"id": "batch_req_3", "custom_id": custom_id, "response": None, "error": error}


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".tmp"))


# --------------------------------------------------------------------------- prepare


@pytest.mark.skipif(not IMDB.exists(), reason=f"the IMDb data set is not at {IMDB}")
def test_prepare_and_join_the_first_50_movies(tmp_path: Path) -> None:
    template = write_template(tmp_path / "request.json", CHAT_TEMPLATE)
    batch = tmp_path / "batch.jsonl"
    result = cli(
        "prepare",
        IMDB,
        "--id-column",
        "Series_Title",
        "--template",
        template,
        "--model",
        "gpt-4o-mini",
        "--limit",
        50,
        "-o",
        batch,
    )
    assert result.exit_code == 0, result.output
    assert "read 50 rows" in result.stderr
    assert "wrote 50 requests" in result.stderr
    with IMDB.open(newline="", encoding="utf-8") as fh:
        movies = [row for row, _ in zip(csv.DictReader(fh), range(50), strict=False)]
    lines = batch.read_bytes().splitlines()
    assert len(lines) == 50
    requests = [json.loads(line) for line in lines]  # every line is valid JSON
    assert any('"' in movie["Overview"] for movie in movies)  # quotes to escape
    for movie, request in zip(movies, requests, strict=True):
        assert request["custom_id"] == movie["Series_Title"]
        assert request["method"] == "POST"
        assert request["url"] == "/v1/chat/completions"
        body = request["body"]
        assert body["model"] == "gpt-4o-mini"
        assert body["temperature"] == 0.1
        system, user = body["messages"]
        assert system["content"] == 'Answer in JSON: {"categories": string[], "summary": string}'
        expected = f"{movie['Series_Title']} ({movie['Released_Year']}): {movie['Overview']}"
        assert user["content"] == expected

    answers = [
        chat_result(r["custom_id"], json.dumps({"categories": ["Drama"], "summary": f"s{i}"}))
        for i, r in enumerate(requests)
        if i % 10
    ]
    output = write_jsonl(tmp_path / "output.jsonl", answers)
    joined = tmp_path / "joined.csv"
    result = cli(
        "join",
        output,
        "--table",
        IMDB,
        "--id-column",
        "Series_Title",
        "--limit",
        50,
        "--json-fields",
        "categories,summary",
        "-o",
        joined,
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(joined)
    assert len(rows) == 50
    assert [row["Series_Title"] for row in rows] == [movie["Series_Title"] for movie in movies]
    for i, row in enumerate(rows):
        if i % 10:
            assert (row["status"], row["summary"], row["categories"]) == (
                "ok",
                f"s{i}",
                '["Drama"]',
            )
        else:
            assert row["status"] == row["summary"] == row["content"] == ""
    assert "45 ok, 0 failed, 5 without a result" in result.stderr


def test_cells_are_json_escaped_and_never_read_as_placeholders(tmp_path: Path) -> None:
    tricky = [
        'He said "hi" \\ and left',
        "line one\nline two\ttabbed",
        "{Overview} and {{braces}} stay as written",
        "Amélie — 東京 😀",
    ]
    table = tmp_path / "t.csv"
    with table.open("w", newline="", encoding="utf-8-sig") as fh:  # with a byte order mark
        writer = csv.writer(fh)
        writer.writerow(["Title", "Overview"])
        writer.writerows([[f"t{i}", text] for i, text in enumerate(tricky)])
    batch = tmp_path / "batch.jsonl"
    result = cli(
        "prepare",
        table,
        "--template-string",
        '{"model": "m", "messages": [{"role": "user", "content": "<{Overview}>"}]}',
        "--id-prefix",
        "movie-",
        "-o",
        batch,
    )
    assert result.exit_code == 0, result.output
    requests = read_jsonl(batch)
    assert [r["custom_id"] for r in requests] == ["movie-1", "movie-2", "movie-3", "movie-4"]
    assert [r["body"]["messages"][0]["content"] for r in requests] == [f"<{t}>" for t in tricky]


def test_default_ids_are_row_numbers(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", [{"text": "a"}, {"text": "b"}])
    batch = tmp_path / "out.jsonl"
    template = '{"model": "e", "input": "{text}"}'
    result = cli(
        "prepare", table, "--template-string", template, "--url", "/v1/embeddings", "-o", batch
    )
    assert result.exit_code == 0, result.output
    assert [(r["custom_id"], r["url"], r["body"]) for r in read_jsonl(batch)] == [
        ("row-1", "/v1/embeddings", {"model": "e", "input": "a"}),
        ("row-2", "/v1/embeddings", {"model": "e", "input": "b"}),
    ]


def test_braces_escape_and_unmatched_brace(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", [{"a": "1"}])
    batch = tmp_path / "batch.jsonl"
    template = {"model": "m", "prompt": "{{literal}} {a} }}x{{ {{{a}}}"}
    result = cli(
        "prepare",
        table,
        "--template-string",
        json.dumps(template),
        "--url",
        "/v1/completions",
        "-o",
        batch,
    )
    assert result.exit_code == 0, result.output
    assert read_jsonl(batch)[0]["body"]["prompt"] == "{literal} 1 }x{ {1}"

    template["prompt"] = "an unmatched { here"
    stderr = user_error(
        cli(
            "prepare",
            table,
            "--template-string",
            json.dumps(template),
            "--url",
            "/v1/completions",
            "-o",
            tmp_path / "x.jsonl",
        )
    )
    assert "unmatched '{'" in stderr
    assert "body.prompt" in stderr
    assert "{{" in stderr


def test_missing_column_is_reported_before_writing(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", [{"Title": "x", "Overview": "y"}])
    batch = tmp_path / "batch.jsonl"
    template: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "{Plot} {Title}"}],
    }
    stderr = user_error(
        cli("prepare", table, "--template-string", json.dumps(template), "-o", batch)
    )
    assert "'Plot'" in stderr
    assert "Title, Overview" in stderr
    assert not batch.exists()
    # a JSON example in a prompt, braces not doubled: the hint says how to write them
    template["messages"][0]["content"] = 'Reply {"summary": string}'
    stderr = user_error(
        cli("prepare", table, "--template-string", json.dumps(template), "-o", batch)
    )
    assert "write {{ and }} for literal braces" in stderr
    stderr = user_error(
        cli(
            "prepare",
            table,
            "--template-string",
            '{"model": "m", "messages": []}',
            "--id-column",
            "Name",
            "-o",
            batch,
        )
    )
    assert "the custom_id names the column 'Name'" in stderr
    assert leftovers(tmp_path) == []


def test_duplicate_id_names_both_rows(tmp_path: Path) -> None:
    rows = [{"title": "A"}, {"title": "B"}, {"title": "A"}]
    table = write_csv(tmp_path / "t.csv", rows)
    batch = tmp_path / "batch.jsonl"
    result = cli(
        "prepare",
        table,
        "--template-string",
        '{"model": "m", "messages": []}',
        "--id-column",
        "title",
        "-o",
        batch,
    )
    stderr = user_error(result)
    assert "row 3" in stderr
    assert "of row 1" in stderr
    assert "'A'" in stderr
    assert "--id-template" in stderr
    assert not batch.exists()
    assert leftovers(tmp_path) == []


def test_id_template_and_empty_ids(tmp_path: Path) -> None:
    rows = [
        {"title": "Drishyam", "year": "2013", "plot": "p1"},
        {"title": "Drishyam", "year": "2015", "plot": "p2"},
        {"title": "", "year": "", "plot": "p3"},
    ]
    table = write_csv(tmp_path / "t.csv", rows)
    batch = tmp_path / "batch.jsonl"
    base = [
        "prepare",
        table,
        "--template-string",
        '{"model": "m", "input": "{plot}"}',
        "--url",
        "/v1/embeddings",
        "--id-template",
        "{title} ({year})",
        "-o",
        batch,
    ]
    assert cli(*base).exit_code == 0  # " ()" is not empty
    stderr = user_error(cli(*base[:-4], "--id-column", "title", "-o", batch))
    assert "row 2" in stderr
    stderr = user_error(cli(*base[:-4], "--id-template", "{title}{year}", "-o", batch))
    assert "row 3" in stderr
    assert "empty custom_id" in stderr
    result = cli(
        *base[:-4], "--id-template", "{title}-{year}", "--skip-empty", "title", "-o", batch
    )
    assert result.exit_code == 0, result.output
    assert "skipped 1" in result.stderr
    assert [r["custom_id"] for r in read_jsonl(batch)] == ["Drishyam-2013", "Drishyam-2015"]


def test_line_template_with_custom_id(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", [{"id": "7", "text": "hello"}])
    line = {
        "custom_id": "doc-{id}",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "e", "input": ["{text}", "literal"]},
    }
    template = write_template(tmp_path / "line.json", line)
    batch = tmp_path / "batch.jsonl"
    result = cli("prepare", table, "-t", template, "-o", batch)
    assert result.exit_code == 0, result.output
    assert read_jsonl(batch) == [
        {**line, "custom_id": "doc-7", "body": {"model": "e", "input": ["hello", "literal"]}}
    ]
    stderr = user_error(cli("prepare", table, "-t", template, "--id-column", "id", "-o", batch))
    assert "leave out --id-column" in stderr
    stderr = user_error(
        cli("prepare", table, "-t", template, "--url", "/v1/chat/completions", "-o", batch)
    )
    assert "contradicts" in stderr


def test_template_mistakes_fail_before_any_row(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", [{"a": "1"}])
    batch = tmp_path / "batch.jsonl"
    cases = {
        '{"messages": []}': "--model",
        '{"model": "m", "messages": [], "stream": true}': "stream",
        '{"model": "m", "input": "{a}"}': "'messages'",
        '{"model": "m", "messages": [}': "not valid JSON",
        "[1, 2]": "JSON object",
    }
    for template, message in cases.items():
        stderr = user_error(cli("prepare", table, "--template-string", template, "-o", batch))
        assert message in stderr, (template, stderr)
    assert "--template FILE" in user_error(cli("prepare", table, "-o", batch))
    assert not batch.exists()


def test_jsonl_table_cells_become_text(tmp_path: Path) -> None:
    rows = [
        {"id": 1, "score": 9.5, "ok": True, "tags": ["a", "b"], "meta": {"k": "v"}, "n": None},
        {"id": 2, "score": 7, "ok": False, "tags": [], "meta": {}},  # no "n"
    ]
    table = write_jsonl(tmp_path / "t.jsonl", rows)
    batch = tmp_path / "batch.jsonl"
    template = {"model": "m", "prompt": "{score}|{ok}|{tags}|{meta}|{n}"}
    result = cli(
        "prepare",
        table,
        "--template-string",
        json.dumps(template),
        "--url",
        "/v1/completions",
        "--id-column",
        "id",
        "-o",
        batch,
    )
    assert result.exit_code == 0, result.output
    assert [(r["custom_id"], r["body"]["prompt"]) for r in read_jsonl(batch)] == [
        ("1", '9.5|true|["a","b"]|{"k":"v"}|'),
        ("2", "7|false|[]|{}|"),
    ]


def test_parquet_table_read_by_record_batches(tmp_path: Path) -> None:
    table = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"id": list(range(10)), "text": [f"text {i}" for i in range(10)]}),
        table,
        row_group_size=3,
    )
    batch = tmp_path / "batch.jsonl"
    result = cli(
        "prepare",
        table,
        "--template-string",
        '{"model": "e", "input": "{text}"}',
        "--url",
        "/v1/embeddings",
        "--id-column",
        "id",
        "--id-prefix",
        "p",
        "--limit",
        7,
        "-o",
        batch,
    )
    assert result.exit_code == 0, result.output
    requests = read_jsonl(batch)
    assert [r["custom_id"] for r in requests] == [f"p{i}" for i in range(7)]
    assert requests[6]["body"]["input"] == "text 6"


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": ["x"]}), table)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    stderr = user_error(
        cli(
            "prepare",
            table,
            "--template-string",
            '{"model": "m", "prompt": "{a}"}',
            "--url",
            "/v1/completions",
            "-o",
            tmp_path / "b.jsonl",
        )
    )
    assert "pip install 'batchd[parquet]'" in stderr


def test_split_writes_numbered_parts(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", [{"text": str(i)} for i in range(5)])
    batch = tmp_path / "batch.jsonl"
    result = cli(
        "prepare",
        table,
        "--template-string",
        '{"model": "m", "prompt": "{text}"}',
        "--url",
        "/v1/completions",
        "--split",
        2,
        "-o",
        batch,
    )
    assert result.exit_code == 0, result.output
    parts = [tmp_path / f"batch-{i:03d}.jsonl" for i in (1, 2, 3)]
    assert [len(read_jsonl(part)) for part in parts] == [2, 2, 1]
    assert [r["custom_id"] for r in read_jsonl(parts[2])] == ["row-5"]
    assert not batch.exists()
    assert "3 files" in result.stderr
    assert leftovers(tmp_path) == []


def test_csv_details(tmp_path: Path) -> None:
    big = "x" * 300_000  # over csv's default field limit
    table = tmp_path / "t.txt"
    table.write_text(f"a;b\n{big};\u00e9\n\n", encoding="latin-1")
    batch = tmp_path / "batch.jsonl"
    args = [
        "prepare",
        table,
        "--template-string",
        '{"model": "m", "prompt": "{a}{b}"}',
        "--url",
        "/v1/completions",
        "-o",
        batch,
    ]
    assert "--format" in user_error(cli(*args))
    stderr = user_error(cli(*args, "--format", "csv", "--delimiter", ";"))
    assert "--encoding latin-1" in stderr
    result = cli(*args, "--format", "csv", "--delimiter", ";", "--encoding", "latin-1")
    assert result.exit_code == 0, result.output
    assert read_jsonl(batch)[0]["body"]["prompt"] == big + "\u00e9"
    assert "is the delimiter right?" in user_error(cli(*args, "--format", "csv"))
    table.write_text("a;b\n1;2;3\n", encoding="latin-1")
    assert "has 3 fields" in user_error(cli(*args, "--format", "csv", "--delimiter", ";"))


# --------------------------------------------------------------------------- join


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A table of 5 rows, ids m1 to m5; an output file with results for m1, m2, m4 and an id of
    no row; an error file with a 400 for m3. m5 has no result."""
    rows = [{"id": f"m{i}", "title": f"Movie {i}"} for i in range(1, 6)]
    table = write_csv(tmp_path / "movies.csv", rows)
    output = write_jsonl(
        tmp_path / "output.jsonl",
        [
            chat_result("m1", json.dumps({"categories": ["a", "b"], "summary": 'say "hi"'})),
            chat_result("m2", "```json\n" + json.dumps({"summary": "two", "extra": 2}) + "\n```"),
            chat_result("m4", "Sorry, no JSON", finish_reason="length"),
            chat_result("ghost", "{}"),
        ],
    )
    errors = write_jsonl(
        tmp_path / "errors.jsonl",
        [http_error("m3", 400, "context_length_exceeded", "too long")],
    )
    return table, output, errors


def test_join_to_csv(tmp_path: Path, prepared: tuple[Path, Path, Path]) -> None:
    table, output, errors = prepared
    joined = tmp_path / "joined.csv"
    result = cli(
        "join",
        output,
        "--errors",
        errors,
        "--table",
        table,
        "--id-column",
        "id",
        "--json-fields",
        "categories,summary",
        "--usage",
        "-o",
        joined,
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(joined)
    assert list(rows[0]) == [
        "id",
        "title",
        "content",
        "categories",
        "summary",
        "parse_error",
        "finish_reason",
        "status",
        "error",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    ]
    by_id = {row["id"]: row for row in rows}
    assert [row["id"] for row in rows] == ["m1", "m2", "m3", "m4", "m5"]
    assert by_id["m1"]["categories"] == '["a","b"]'
    assert by_id["m1"]["summary"] == 'say "hi"'
    assert (by_id["m1"]["status"], by_id["m1"]["parse_error"]) == ("ok", "")
    assert by_id["m1"]["total_tokens"] == "15"
    assert by_id["m2"]["summary"] == "two"  # the ```json fence is tolerated
    assert by_id["m3"]["status"] == "400"
    assert by_id["m3"]["error"] == "context_length_exceeded: too long"
    assert by_id["m3"]["content"] == by_id["m3"]["parse_error"] == ""
    assert by_id["m4"]["content"] == "Sorry, no JSON"
    assert by_id["m4"]["finish_reason"] == "length"
    assert by_id["m4"]["parse_error"].startswith("not JSON")
    assert by_id["m4"]["summary"] == ""
    assert all(value == "" for key, value in by_id["m5"].items() if key not in ("id", "title"))
    assert "3 ok, 1 failed, 1 without a result" in result.stderr
    assert "1 of 5 results have a custom_id that no row has" in result.stderr
    assert "'ghost'" in result.stderr


def test_join_to_parquet_with_every_field(
    tmp_path: Path, prepared: tuple[Path, Path, Path]
) -> None:
    table, output, errors = prepared
    joined = tmp_path / "joined.parquet"
    error_line = batch_error("m5", "batch_expired", "not run in time")
    expired = write_jsonl(tmp_path / "expired.jsonl", [error_line])
    result = cli(
        "join",
        output,
        errors,
        expired,
        "--table",
        table,
        "--id-column",
        "id",
        "--json-fields",
        "*",
        "--usage",
        "--prefix",
        "r_",
        "-o",
        joined,
    )
    assert result.exit_code == 0, result.output
    data = pq.read_table(joined)
    assert data.schema.field("r_total_tokens").type == pa.int64()
    assert data.schema.field("r_summary").type == pa.string()
    rows = {row["id"]: row for row in data.to_pylist()}
    assert rows["m1"]["r_categories"] == '["a","b"]'
    assert rows["m2"]["r_extra"] == "2"
    assert rows["m1"]["r_extra"] is None
    assert rows["m5"]["r_status"] == "batch_expired"
    assert rows["m5"]["r_error"] == "not run in time"
    assert rows["m3"]["r_total_tokens"] is None


def test_join_parquet_table_keeps_its_types_and_jsonl_keeps_values(tmp_path: Path) -> None:
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"n": [1, 2], "score": [0.5, None]}), table)
    output = write_jsonl(tmp_path / "out.jsonl", [chat_result("row-2", '{"tags": ["x"], "k": 1}')])
    joined = tmp_path / "joined.parquet"
    args = ["join", output, "--table", table, "--json-fields", "tags,k"]
    assert cli(*args, "-o", joined).exit_code == 0
    data = pq.read_table(joined)
    assert data.schema.field("n").type == pa.int64()
    assert data.schema.field("score").type == pa.float64()
    assert data.column("tags").to_pylist() == [None, '["x"]']
    as_jsonl = tmp_path / "joined.jsonl"
    assert cli(*args, "-o", as_jsonl).exit_code == 0
    rows = read_jsonl(as_jsonl)
    assert rows[1]["tags"] == ["x"]
    assert rows[1]["k"] == 1
    assert rows[0]["status"] is None


def test_join_embeddings(tmp_path: Path) -> None:
    table = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])
    body = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 1]}]}
    line = {"custom_id": "row-1", "response": {"status_code": 200, "body": body}, "error": None}
    output = write_jsonl(tmp_path / "out.jsonl", [line])
    joined = tmp_path / "joined.csv"
    assert cli("join", output, "--table", table, "-o", joined).exit_code == 0
    rows = read_csv(joined)
    assert json.loads(rows[0]["embedding"]) == [0.5, 1]
    assert rows[1]["embedding"] == ""
    assert cli("join", output, "--table", table, "--no-embeddings", "-o", joined).exit_code == 0
    assert "embedding" not in read_csv(joined)[0]


def test_join_user_errors(tmp_path: Path, prepared: tuple[Path, Path, Path]) -> None:
    table, output, _ = prepared
    clash = write_csv(tmp_path / "clash.csv", [{"id": "m1", "status": "released"}])
    joined = tmp_path / "joined.csv"
    stderr = user_error(cli("join", output, "--table", clash, "--id-column", "id", "-o", joined))
    assert "'status'" in stderr
    assert "--prefix" in stderr
    assert not joined.exists()
    batch_input = write_jsonl(tmp_path / "batch.jsonl", [{"custom_id": "m1", "body": {}}])
    stderr = user_error(cli("join", batch_input, "--table", table, "-o", joined))
    assert "not its input file" in stderr
    stderr = user_error(cli("join", output, "--table", table, "-o", tmp_path / "joined.xlsx"))
    assert "--format" in stderr
    assert leftovers(tmp_path) == []


def test_join_with_other_id_options_says_nothing_matched(
    tmp_path: Path, prepared: tuple[Path, Path, Path]
) -> None:
    table, output, _ = prepared
    joined = tmp_path / "joined.csv"
    result = cli("join", output, "--table", table, "-o", joined)  # ids row-1... not m1...
    assert result.exit_code == 0, result.output
    assert "0 ok, 0 failed, 5 without a result" in result.stderr
    assert "are the id options" in result.stderr


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("name", ["prepare", "join"])
def test_help_explains_every_option_with_an_example(name: str) -> None:
    result = cli(name, "--help")
    assert result.exit_code == 0
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    for param in command.params:
        for option in [*param.opts, *param.secondary_opts]:
            if option.startswith("-") and option != "--help":
                assert option in result.stdout, option
        if param.name != "help":
            assert "e.g." in (param.help or ""), param.name


def test_as_a_user_runs_it(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", [{"a": "1"}])
    main = "from batchd.cli import main; main()"

    def batchd(*args: object) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", main, *map(str, args)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    batch = tmp_path / "batch.jsonl"
    out = batchd(
        "prepare",
        table,
        "--template-string",
        '{"model": "m", "prompt": "{b}"}',
        "--url",
        "/v1/completions",
        "-o",
        batch,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("batchd: the template names the column 'b'")
    assert "Traceback" not in out.stderr
    out = batchd(
        "prepare",
        table,
        "--template-string",
        '{"model": "m", "prompt": "{a}"}',
        "--url",
        "/v1/completions",
        "-o",
        batch,
    )
    assert out.returncode == 0, out.stderr
    assert read_jsonl(batch)[0]["body"]["prompt"] == "1"
    umask = os.umask(0o022)
    os.umask(umask)
    assert batch.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it, not 0600
