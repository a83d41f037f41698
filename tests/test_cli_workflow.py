"""The whole path from the shell: ``batchd prepare`` → ``batchd run`` → ``batchd join`` on the
IMDb table of ``../shared/data``, against the fake upstream, every command a subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine_support import MODEL, model_route
from tests.serverproc import write_config
from tests.upstream import answers
from tests.upstream.process import UpstreamProcess

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imdb_top_1000.csv"
BATCHD = [sys.executable, "-m", "batchd"]
MOVIES = 50
TEMPLATE = {
    "model": MODEL,
    "response_format": {"type": "json_object"},
    "messages": [
        {
            "role": "system",
            "content": 'Answer in JSON: {{"categories": [1 to 3 genres], "summary": "..."}}',
        },
        {"role": "user", "content": "{Series_Title} ({Released_Year}): {Overview}"},
    ],
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tmp_path_factory.mktemp("upstream"), latency_ms=5) as up:
        yield up


def batchd(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*BATCHD, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


def test_prepare_run_join_on_the_imdb_table(tmp_path: Path, upstream: UpstreamProcess) -> None:
    if not DATA.is_file():
        pytest.skip(f"the IMDb data set is absent: {DATA} not found (../shared/data)")
    template = tmp_path / "request.json"
    template.write_text(json.dumps(TEMPLATE))
    config = write_config(tmp_path / "batchd.toml", models=[model_route(upstream)])
    ids = ["--id-column", "Series_Title"]

    batch = tmp_path / "batch.jsonl"
    batchd("prepare", DATA, *ids, "--template", template, "--limit", MOVIES, "-o", batch)
    batchd("run", batch, "-o", tmp_path / "out.jsonl", "--config", config)
    batchd(
        "join",
        tmp_path / "out.jsonl",
        "--table",
        DATA,
        *ids,
        "--limit",
        MOVIES,
        "--json-fields",
        "categories,summary",
        "-o",
        tmp_path / "joined.csv",
    )

    with DATA.open(newline="", encoding="utf-8") as fh:
        movies = [row for _, row in zip(range(MOVIES), csv.DictReader(fh), strict=False)]
    with (tmp_path / "joined.csv").open(newline="", encoding="utf-8") as fh:
        joined = list(csv.DictReader(fh))
    assert len(joined) == MOVIES
    for movie, row in zip(movies, joined, strict=True):
        for column, value in movie.items():  # the table's own columns, unchanged
            assert row[column] == value
        text = f"{movie['Series_Title']} ({movie['Released_Year']}): {movie['Overview']}"
        expected = answers.movie_answer(text)  # what the upstream answered for this very row
        assert row["status"] == "ok"
        assert json.loads(row["categories"]) == expected["categories"]
        assert row["summary"] == expected["summary"]
        assert json.loads(row["content"]) == expected
