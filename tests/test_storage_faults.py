"""Storage faults are errors, not crashes: ``batchd serve`` with its data directory on a small
tmpfs (mounted by the test, so it runs as root only), driven by the openai SDK.

- An upload onto a full disk gets a 507 in the OpenAI envelope that says why, nothing of it is
  stored or listed, and the server stays up; once space returns, uploads work again.
- A batch whose journal cannot be written (the disk filled while it runs) pauses: its
  ``request_counts`` stop, the log says why once (not every second), and it resumes by itself
  when the space returns, with every custom_id exactly once.
- Where files live read-only: an upload gets a 503 that says so; a batch that cannot write its
  output file waits in ``finalizing`` and completes once the files are writable again; a batch
  whose journal directory is read-only waits in ``in_progress`` and completes once it is
  writable again.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import openai
import pytest
from openai import OpenAI

from tests.engine_support import (
    chat_body,
    fetch_results,
    model_route,
    request_line,
    sdk,
    submit,
    wait_for_batch,
    wait_until,
)
from tests.serverproc import BatchdServer, write_config
from tests.upstream.process import UpstreamProcess

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="mounts a small tmpfs to fill it: needs root (as the suite runs in CI)",
)


def _mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def _fill(directory: Path) -> Path:
    """Write a file into ``directory`` until its filesystem has no byte left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 12, 1):
            while _wrote(fh, size):
                pass
    return filler


def _wrote(fh: BinaryIO, size: int) -> bool:
    """Whether ``size`` bytes more fit (``False`` once the filesystem is full)."""
    try:
        fh.write(b"\0" * size)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return False
    return True


@dataclass
class Env:
    root: Path
    upstream: UpstreamProcess
    server: BatchdServer
    client: OpenAI


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[UpstreamProcess]:
    proc = UpstreamProcess(tmp_path, latency_ms=100).start()
    yield proc
    proc.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/small``: a 32 MB tmpfs, with ``data/files`` (the blobs) and ``data/journals``
    tmpfs of their own (so that each can be made read-only alone: Linux refuses to remount
    read-only a filesystem with files open for writing, as the database is all along)."""
    disk = tmp_path / "small"
    _mount(disk, "32m")
    parts = [disk / "data" / "files", disk / "data" / "journals"]
    try:
        for part in parts:
            _mount(part, "16m")
        yield disk
    finally:
        for path in (*parts, disk):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def env(tmp_path: Path, small_disk: Path, upstream: UpstreamProcess) -> Iterator[Env]:
    """``batchd serve`` with its data directory on the small disk; its config and log beside
    it, on the test's own disk (so that the log is whole whatever the small one refuses)."""
    route = model_route(upstream, max_concurrency=4, timeout=10.0)
    config = write_config(tmp_path / "batchd.toml", models=[route], lease_seconds=3.0)
    server = BatchdServer(small_disk / "data", config)
    server.log_path = tmp_path / "batchd.log"
    server.start()
    try:
        with sdk(server) as client:
            yield Env(small_disk, upstream, server, client)
    finally:
        server.stop()


def _lines(count: int) -> list[dict[str, object]]:
    return [request_line(f"r{i:04d}", chat_body(f"request {i}")) for i in range(count)]


def _log_after(server: BatchdServer, mark: int) -> str:
    return server.log()[mark:]


def _completed(client: OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return 0 if counts is None else counts.completed


def _wait_for_progress(env: Env, batch_id: str, done: int) -> None:
    wait_until(
        lambda: _completed(env.client, batch_id) >= done,
        timeout=30,
        message="the batch to make progress",
        server=env.server,
    )


def _status_code(error: BaseException) -> int:
    assert isinstance(error, openai.APIStatusError), error
    return error.status_code


def test_an_upload_onto_a_full_disk_is_a_507_and_leaves_nothing(env: Env) -> None:
    first = env.client.files.create(file=("a.txt", b"before"), purpose="user_data")
    filler = _fill(env.root / "data" / "files")
    mark = len(env.server.log())
    with pytest.raises(openai.APIStatusError) as refused:
        env.client.files.create(file=("big.jsonl", b"x" * (2 << 20)), purpose="user_data")
    error = refused.value
    assert _status_code(error) == 507
    body = error.response.json()["error"]
    assert body["code"] == "insufficient_storage"
    assert body["type"] == "server_error"
    assert "No space is left" in body["message"]
    assert "No space left on device" in body["message"]  # the cause, as the system said it
    assert int(error.response.headers["retry-after"]) > 0
    # nothing half-written: not listed, no partial blob, the server up
    assert [f.id for f in env.client.files.list()] == [first.id]
    assert list((env.root / "data" / "files" / "tmp").iterdir()) == []
    assert env.server.alive()
    assert "Traceback" not in _log_after(env.server, mark)
    # a batch file too (validated and indexed while it streams in)
    with pytest.raises(openai.APIStatusError) as batch_file:
        env.client.files.create(
            file=("in.jsonl", b'{"custom_id": "x"}\n' * 50_000), purpose="batch"
        )
    assert _status_code(batch_file.value) == 507
    filler.unlink()
    again = env.client.files.create(file=("big.jsonl", b"x" * (2 << 20)), purpose="user_data")
    assert {f.id for f in env.client.files.list()} == {first.id, again.id}


def test_a_batch_pauses_on_a_full_disk_and_resumes_when_space_returns(env: Env) -> None:
    lines = _lines(240)  # 100 ms each, 4 at a time: about 6 s of work
    batch_id = submit(env.client, lines)
    _wait_for_progress(env, batch_id, 20)
    mark = len(env.server.log())
    fillers = [_fill(env.root / "data" / "journals"), _fill(env.root)]  # journal, database
    time.sleep(2.5)  # in-flight answers land or are refused
    paused = env.client.batches.retrieve(batch_id)
    time.sleep(4.0)
    still = env.client.batches.retrieve(batch_id)
    assert still.status == "in_progress"
    assert still.request_counts == paused.request_counts  # nothing counts that is not durable
    assert still.request_counts.completed < len(lines)  # type: ignore[union-attr]
    log = _log_after(env.server, mark)
    assert log.count("paused") == 1, log  # said once, not every retry
    assert "no space left" in log
    assert "Traceback" not in log
    assert env.server.alive()

    for filler in fillers:
        filler.unlink()
    batch = wait_for_batch(env.client, env.server, batch_id, {"completed"}, timeout=90)
    results = fetch_results(env.client, batch, [line["custom_id"] for line in lines])  # type: ignore[misc]
    assert len(results.output) == len(lines)  # every custom_id exactly once, all answered
    assert "resuming" in _log_after(env.server, mark)


def test_read_only_files_refuse_uploads_and_hold_a_batch_in_finalizing(env: Env) -> None:
    files = env.root / "data" / "files"
    lines = _lines(40)
    batch_id = submit(env.client, lines)
    mark = len(env.server.log())
    _remount(files, "ro")
    try:
        with pytest.raises(openai.APIStatusError) as refused:
            env.client.files.create(file=("a.txt", b"data"), purpose="user_data")
        assert _status_code(refused.value) == 503
        body = refused.value.response.json()["error"]
        assert body["code"] == "storage_read_only"
        assert "read-only" in body["message"]
        assert refused.value.response.headers["retry-after"]
        # every request runs; the output file cannot be written: the batch waits, counted
        wait_until(
            lambda: _completed(env.client, batch_id) == len(lines),
            timeout=60,
            message="every request to have its result",
            server=env.server,
        )
        time.sleep(3.0)
        waiting = env.client.batches.retrieve(batch_id)
        assert waiting.status == "finalizing"
        assert waiting.output_file_id is None
        log = _log_after(env.server, mark)
        assert log.count("paused") == 1, log
        assert "read-only" in log
        assert "Traceback" not in log
    finally:
        _remount(files, "rw")
    batch = wait_for_batch(env.client, env.server, batch_id, {"completed"}, timeout=60)
    results = fetch_results(env.client, batch, [line["custom_id"] for line in lines])  # type: ignore[misc]
    assert len(results.output) == len(lines)


def test_a_read_only_journal_directory_holds_a_batch_until_it_is_writable(env: Env) -> None:
    """The server restarts onto a journal directory made read-only meanwhile (the journal cannot
    be opened for writing): the batch waits, counted as it was, says why once, and completes
    once the directory is writable again."""
    lines = _lines(200)
    batch_id = submit(env.client, lines)
    _wait_for_progress(env, batch_id, 10)
    env.server.stop()  # the journal is closed, its results kept
    before = env.client  # the SDK client outlives the restart (same port)
    journals = env.root / "data" / "journals"
    _remount(journals, "ro")
    try:
        mark = len(env.server.log())
        env.server.start()
        first = before.batches.retrieve(batch_id)
        time.sleep(4.0)
        still = before.batches.retrieve(batch_id)
        assert still.status == "in_progress"
        assert still.request_counts == first.request_counts
        log = _log_after(env.server, mark)
        assert log.count("paused") == 1, log
        assert "read-only" in log
        assert "Traceback" not in log
    finally:
        _remount(journals, "rw")
    batch = wait_for_batch(before, env.server, batch_id, {"completed"}, timeout=90)
    results = fetch_results(before, batch, [line["custom_id"] for line in lines])  # type: ignore[misc]
    assert len(results.output) == len(lines)
