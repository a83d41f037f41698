"""Retrying a batch's failures: ``POST /v1/batches/{id}/retry`` and ``batchd retry`` through a
real ``batchd serve`` against the fake upstream (``FAULT:500x2`` fails a body's first two
attempts, so with ``max_attempts = 2`` it ends in the error file and passes when retried), the
input of the retry batch line for line, ``--all-errors``, the refusals, and ``batchd join``
merging a batch's files with its retry's in any order."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from openai import OpenAI
from openai.types import Batch
from typer.testing import CliRunner

from batchd.cli import app
from batchd.service.retry import RETRY_OF, _lines, retryable
from tests.engine_support import (
    CHAT,
    Served,
    chat_body,
    fetch_results,
    request_line,
    served,
    submit,
    to_jsonl,
    wait_for_batch,
)
from tests.serverproc import batchd

LINES = [
    request_line("ok-1", chat_body("hello")),
    request_line("r500", chat_body("flaky FAULT:500x2")),
    request_line("ok-2", chat_body("world")),
    request_line("r429", chat_body("busy FAULT:429x2")),
    request_line("bad", chat_body("FAULT:400")),
]


# -- which failures are retried ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"response": {"status_code": 500}, "error": None}, True),
        ({"response": {"status_code": 503}, "error": None}, True),
        ({"response": {"status_code": 429}, "error": None}, True),
        ({"response": {"status_code": 408}, "error": None}, True),
        ({"response": {"status_code": 409}, "error": None}, True),
        ({"response": {"status_code": 400}, "error": None}, False),
        ({"response": {"status_code": 404}, "error": None}, False),
        ({"response": None, "error": {"code": "request_timeout"}}, True),
        ({"response": None, "error": {"code": "connection_error"}}, True),
        ({"response": None, "error": {"code": "batch_cancelled"}}, True),
        ({"response": None, "error": {"code": "batch_expired"}}, True),
        ({"response": None, "error": {"code": "model_not_found"}}, True),
        ({"response": None, "error": {"code": "invalid_request"}}, False),
        ({"response": None, "error": None}, False),
        ("not an object", False),
    ],
)
def test_retryable(line: Any, expected: bool) -> None:
    assert retryable(line) is expected


@pytest.mark.anyio
async def test_lines_of_a_stream_whatever_its_chunks() -> None:
    async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    got = [line async for line in _lines(chunks(b'{"a"', b":1}\n{", b'"b":2}\n\n{"c":3}'))]
    assert got == [b'{"a":1}\n', b'{"b":2}\n', b"\n", b'{"c":3}\n']


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("retry")
    with served(
        root,
        {"timeout": 1.0, "max_concurrency": 8},
        {"retry_after": 0.05},
        max_attempts=2,
        retry_base_seconds=0.05,
        retry_cap_seconds=0.2,
        progress_interval_seconds=0.2,
    ) as env:
        yield env


def retry(client: OpenAI, batch_id: str, **body: Any) -> Batch:
    return client.post(f"/batches/{batch_id}/retry", body=body, cast_to=Batch)


def finished(env: Served, batch_id: str) -> dict[str, Any]:
    return wait_for_batch(env.client, env.server, batch_id, timeout=60)


def input_lines(client: OpenAI, batch: Batch) -> list[bytes]:
    return client.files.content(batch.input_file_id).content.splitlines(keepends=True)


def test_retry_runs_the_retryable_failures_again(env: Served, tmp_path: Path) -> None:
    client = env.client
    first_id = submit(client, LINES)
    first = finished(env, first_id)
    codes = {
        line["custom_id"]: line["response"]["status_code"]
        for line in fetch_results(client, first).errors
    }
    assert codes == {"r500": 500, "r429": 429, "bad": 400}

    again = retry(client, first_id)
    assert again.id != first_id
    assert again.metadata == {RETRY_OF: first_id}
    assert (again.endpoint, again.completion_window) == (CHAT, "24h")
    # the input lines of the retried requests, byte for byte and in input order
    original = to_jsonl(LINES).splitlines(keepends=True)
    assert input_lines(client, again) == [original[1], original[3]]
    done = finished(env, again.id)
    results = fetch_results(client, done, ["r500", "r429"])
    assert [line["custom_id"] for line in results.output] == ["r500", "r429"]
    assert done["error_file_id"] is None

    # nothing left to retry in the retry; the first batch's 400 only with all_errors
    with pytest.raises(openai.BadRequestError) as nothing:
        retry(client, again.id)
    assert nothing.value.code == "nothing_to_retry"
    everything = retry(client, first_id, all_errors=True)
    assert [orjson.loads(line)["custom_id"] for line in input_lines(client, everything)] == [
        "r500",
        "r429",
        "bad",
    ]
    still_bad = finished(env, everything.id)
    assert [line["custom_id"] for line in fetch_results(client, still_bad).errors] == ["bad"]
    with pytest.raises(openai.BadRequestError) as only_400:
        retry(client, everything.id)
    assert only_400.value.code == "nothing_to_retry"
    assert "all_errors" in only_400.value.message

    # batchd join: the first batch's files and the retry's, the retry's output first
    paths = {}
    for name, file_id in (
        ("retry-out", done["output_file_id"]),
        ("out", first["output_file_id"]),
        ("err", first["error_file_id"]),
    ):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_bytes(client.files.content(file_id).content)
    table = tmp_path / "table.csv"
    table.write_text("id\n" + "".join(f"{line['custom_id']}\n" for line in LINES))
    joined = tmp_path / "joined.csv"
    result = CliRunner().invoke(
        app,
        [
            "join",
            *(str(paths[name]) for name in ("retry-out", "out", "err")),
            "--table",
            str(table),
            "--id-column",
            "id",
            "-o",
            str(joined),
        ],
    )
    assert result.exit_code == 0, result.output
    with joined.open() as fh:
        status = {row["id"]: row["status"] for row in csv.DictReader(fh)}
    assert status == {"ok-1": "ok", "r500": "ok", "ok-2": "ok", "r429": "ok", "bad": "400"}
    assert "a success won over a failure" in result.output


def test_retry_refusals(env: Served) -> None:
    client = env.client
    with pytest.raises(openai.NotFoundError):
        retry(client, "batch_nonexistent")
    running = submit(client, [request_line("slow", chat_body("FAULT:hang"))])
    with pytest.raises(openai.ConflictError) as not_ended:
        retry(client, running)
    assert not_ended.value.code == "batch_not_ended"
    client.batches.cancel(running)
    for body, param in (({"all": True}, "all"), ({"all_errors": "yes"}, "all_errors")):
        with pytest.raises(openai.BadRequestError) as bad:
            retry(client, running, **body)
        assert bad.value.param == param
    clean = finished(env, submit(client, [request_line("fine", chat_body("ok"))]))
    with pytest.raises(openai.BadRequestError) as nothing:
        retry(client, clean["id"])
    assert nothing.value.code == "nothing_to_retry"


def test_batchd_retry_command(env: Served) -> None:
    client = env.client
    first_id = submit(client, [request_line("again", chat_body("FAULT:500x2 once more"))])
    finished(env, first_id)
    result = batchd(
        "retry", first_id, "--wait", "--interval", "0.2", "--base-url", env.server.api_url
    )
    assert result.returncode == 0, result.stderr
    new_id = result.stdout.strip()
    assert new_id.startswith("batch_")
    assert new_id != first_id
    batch = client.batches.retrieve(new_id)
    assert batch.status == "completed"
    assert batch.metadata == {RETRY_OF: first_id}
    assert f"created batch {new_id} retrying {first_id}" in result.stderr
    missing = batchd("retry", "batch_nonexistent", "--base-url", env.server.api_url)
    assert missing.returncode == 1
    assert "not found" in missing.stderr
