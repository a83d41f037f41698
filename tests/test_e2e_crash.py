"""End to end: ``kill -9`` of ``batchd serve`` at random points of a running batch.

The server is killed several times while it executes a few thousand requests and restarted on the
same data directory each time; the batch must complete with every request exactly once, and the
upstream must have seen each body once, give or take the requests in flight or answered but not
yet durable at each kill.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

from tests.engine_support import (
    TERMINAL,
    batch_state,
    chat_body,
    expected_usage,
    fetch_results,
    log_tail,
    model_route,
    request_line,
    sdk,
    submit,
    upstream_attempts,
    wait_for_batch,
)
from tests.serverproc import BatchdServer, write_config
from tests.upstream import answers
from tests.upstream.process import UpstreamProcess

REQUESTS = 3500
KILLS = 5
CONCURRENCY = 32
SEED = 7


def test_batch_survives_repeated_kill_9(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    bodies = {f"crash-{i:05d}": chat_body(f"crash probe {i}") for i in range(REQUESTS)}
    # kill when this share of the requests has a result (the first one: before any result)
    targets = [0.0, *sorted(rng.uniform(0.05, 0.8) for _ in range(KILLS - 1))]

    with UpstreamProcess(tmp_path, latency_ms=10, jitter_ms=10, seed=SEED) as upstream:
        config = write_config(
            tmp_path / "batchd.toml",
            models=[model_route(upstream, max_concurrency=CONCURRENCY, timeout=10.0)],
            progress_interval_seconds=0.1,
        )
        data_dir = tmp_path / "data"
        servers = [BatchdServer(data_dir, config).start()]
        started = time.monotonic()
        try:
            with sdk(servers[-1]) as client:
                batch_id = submit(client, [request_line(c, b) for c, b in bodies.items()])
            kills = []  # (target share, share seen before the kill)
            for target in targets:
                srv = servers[-1]
                with sdk(srv) as client:
                    deadline = time.monotonic() + 60
                    while True:
                        state = batch_state(client, batch_id)
                        done = state["request_counts"]["completed"]
                        assert state["status"] not in TERMINAL, (
                            f"the batch ended {state['status']} before kill {len(kills) + 1} of "
                            f"{KILLS} (at {done}/{REQUESTS}): the run is too short for the test"
                        )
                        if done >= target * REQUESTS:
                            break
                        assert time.monotonic() < deadline, (
                            f"no progress to {target:.0%} before kill {len(kills) + 1}: "
                            f"{state['status']} {state['request_counts']}\n{log_tail(srv)}"
                        )
                        time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.05))
                srv.kill()
                assert srv.proc is not None
                assert srv.proc.returncode == -signal.SIGKILL
                kills.append((target, done / REQUESTS))
                servers.append(BatchdServer(data_dir, config).start())

            srv = servers[-1]
            with sdk(srv) as client:
                batch = wait_for_batch(client, srv, batch_id, {"completed"}, timeout=90)
                results = fetch_results(client, batch, list(bodies))
        finally:
            for srv in servers:
                srv.stop()
        elapsed = time.monotonic() - started

        assert len(kills) == KILLS
        assert batch["request_counts"] == {"total": REQUESTS, "completed": REQUESTS, "failed": 0}
        assert batch["error_file_id"] is None
        assert [line["custom_id"] for line in results.output] == list(bodies)
        for line in results.output:
            assert line["response"]["status_code"] == 200, line
            assert line["response"]["body"] == answers.chat_completion(bodies[line["custom_id"]])
        assert batch["usage"] == expected_usage(results.output)

        upstream.wait_idle()
        attempts = upstream_attempts(upstream, bodies.values())
        never = [cid for cid, n in zip(bodies, attempts, strict=True) if n == 0]
        assert not never, f"{len(never)} requests have results the upstream never produced"
        resent = sum(n - 1 for n in attempts)
        # Per kill: at most CONCURRENCY in flight, and as many answered but not yet durable.
        assert resent <= KILLS * 2 * CONCURRENCY, (
            f"{resent} bodies were sent again after {KILLS} kills: more than the "
            f"{KILLS * 2 * CONCURRENCY} that can have been in flight or not yet durable"
        )
    print(
        f"{REQUESTS} requests, {KILLS} kills at "
        + ", ".join(f"{seen:.0%}" for _, seen in kills)
        + f": {resent} resent, {elapsed:.1f}s"
    )


def test_counted_results_are_not_sent_again_after_kill_9(tmp_path: Path) -> None:
    """One kill in the middle of a slow batch: every request whose result was counted before the
    kill (request_counts is only ever the journaled results) is not sent again."""
    bodies = {f"slow-{i:03d}": chat_body(f"slow probe {i}") for i in range(60)}
    with UpstreamProcess(tmp_path, latency_ms=100) as upstream:
        config = write_config(
            tmp_path / "batchd.toml",
            models=[model_route(upstream, max_concurrency=4, timeout=10.0)],
            progress_interval_seconds=0.1,
        )
        srv = BatchdServer(tmp_path / "data", config).start()
        restarted = None
        try:
            with sdk(srv) as client:
                batch_id = submit(client, [request_line(c, b) for c, b in bodies.items()])
                deadline = time.monotonic() + 30
                while batch_state(client, batch_id)["request_counts"]["completed"] < 8:
                    assert time.monotonic() < deadline, log_tail(srv)
                    time.sleep(0.01)
                time.sleep(0.3)
                counted = batch_state(client, batch_id)["request_counts"]["completed"]
            srv.kill()
            upstream.wait_idle()
            sent_before = upstream.stats(digests=False)["total"]
            restarted = BatchdServer(tmp_path / "data", config).start()
            with sdk(restarted) as client:
                batch = wait_for_batch(client, restarted, batch_id, {"completed"}, timeout=60)
                results = fetch_results(client, batch, list(bodies))
        finally:
            srv.stop()
            if restarted is not None:
                restarted.stop()
        assert len(results.output) == len(bodies)
        attempts = upstream_attempts(upstream, bodies.values())
        # request_counts only ever counts journaled results, and those are never sent again: at
        # most the requests sent but not counted before the kill are sent twice
        resent = sum(attempts) - len(bodies)
        assert min(attempts) == 1
        assert resent <= sent_before - counted, (resent, sent_before, counted)
