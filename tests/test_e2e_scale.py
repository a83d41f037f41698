"""Scaled out, end to end: an API process without an engine (``batchd serve --no-engine``) and
``batchd worker`` processes on one PostgreSQL database, driven through the real ``openai`` SDK
against the fake upstream.

- 20,000 requests over three workers, one killed with SIGKILL three times (and started again):
  every custom_id exactly once, the error file empty, the requests sent again bounded by what
  the killed workers had in flight, and the upstream never sees more requests in flight than
  the route's ``max_concurrency`` (shared between the workers);
- every connection to the database dropped, and new ones refused for 5 s, in the middle of a
  batch (what a PostgreSQL restart does to its clients): the workers reconnect and finish;
- a cancel made through the API process reaches the workers' ranges within a second or two;
- a worker stopped with SIGTERM gives its ranges back at once (another takes them without
  waiting for ``lease_seconds``);
- on an S3 bucket (SeaweedFS behind a forwarder the test closes), the bucket unreachable for
  30 s mid-batch: uploads answer 503, the batch pauses, then finishes with every custom_id once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.engine_support import (
    batch_state,
    chat_body,
    fetch_results,
    model_route,
    request_line,
    sdk,
    submit,
    wait_for_batch,
)
from tests.pg import drop_connections, fresh_database_sync
from tests.s3 import Gate, SeaweedS3
from tests.serverproc import BatchdServer, BatchdWorker, batchd, write_config
from tests.upstream.process import UpstreamProcess

LIMIT = 24  # the route's max_concurrency, shared by every worker


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database_sync() as url:
        yield url


class Cluster:
    """An API process and ``workers`` worker processes on one database, one fake upstream."""

    def __init__(
        self,
        root: Path,
        database: str,
        upstream: UpstreamProcess,
        env: dict[str, str] | None = None,
        **settings: Any,
    ):
        self.root = root
        self.env = env or {}
        self.config = write_config(
            root / "batchd.toml",
            models=[model_route(upstream, max_concurrency=LIMIT, timeout=10.0)],
            database_url=database,
            lease_seconds=3.0,
            range_size=500,
            cancel_grace_seconds=1.0,
            **settings,
        )
        self.api = BatchdServer(root / "data", self.config, env=self.env, args=("--no-engine",))
        self.workers: list[BatchdWorker] = []

    def start(self, workers: int) -> Cluster:
        self.api.start()
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self) -> BatchdWorker:
        worker = BatchdWorker(self.root / "data", self.config, env=self.env).start()
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        parts = [f"--- api\n{self.api.log()[-3000:]}"]
        parts += [f"--- worker {i}\n{w.log()[-3000:]}" for i, w in enumerate(self.workers)]
        return "\n".join(parts)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.api.stop()


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[UpstreamProcess]:
    (tmp_path / "upstream").mkdir()
    with UpstreamProcess(tmp_path / "upstream", latency_ms=50, uvloop=True) as proc:
        yield proc


@pytest.fixture
def cluster(tmp_path: Path, database: str, upstream: UpstreamProcess) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, database, upstream)
    try:
        yield cluster
    finally:
        cluster.stop()


def _scalar(database: str, query: str) -> Any:
    async def run() -> Any:
        engine = create_async_engine(database)
        try:
            async with engine.connect() as conn:
                return await conn.scalar(sa.text(query))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _lines(count: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [request_line(f"{prefix}{i}", chat_body(f"{prefix} {i}")) for i in range(count)]


def _wait_done(client: Any, batch_id: str, at_least: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = batch_state(client, batch_id)["request_counts"]
        done = int(counts["completed"]) + int(counts["failed"])
        if done >= at_least:
            return done
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id}: fewer than {at_least} done after {timeout}s")


def test_three_workers_share_a_batch_and_survive_kill_9(
    cluster: Cluster, upstream: UpstreamProcess
) -> None:
    cluster.start(workers=3)
    client = sdk(cluster.api, timeout=60)
    lines = _lines(20_000)
    batch_id = submit(client, lines)
    for round_ in range(3):  # kill -9 a worker mid-batch, three times, and start another
        _wait_done(client, batch_id, 4000 * (round_ + 1))
        victim = cluster.workers[round_]
        assert victim.alive(), victim.log()
        victim.kill()
        cluster.add_worker()
    state = wait_for_batch(client, cluster.api, batch_id, timeout=300)
    results = fetch_results(client, state, [line["custom_id"] for line in lines])
    assert len(results.output) == 20_000
    assert state["error_file_id"] is None
    stats = upstream.stats(digests=False)
    sent_again = stats["total"] - 20_000
    print(f"\nupstream: {stats['total']} requests, max in flight {stats['max_in_flight']}")
    # a killed worker loses at most its in-flight requests and the groups not yet written
    # (two per slot): with three workers, its share is at most LIMIT / 3 + 1 slots
    assert 0 <= sent_again <= 3 * 2 * (LIMIT // 3 + 1), sent_again
    # the three workers share the route's max_concurrency (see ARCHITECTURE.md, "Limits
    # across processes": a newcomer waits for the others to shrink first)
    assert stats["max_in_flight"] <= LIMIT, stats["max_in_flight"]
    # the batch was shared: several workers ran ranges of it
    ran = [w for w in cluster.workers if f"batch {batch_id}: requests " in w.log()]
    assert len(ran) >= 3, cluster.logs()


def test_workers_reconnect_after_the_database_drops_every_connection(
    cluster: Cluster, database: str
) -> None:
    cluster.start(workers=2)
    client = sdk(cluster.api, timeout=60)
    lines = _lines(4000)
    batch_id = submit(client, lines)
    _wait_done(client, batch_id, 1000)
    drop_connections(database, refuse=True)  # as a restart of PostgreSQL: nobody gets in
    time.sleep(5)
    drop_connections(database, refuse=False)
    state = wait_for_batch(client, cluster.api, batch_id, timeout=180)
    fetch_results(client, state, [line["custom_id"] for line in lines])
    assert state["request_counts"]["completed"] == 4000, cluster.logs()
    assert all(w.alive() for w in cluster.workers), cluster.logs()


def test_a_cancel_through_the_api_reaches_the_workers_ranges(
    cluster: Cluster, upstream: UpstreamProcess
) -> None:
    cluster.start(workers=2)
    client = sdk(cluster.api, timeout=60)
    lines = _lines(20_000)
    batch_id = submit(client, lines)
    _wait_done(client, batch_id, 500)
    client.batches.cancel(batch_id)
    cancelled_at = time.monotonic()
    sent = upstream.stats(digests=False)["total"]
    state = wait_for_batch(client, cluster.api, batch_id, ("cancelled",), timeout=60)
    after = upstream.stats(digests=False)["total"]
    # the workers stop sending within a second: at most a second's worth at full speed (LIMIT
    # requests every 50 ms) and what was in flight went out after the cancel
    assert after - sent <= LIMIT / 0.05 + 2 * LIMIT, (sent, after)
    assert time.monotonic() - cancelled_at < 30
    results = fetch_results(client, state, [line["custom_id"] for line in lines])
    codes = results.error_codes()
    assert codes["batch_cancelled"] > 10_000, codes
    assert len(results.output) + codes["batch_cancelled"] == 20_000


def test_a_stopped_worker_hands_its_ranges_back_and_workers_lists_the_live_ones(
    cluster: Cluster, database: str
) -> None:
    cluster.start(workers=1)
    client = sdk(cluster.api, timeout=60)
    listed = batchd("workers", "--config", str(cluster.config))
    assert listed.returncode == 0, listed.stderr
    assert "ranges 0" in listed.stdout, listed.stdout
    assert listed.stdout.count("heartbeat") == 1, listed.stdout
    lines = _lines(3000)
    batch_id = submit(client, lines)
    _wait_done(client, batch_id, 300)
    first = cluster.workers[0]
    assert first.stop() == 0, first.log()  # SIGTERM: gives its ranges back at once
    assert "giving its work back" in first.log()
    held = _scalar(
        database,
        "SELECT count(*) FROM batch_ranges WHERE owner IS NOT NULL AND NOT done",
    )
    assert held == 0  # before its leases (3 s) could have run out
    started = time.monotonic()
    cluster.add_worker()
    state = wait_for_batch(client, cluster.api, batch_id, timeout=120)
    fetch_results(client, state, [line["custom_id"] for line in lines])
    # the new worker did not wait for the old leases (3 s) to run out: it took them at once
    took = cluster.workers[1].log()
    assert "ranges to claim" not in took  # the batch was split by the first worker
    assert time.monotonic() - started < 60
    listed = batchd("workers", "--config", str(cluster.config))
    assert listed.stdout.count("heartbeat") == 1, listed.stdout


def test_workers_wait_for_an_unreachable_bucket_and_finish(
    tmp_path: Path, database: str, upstream: UpstreamProcess, s3_server: SeaweedS3
) -> None:
    gate = Gate(int(s3_server.endpoint.rsplit(":", 1)[1])).open()
    env = {
        **s3_server.env(),
        "BATCHD_STORAGE_URL": s3_server.url(f"scale-{uuid.uuid4().hex[:8]}"),
        "BATCHD_STORAGE_ENDPOINT_URL": gate.endpoint,
    }
    cluster = Cluster(tmp_path, database, upstream, env=env)
    try:
        cluster.start(workers=2)
        client = sdk(cluster.api, timeout=60)
        lines = _lines(10_000)
        batch_id = submit(client, lines)
        _wait_done(client, batch_id, 1000)
        gate.close()
        outage = time.monotonic()
        with pytest.raises(openai.InternalServerError) as refused:
            client.files.create(file=("more.jsonl", b'{"a": 1}\n'), purpose="user_data")
        assert refused.value.status_code == 503
        assert "object store" in refused.value.message, refused.value.message
        state = batch_state(client, batch_id)
        assert state["status"] == "in_progress", state  # paused, not failed
        time.sleep(max(0.0, 30 - (time.monotonic() - outage)))
        gate.open()
        state = wait_for_batch(client, cluster.api, batch_id, timeout=180)
        fetch_results(client, state, [line["custom_id"] for line in lines])
        assert state["request_counts"]["completed"] == 10_000, cluster.logs()
        assert all(w.alive() for w in cluster.workers), cluster.logs()
    finally:
        cluster.stop()
        gate.close()
