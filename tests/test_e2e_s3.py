"""End to end on an S3 bucket: ``batchd serve`` with ``BATCHD_STORAGE_URL`` on SeaweedFS (see
``tests/s3.py``), behind a forwarder the test can close, driven by the openai SDK.

- Files and batches work as on a local directory: the upload, its request index, the batch's
  output are objects under the prefix; the content downloads byte for byte; a deleted file's
  object goes.
- With the bucket unreachable an upload is a 503 ``storage_unreachable`` that says the object
  store cannot be reached and that the request may be retried (with ``Retry-After``), nothing
  is listed, the server stays up, and uploads work again once the bucket answers.
- A batch that cannot write its output while the bucket is unreachable waits in
  ``finalizing`` and completes once the bucket answers again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
    to_jsonl,
    wait_for_batch,
    wait_until,
)
from tests.s3 import Gate, SeaweedS3
from tests.serverproc import BatchdServer, write_config
from tests.upstream.process import UpstreamProcess

BINARY = bytes(range(256)) * 300 + b"\r\n\x00"


@dataclass
class Env:
    s3: SeaweedS3
    gate: Gate
    prefix: str
    server: BatchdServer
    client: OpenAI

    def objects(self) -> list[str]:
        return [name.removeprefix(self.prefix + "/") for name in self.s3.objects(self.prefix)]


@pytest.fixture
def env(tmp_path: Path, s3_server: SeaweedS3) -> Iterator[Env]:
    upstream = UpstreamProcess(tmp_path, latency_ms=100).start()
    gate = Gate(int(s3_server.endpoint.rsplit(":", 1)[1])).open()
    prefix = f"e2e-{uuid.uuid4().hex[:12]}"
    config = write_config(
        tmp_path / "batchd.toml",
        models=[model_route(upstream, max_concurrency=4)],
        lease_seconds=3.0,
    )
    server = BatchdServer(
        tmp_path / "data",
        config,
        env={
            **s3_server.env(),
            "BATCHD_STORAGE_URL": s3_server.url(prefix),
            "BATCHD_STORAGE_ENDPOINT_URL": gate.endpoint,
        },
    )
    try:
        server.start()
        with sdk(server) as client:
            yield Env(s3_server, gate, prefix, server, client)
    finally:
        server.stop()
        gate.close()
        upstream.stop()


def _lines(count: int) -> list[dict[str, object]]:
    return [request_line(f"r{i:04d}", chat_body(f"request {i}")) for i in range(count)]


def _completed(client: OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return 0 if counts is None else counts.completed


def test_files_and_a_batch_live_in_the_bucket(env: Env) -> None:
    client = env.client
    stored = client.files.create(file=("data.bin", BINARY), purpose="user_data")
    assert stored.bytes == len(BINARY)
    assert client.files.content(stored.id).content == BINARY

    lines = _lines(30)
    batch_id = submit(client, lines)
    batch = wait_for_batch(client, env.server, batch_id, {"completed"}, timeout=60)
    results = fetch_results(client, batch, [str(line["custom_id"]) for line in lines])
    assert len(results.output) == len(lines)
    input_id = batch["input_file_id"]
    assert set(env.objects()) == {
        stored.id,
        input_id,
        f"{input_id}.requests",  # the request index, written while the file was validated
        batch["output_file_id"],
    }
    assert not (env.server.data_dir / "files").exists()  # nothing in the data directory

    client.files.delete(stored.id)
    wait_until(
        lambda: stored.id not in env.objects(),
        timeout=10,
        message="the deleted file's object to go",
        server=env.server,
    )


def test_an_unreachable_bucket_is_a_503_that_says_so(env: Env) -> None:
    client = env.client
    first = client.files.create(file=("a.txt", b"before"), purpose="user_data")
    env.gate.close()
    mark = len(env.server.log())
    for upload, purpose in (
        (("b.txt", b"while the bucket is away"), "user_data"),
        (("in.jsonl", to_jsonl(_lines(20))), "batch"),  # validated and indexed on the way
    ):
        with pytest.raises(openai.APIStatusError) as refused:
            client.files.create(file=upload, purpose=purpose)  # type: ignore[arg-type]
        error = refused.value
        assert error.status_code == 503
        body = error.response.json()["error"]
        assert body["code"] == "storage_unreachable"
        assert body["type"] == "server_error"
        assert "cannot reach the object store" in body["message"]
        assert "may be retried" in body["message"]
        assert env.gate.endpoint in body["message"]  # the cause: which store, how it failed
        assert int(error.response.headers["retry-after"]) > 0
    assert [f.id for f in client.files.list()] == [first.id]
    with pytest.raises(openai.APIStatusError) as download:
        client.files.content(first.id)
    assert download.value.status_code == 503
    assert env.server.alive()
    assert "Traceback" not in env.server.log()[mark:]

    env.gate.open()
    again = client.files.create(file=("b.txt", b"after"), purpose="user_data")
    assert {f.id for f in client.files.list()} == {first.id, again.id}
    assert client.files.content(first.id).content == b"before"


def test_a_batch_waits_for_the_bucket_to_write_its_output(env: Env) -> None:
    client = env.client
    lines = _lines(40)  # 100 ms each, 4 at a time: about 1 s of work
    batch_id = submit(client, lines)
    wait_until(
        lambda: _completed(client, batch_id) > 0,
        timeout=30,
        message="the batch to make progress (its input read)",
        server=env.server,
    )
    env.gate.close()
    mark = len(env.server.log())
    try:
        wait_until(
            lambda: client.batches.retrieve(batch_id).status == "finalizing",
            timeout=60,
            message="the batch to reach finalizing",
            server=env.server,
        )
        wait_until(
            lambda: "paused" in env.server.log()[mark:],
            timeout=30,
            message="the batch to say it waits for the storage",
            server=env.server,
        )
        waiting = client.batches.retrieve(batch_id)
        assert waiting.status == "finalizing"
        assert waiting.output_file_id is None
        log = env.server.log()[mark:]
        assert "cannot be reached" in log
        assert "Traceback" not in log
    finally:
        env.gate.open()
    batch = wait_for_batch(client, env.server, batch_id, {"completed"}, timeout=90)
    results = fetch_results(client, batch, [str(line["custom_id"]) for line in lines])
    assert len(results.output) == len(lines)
