"""End to end: the movie-categorisation workflow of the README's users.

One JSON-mode chat request per movie of the IMDb top 1000 (``../shared/data``), run by a real
``batchd serve`` against the fake upstream, then the results joined back to the CSV rows.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.engine_support import (
    CHAT,
    MODEL,
    Results,
    expected_usage,
    fetch_results,
    model_route,
    request_line,
    serving,
    submit,
    upstream_attempts,
    wait_for_batch,
)
from tests.schema import check_response, conforms
from tests.serverproc import BatchdServer
from tests.upstream import answers
from tests.upstream.process import UpstreamProcess

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imdb_top_1000.csv"
SYSTEM_PROMPT = (
    "You categorise movies. Answer with a JSON object with two keys: 'categories', a list of 1 to "
    "3 genres, and 'summary', a one-sentence summary of the plot."
)


def movie_rows() -> list[dict[str, str]]:
    if not DATA.is_file():
        pytest.skip(f"the IMDb data set is absent: {DATA} not found (../shared/data)")
    with DATA.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def custom_id(index: int) -> str:
    return f"imdb-{index:04d}"


def movie_body(row: dict[str, str]) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row["Overview"]},
        ],
        "response_format": {"type": "json_object"},
        "temperature": 0,
    }


@dataclass
class Run:
    rows: list[dict[str, str]]
    bodies: dict[str, dict[str, Any]]
    batch: dict[str, Any]
    results: Results
    client: OpenAI
    server: BatchdServer
    upstream: UpstreamProcess
    seconds: float


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    rows = movie_rows()
    root = tmp_path_factory.mktemp("movies")
    with UpstreamProcess(root, latency_ms=5, jitter_ms=10, seed=1) as upstream:
        route = model_route(upstream, timeout=10.0)
        with serving(root / "batchd", upstream, route) as (server, client):
            bodies = {custom_id(i): movie_body(row) for i, row in enumerate(rows)}
            lines = [request_line(cid, body) for cid, body in bodies.items()]
            started = time.monotonic()
            batch_id = submit(client, lines, "movies.jsonl")
            batch = wait_for_batch(client, server, batch_id, {"completed"}, timeout=120)
            seconds = time.monotonic() - started
            results = fetch_results(client, batch, list(bodies))
            yield Run(rows, bodies, batch, results, client, server, upstream, seconds)


def test_every_movie_is_answered(run: Run) -> None:
    total = len(run.rows)
    assert total == 1000
    assert run.batch["status"] == "completed"
    assert run.batch["request_counts"] == {"total": total, "completed": total, "failed": 0}
    assert run.batch["error_file_id"] is None
    assert len(run.results.output) == total
    assert [line["custom_id"] for line in run.results.output] == list(run.bodies)
    # each body reached the upstream exactly once (no faults: nothing to retry)
    assert upstream_attempts(run.upstream, run.bodies.values()) == [1] * total


def test_responses_are_the_upstream_answers(run: Run) -> None:
    for line in run.results.output:
        body = run.bodies[line["custom_id"]]
        response = line["response"]
        assert response["status_code"] == 200
        assert isinstance(response["request_id"], str)
        assert response["request_id"]
        assert response["body"] == answers.chat_completion(body), line["custom_id"]


def test_join_categories_back_to_the_csv(run: Run) -> None:
    by_id = run.results.by_custom_id()
    joined = []
    for i, row in enumerate(run.rows):
        content = by_id[custom_id(i)]["response"]["body"]["choices"][0]["message"]["content"]
        answer = json.loads(content)
        assert set(answer) == {"categories", "summary"}, answer
        assert 1 <= len(answer["categories"]) <= 3
        assert set(answer["categories"]) <= set(answers.GENRES)
        assert answer == answers.movie_answer(row["Overview"]), row["Series_Title"]
        joined.append({**row, "categories": answer["categories"], "summary": answer["summary"]})
    assert len(joined) == len(run.rows)
    assert all(movie["categories"] for movie in joined)
    assert joined[0]["Series_Title"] == run.rows[0]["Series_Title"]
    # the answers differ from movie to movie: a mix-up of lines would show here
    assert len({tuple(movie["categories"]) for movie in joined}) > 50


def test_usage_is_the_sum_of_the_output_lines(run: Run) -> None:
    usage = run.batch["usage"]
    assert usage == expected_usage(run.results.output)
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 0
    wanted = sum(answers.chat_completion(b)["usage"]["total_tokens"] for b in run.bodies.values())
    assert usage["total_tokens"] == wanted


def test_batch_object_and_files(run: Run) -> None:
    batch = run.batch
    conforms("Batch", batch)
    assert batch["model"] == MODEL
    assert batch["endpoint"] == CHAT
    assert batch["errors"] is None
    for key in ("in_progress_at", "finalizing_at", "completed_at"):
        assert isinstance(batch[key], int), (key, batch[key])
    assert batch["created_at"] <= batch["in_progress_at"] <= batch["finalizing_at"]
    assert batch["finalizing_at"] <= batch["completed_at"]
    for key in ("failed_at", "expired_at", "cancelling_at", "cancelled_at"):
        assert batch[key] is None, (key, batch[key])
    output = check_response(
        run.client.files.with_raw_response.retrieve(batch["output_file_id"]), "OpenAIFile"
    )
    assert output["purpose"] == "batch_output"
    content = run.client.files.content(batch["output_file_id"]).content
    assert output["bytes"] == len(content)
    listed = [b.id for b in run.client.batches.list(limit=10)]
    assert batch["id"] in listed
    print(f"1,000 movie requests: {run.seconds:.1f}s from upload to completed")
