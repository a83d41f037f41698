"""End to end: the ``batchd serve`` process: one server per data directory, durability across a
``kill -9``, and batches resumed after a crash."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai import OpenAI

from tests.conftest import wait_for_status
from tests.schema import check_response
from tests.serverproc import BatchdServer, free_port, models_at, write_config
from tests.upstream.process import UpstreamProcess

CHAT = "/v1/chat/completions"


def jsonl(n: int, prefix: str = "req") -> bytes:
    line = '{"custom_id":"%s-%d","method":"POST","url":"/v1/chat/completions",' + (
        '"body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}}\n'
    )
    return "".join(line % (prefix, i) for i in range(n)).encode()


def sdk(srv: BatchdServer) -> OpenAI:
    return OpenAI(base_url=srv.api_url, api_key="k", max_retries=0)


def serve_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}


def test_second_server_on_the_same_data_dir_exits(server: BatchdServer, client: OpenAI) -> None:
    assert server.proc is not None
    for _ in range(2):  # a refused start leaves the lock with the first process
        second = BatchdServer(server.data_dir, server.config, port=free_port())
        started = time.monotonic()
        result = subprocess.run(
            second.command(), capture_output=True, env=serve_env(), timeout=15, check=False
        )
        elapsed = time.monotonic() - started
        assert result.returncode != 0
        assert elapsed < 10
        stderr = result.stderr.decode(errors="replace")
        assert str(server.data_dir) in stderr, stderr
        assert f"pid {server.proc.pid}" in stderr, stderr
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(f"{second.base_url}/health")

    assert server.alive()
    health = httpx2.get(f"{server.base_url}/health")
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    uploaded = client.files.create(file=("after.jsonl", jsonl(1)), purpose="batch")
    assert client.files.content(uploaded.id).content == jsonl(1)


def _snapshot(c: OpenAI, file_ids: list[str], batch_ids: list[str]) -> dict[str, Any]:
    """Everything the API says about these objects, raw JSON and contents."""
    return {
        "files": {
            fid: check_response(c.files.with_raw_response.retrieve(fid), "OpenAIFile")
            for fid in file_ids
        },
        "contents": {fid: c.files.content(fid).content for fid in file_ids},
        "batches": {
            bid: check_response(c.batches.with_raw_response.retrieve(bid), "Batch")
            for bid in batch_ids
        },
        "file_list": json.loads(c.files.with_raw_response.list().text),
        "batch_list": json.loads(c.batches.with_raw_response.list(limit=100).text),
    }


def test_everything_survives_kill_9(tmp_path: Path, held_upstream: UpstreamProcess) -> None:
    config = write_config(
        tmp_path / "batchd.toml",
        models=models_at(held_upstream.api_url),
        cancel_grace_seconds=0.2,
    )
    data_dir = tmp_path / "data"
    srv = BatchdServer(data_dir, config).start()
    try:
        with sdk(srv) as c:
            input_id = c.files.create(file=("in.jsonl", jsonl(4, "dur")), purpose="batch").id
            binary = os.urandom(256 * 1024) + bytes(range(256))
            binary_id = c.files.create(file=("blob.bin", binary), purpose="user_data").id
            deleted_id = c.files.create(file=b"short-lived", purpose="user_data").id
            c.files.delete(deleted_id)

            running = c.batches.create(
                input_file_id=input_id,
                endpoint=CHAT,
                completion_window="24h",
                metadata={"kept": "yes"},
            )
            wait_for_status(c, running.id, {"in_progress"})
            cancelled = c.batches.create(
                input_file_id=input_id, endpoint=CHAT, completion_window="24h"
            )
            wait_for_status(c, cancelled.id, {"in_progress"})
            c.batches.cancel(cancelled.id)
            error_file_id = wait_for_status(c, cancelled.id, {"cancelled"}).error_file_id
            assert error_file_id is not None
            failed = c.batches.create(
                input_file_id="file-Gone00000000000000000000",
                endpoint=CHAT,
                completion_window="24h",
            )
            wait_for_status(c, failed.id, {"failed"})
            last = c.files.create(file=("last.jsonl", jsonl(2, "last")), purpose="batch")

            file_ids = [input_id, binary_id, error_file_id, last.id]
            batch_ids = [running.id, cancelled.id, failed.id]
            before = _snapshot(c, file_ids, batch_ids)
            assert before["contents"][binary_id] == binary
            # the last write is followed by the kill at once
    finally:
        srv.kill()
    assert srv.proc is not None
    assert srv.proc.returncode == -signal.SIGKILL

    restarted = BatchdServer(data_dir, config).start()
    try:
        with sdk(restarted) as c:
            after = _snapshot(c, file_ids, batch_ids)
            assert after == before
            assert after["contents"][binary_id] == binary
            assert after["contents"][last.id] == jsonl(2, "last")
            with pytest.raises(openai.NotFoundError):
                c.files.retrieve(deleted_id)
            # the restarted server carries on with the batch that was running
            assert c.batches.retrieve(running.id).status == "in_progress"
            c.batches.cancel(running.id)
            done = wait_for_status(c, running.id, {"cancelled"})
            assert done.request_counts is not None
            assert (done.request_counts.total, done.request_counts.failed) == (4, 4)
            assert done.error_file_id is not None
            lines = c.files.content(done.error_file_id).content.splitlines()
            assert [json.loads(x)["custom_id"] for x in lines] == [f"dur-{i}" for i in range(4)]
    finally:
        restarted.stop()


def _status_on_disk(data_dir: Path, batch_id: str) -> str | None:
    """The status the dead server left in its database (read-only: nothing is repaired)."""
    db = data_dir / "batchd.sqlite3"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
    finally:
        con.close()
    return None if row is None else str(row[0])


def test_batch_killed_while_validating_is_validated_after_restart(
    tmp_path: Path, held_upstream: UpstreamProcess
) -> None:
    lines = 60_000  # validation takes a few hundred milliseconds: time enough to kill the server
    config = write_config(
        tmp_path / "batchd.toml",
        models=models_at(held_upstream.api_url),
        max_requests_per_batch=100_000,
    )
    data_dir = tmp_path / "data"
    srv = BatchdServer(data_dir, config).start()
    batch_id = None
    try:
        with sdk(srv) as c:
            input_id = c.files.create(file=("big.jsonl", jsonl(lines)), purpose="batch").id
        for attempt in range(3):
            if attempt:  # validation won the race last time: try again
                srv = BatchdServer(data_dir, config).start()
            with sdk(srv) as c:
                candidate = c.batches.create(
                    input_file_id=input_id, endpoint=CHAT, completion_window="24h"
                )
            srv.kill()
            assert candidate.status == "validating"
            if _status_on_disk(data_dir, candidate.id) == "validating":
                batch_id = candidate.id
                break
    finally:
        srv.kill()
    assert batch_id is not None, "validation always finished before the kill"

    restarted = BatchdServer(data_dir, config).start()
    try:
        with sdk(restarted) as c:
            batch = wait_for_status(c, batch_id, {"in_progress", "failed"})
            assert batch.status == "in_progress", batch.errors
            assert batch.request_counts is not None
            assert batch.request_counts.total == lines
            assert batch.model == "gpt-4o-mini"
            assert batch.errors is None
        assert f"batch {batch_id}: resuming validation" in restarted.log()
    finally:
        restarted.stop()
