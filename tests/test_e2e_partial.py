"""Partial results through a real ``batchd serve``: read again and again while a batch runs,
every read is a consistent snapshot (its count header matches its lines, no duplicates, every
line exactly as in the final files, nothing read earlier missing later), and the union of the
reads is the final output and error files. One process (the journal, completion order) and
shared mode on PostgreSQL (result rows, an API process without an engine and a worker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.engine_support import model_route, shared_mode
from tests.serverproc import BatchdServer, batchd, write_config
from tests.upstream.process import UpstreamProcess

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def requests_file(n: int, *, fail_every: int = 10) -> bytes:
    """``n`` chat requests; every ``fail_every``-th gets a 400 from the fake upstream."""
    lines = []
    for i in range(n):
        text = "FAULT:400" if i % fail_every == 3 else f"hello {i}"
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
        line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
        lines.append(orjson.dumps({**line, "body": body}))
    return b"\n".join(lines) + b"\n"


@dataclass
class Reads:
    """What the partial reads of one file (``output`` or ``errors``) saw."""

    which: str
    ordered: bool
    """Completion order (the journal): each read extends the one before (a prefix)."""
    last: list[bytes] = field(default_factory=list)
    union: dict[str, bytes] = field(default_factory=dict)
    partial_reads: int = 0
    """Reads that held some lines but not all (while the batch ran)."""

    def check(self, response: httpx.Response, total: int) -> str:
        """Check one read; the batch status it reports."""
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/jsonl")
        lines = response.content.splitlines(keepends=True)
        assert int(response.headers["x-batchd-partial-lines"]) == len(lines)
        ids = [orjson.loads(line)["custom_id"] for line in lines]
        assert len(set(ids)) == len(ids), "a line twice in one read"
        for custom_id, line in zip(ids, lines, strict=True):
            record = orjson.loads(line)
            assert list(record) == ["id", "custom_id", "response", "error"]
            ok = record["response"] is not None and record["response"]["status_code"] == 200
            assert ok == (self.which == "output"), line
            assert self.union.setdefault(custom_id, line) == line, "a line changed between reads"
        status = response.headers["x-batchd-batch-status"]
        if self.ordered and status not in TERMINAL:  # (the final file is in request order)
            assert lines[: len(self.last)] == self.last, "a read is not a prefix of the next"
        else:
            assert set(self.last) <= set(lines), "a line read before is missing"
        self.last = lines
        if status not in TERMINAL and 0 < len(lines) < total:
            self.partial_reads += 1
        assert response.headers["x-batchd-partial-final"] == str(status in TERMINAL).lower()
        return status


def read_while_running(api_url: str, batch_id: str, total: int, *, ordered: bool) -> dict[str, Any]:
    """Read both partial files until the batch ends; check the reads against the final files."""
    reads = {which: Reads(which, ordered) for which in ("output", "errors")}
    with httpx.Client(base_url=api_url, timeout=30) as client:
        return _read_until_the_end(client, reads, batch_id, total)


def _read_until_the_end(
    client: httpx.Client, reads: dict[str, Reads], batch_id: str, total: int
) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    status = "validating"
    while status not in TERMINAL:
        assert time.monotonic() < deadline, f"batch {batch_id} still {status}"
        for which, seen in reads.items():
            status = seen.check(client.get(f"/batches/{batch_id}/partial/{which}"), total)
        time.sleep(0.02)
    for which, seen in reads.items():  # after the end: the final files' whole content
        assert seen.check(client.get(f"/batches/{batch_id}/partial/{which}"), total) in TERMINAL
    batch = client.get(f"/batches/{batch_id}").json()
    assert batch["status"] == "completed", batch
    for which, key in (("output", "output_file_id"), ("errors", "error_file_id")):
        final = client.get(f"/files/{batch[key]}/content").content
        final_lines = final.splitlines(keepends=True)
        assert reads[which].last == final_lines  # the read after the end is the final file
        assert set(reads[which].union.values()) == set(final_lines)
        assert reads[which].partial_reads >= 2, f"no read of {which} saw the batch half done"
    counts = batch["request_counts"]
    assert (counts["completed"], counts["failed"]) == (
        len(reads["output"].union),
        len(reads["errors"].union),
    )
    return batch


def start_batch(api_url: str, n: int) -> str:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        return _start_batch(client, n)


def _start_batch(client: httpx.Client, n: int) -> str:
    files = {"file": ("in.jsonl", requests_file(n), "application/jsonl")}
    uploaded = client.post("/files", files=files, data={"purpose": "batch"})
    assert uploaded.status_code == 200, uploaded.text
    body = {
        "input_file_id": uploaded.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    created = client.post("/batches", json=body)
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[UpstreamProcess]:
    (tmp_path / "upstream").mkdir()
    with UpstreamProcess(tmp_path / "upstream", latency_ms=15, jitter_ms=10) as proc:
        yield proc


def test_partial_reads_while_a_5000_request_batch_runs(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    config = write_config(
        tmp_path / "batchd.toml", models=[model_route(upstream, max_concurrency=16)]
    )
    server = BatchdServer(tmp_path / "data", config).start()
    try:
        batch_id = start_batch(server.api_url, 5000)
        batch = read_while_running(server.api_url, batch_id, 5000, ordered=True)
        assert batch["request_counts"] == {"total": 5000, "completed": 4500, "failed": 500}
        _cli_partial_download_and_join(server, tmp_path)
    finally:
        server.stop()


def _cli_partial_download_and_join(server: BatchdServer, tmp_path: Path) -> None:
    """``batchd download --partial`` of a batch in progress, and ``batchd join`` of what it
    wrote: the requests without a result yet are reported missing."""
    batch_id = start_batch(server.api_url, 3000)
    with httpx.Client(base_url=server.api_url, timeout=30) as client:
        _download_and_join(client, server, batch_id, tmp_path)


def _download_and_join(
    client: httpx.Client, server: BatchdServer, batch_id: str, tmp_path: Path
) -> None:
    deadline = time.monotonic() + 60
    while (
        int(client.get(f"/batches/{batch_id}/partial/output").headers["x-batchd-partial-lines"])
        < 100
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    out = tmp_path / "partial"
    env = {"OPENAI_BASE_URL": server.api_url, "OPENAI_API_KEY": "k"}
    done = batchd("download", batch_id, "--partial", "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    output = out / f"{batch_id}_output.partial.jsonl"
    errors = out / f"{batch_id}_errors.partial.jsonl"
    got = output.read_bytes().splitlines() + errors.read_bytes().splitlines()
    assert 100 <= len(got) < 3000, done.stderr
    assert done.stdout.split() == [str(output), str(errors)]
    assert "partial results" in done.stderr
    table = tmp_path / "table.csv"
    table.write_text("id,text\n" + "".join(f"r{i},hello {i}\n" for i in range(3000)))
    joined = tmp_path / "joined.csv"
    result = batchd(
        "join",
        str(output),
        "--errors",
        str(errors),
        "--table",
        str(table),
        "--id-column",
        "id",
        "-o",
        str(joined),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    without = 3000 - len(got)
    assert f"wrote 3000 rows to {joined}" in result.stderr
    assert f"{without} without a result" in result.stderr
    client.post(f"/batches/{batch_id}/cancel")


def test_partial_reads_in_shared_mode(tmp_path: Path, upstream: UpstreamProcess) -> None:
    """An API process without an engine reads the rows a worker writes (request order)."""
    with shared_mode(tmp_path, upstream, worker_args=("--log-format", "json")) as (api, worker):
        batch_id = start_batch(api.api_url, 1500)
        batch = read_while_running(api.api_url, batch_id, 1500, ordered=False)
        assert batch["request_counts"] == {"total": 1500, "completed": 1350, "failed": 150}
    entries = [orjson.loads(line) for line in worker.log().splitlines() if line.strip()]
    assert any(batch_id in entry["message"] for entry in entries)  # `batchd worker`: JSON
