"""``batchd join --json-fields``: a JSON field named like another column gets a name of its own.

The model's JSON answer may have a field named like a column that batchd adds (``content``,
``status``, ...) or like a column of the table: the field is written as ``json_FIELD`` (and said
so on stderr), never refused, whatever ``--prefix``. What stays an error (an added column that the
table has, a ``--content-column`` that names another added column) gives a hint that works.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchd.tabular.formats import TableError
from batchd.tabular.results import Result, Results, result_columns
from tests.test_prepare_join import (
    IMDB,
    chat_result,
    cli,
    read_csv,
    user_error,
    write_csv,
    write_jsonl,
)

ANSWER = {"content": "x", "status": "y", "genre": "z"}


def answers(*contents: str) -> Results:
    return Results(by_id={f"row-{i}": Result("ok", content) for i, content in enumerate(contents)})


def columns_for(table: list[str], results: Results, **options: object) -> list[str]:
    settings: dict[str, object] = {
        "json_fields": "*",
        "content_column": "content",
        "prefix": "",
        "usage": False,
    } | options
    return result_columns(table, results, **settings).names  # type: ignore[arg-type]


def test_fields_named_like_added_or_table_columns_get_a_json_name() -> None:
    results = answers(json.dumps(ANSWER | {"title": "t", "error": "e"}))
    names = columns_for(["id", "title"], results)
    assert names == [
        "content",
        "json_content",
        "json_status",
        "genre",
        "json_title",
        "json_error",
        "parse_error",
        "finish_reason",
        "status",
        "error",
    ]
    columns = result_columns(
        ["id", "title"], results, json_fields="*", content_column="content", prefix="", usage=False
    )
    assert columns.renamed == (
        ("content", "json_content"),
        ("status", "json_status"),
        ("title", "json_title"),
        ("error", "json_error"),
    )
    assert dict(columns.fields)["genre"] == "genre"  # a free name is kept as it is


def test_the_prefix_applies_to_the_json_fields_too() -> None:
    results = answers(json.dumps(ANSWER))
    names = columns_for(["id", "content", "status"], results, prefix="r_")
    assert names[:4] == ["r_content", "r_json_content", "r_json_status", "r_genre"]
    assert not set(names) & {"content", "status"}


def test_a_renamed_field_never_lands_on_another_column() -> None:
    # the table has json_status, and the answer has both status and json_status
    results = answers(json.dumps({"status": 1, "json_status": 2, "json_status_2": 3}))
    columns = result_columns(
        ["id", "json_status_3"],
        results,
        json_fields="*",
        content_column="content",
        prefix="",
        usage=False,
    )
    assert dict(columns.fields) == {
        "status": "json_status_4",
        "json_status": "json_status",
        "json_status_2": "json_status_2",
    }
    assert len(set(columns.names)) == len(columns.names)


def test_listed_fields_are_taken_once() -> None:
    results = answers(json.dumps(ANSWER))
    names = columns_for(["id"], results, json_fields="genre, genre,status")
    assert names[:3] == ["content", "genre", "json_status"]


def test_an_added_column_in_the_table_asks_for_a_prefix_that_works() -> None:
    table = ["id", "status", "result_status", "result_content"]
    with pytest.raises(TableError) as caught:
        columns_for(table, answers("{}"))
    message = caught.value.message
    assert "'status'" in message
    assert message.endswith("--prefix result2_")  # result_ would clash too
    # and that prefix does work
    names = columns_for(table, answers("{}"), prefix="result2_")
    assert not set(names) & set(table)


def test_a_content_column_named_like_another_added_column_is_refused_with_a_hint() -> None:
    with pytest.raises(TableError) as caught:
        columns_for(["id"], answers("{}"), content_column="status")
    assert "--content-column 'status'" in caught.value.message
    assert "--content-column answer" in caught.value.message
    assert "--prefix" not in caught.value.message  # a prefix would not separate them


def test_join_json_fields_star_with_colliding_fields(tmp_path: Path) -> None:
    """The issue's case: ``--json-fields '*'`` on answers with content and status fields."""
    table = write_csv(tmp_path / "t.csv", [{"id": "m1", "Genre": "Drama"}, {"id": "m2"}])
    output = write_jsonl(
        tmp_path / "out.jsonl",
        [chat_result("m1", json.dumps(ANSWER)), chat_result("m2", "not json")],
    )
    joined = tmp_path / "joined.csv"
    result = cli(
        "join", output, "--table", table, "--id-column", "id", "--json-fields", "*", "-o", joined
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(joined)
    assert list(rows[0]) == [
        "id",
        "Genre",
        "content",
        "json_content",
        "json_status",
        "genre",
        "parse_error",
        "finish_reason",
        "status",
        "error",
    ]
    first = rows[0]
    assert (first["content"], first["status"]) == (json.dumps(ANSWER), "ok")
    assert (first["json_content"], first["json_status"], first["genre"]) == ("x", "y", "z")
    assert rows[1]["parse_error"].startswith("not JSON")
    assert "'content' as 'json_content'" in result.stderr
    assert "'status' as 'json_status'" in result.stderr


def test_join_the_hint_for_a_clash_with_the_table_works(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", [{"id": "m1", "status": "released"}])
    output = write_jsonl(tmp_path / "out.jsonl", [chat_result("m1", json.dumps(ANSWER))])
    joined = tmp_path / "joined.csv"
    args = ["join", output, "--table", table, "--id-column", "id", "--json-fields", "*"]
    stderr = user_error(cli(*args, "-o", joined))
    assert "--prefix result_" in stderr
    assert not joined.exists()
    result = cli(*args, "--prefix", "result_", "-o", joined)
    assert result.exit_code == 0, result.output
    [row] = read_csv(joined)
    assert (row["status"], row["result_status"], row["result_json_status"]) == (
        "released",
        "ok",
        "y",
    )
    assert row["result_json_content"] == "x"


@pytest.mark.skipif(not IMDB.exists(), reason=f"the IMDb data set is not at {IMDB}")
def test_the_readme_join_command(tmp_path: Path) -> None:
    """``batchd join results.jsonl --table imdb_top_1000.csv --id-column Series_Title --limit 50
    --json-fields '*' -o movies.csv``, on answers whose JSON has content and status fields."""
    import csv

    with IMDB.open(newline="", encoding="utf-8") as fh:
        titles = [
            row["Series_Title"] for _, row in zip(range(50), csv.DictReader(fh), strict=False)
        ]
    output = write_jsonl(
        tmp_path / "results.jsonl",
        [chat_result(title, json.dumps(ANSWER | {"summary": title})) for title in titles],
    )
    movies = tmp_path / "movies.csv"
    args = ["--id-column", "Series_Title", "--limit", 50, "--json-fields", "*", "-o", movies]
    result = cli("join", output, "--table", IMDB, *args)
    assert result.exit_code == 0, result.output
    rows = read_csv(movies)
    assert len(rows) == 50
    assert all(row["status"] == "ok" and row["json_status"] == "y" for row in rows)
    assert [row["summary"] for row in rows] == titles
    assert "50 ok, 0 failed, 0 without a result" in result.stderr
