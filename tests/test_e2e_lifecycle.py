"""End to end: the life of an executing batch: cancel (mid-run, with hung requests), expiry, live
``request_counts``, ``Retry-After``, usage and timestamps, and null file ids.

One fake upstream and one ``batchd serve`` for the module (concurrency 4, a 0.5 s cancel grace);
each test sets the upstream's latency and faults it needs. The expiry test has a server of its
own with a 3-second completion window.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.engine_support import (
    TERMINAL,
    batch_state,
    chat_body,
    expected_usage,
    fetch_results,
    model_route,
    request_line,
    serving,
    submit,
    upstream_attempts,
    wait_for_batch,
    wait_until,
)
from tests.schema import check_response
from tests.serverproc import BatchdServer
from tests.upstream import answers
from tests.upstream.process import UpstreamProcess

CONCURRENCY = 4
GRACE = 0.5
PROVIDER_TIMEOUT = 4.0  # seconds per upstream request
SETTINGS: dict[str, Any] = {
    "cancel_grace_seconds": GRACE,
    "progress_interval_seconds": 0.1,
    "max_attempts": 3,
    "retry_base_seconds": 0.05,
    "retry_cap_seconds": 0.2,
}


@dataclass
class Env:
    upstream: UpstreamProcess
    server: BatchdServer
    client: OpenAI
    root: Path


@pytest.fixture(scope="module")
def module_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("lifecycle")
    with UpstreamProcess(root) as upstream:
        route = model_route(upstream, max_concurrency=CONCURRENCY, timeout=PROVIDER_TIMEOUT)
        with serving(root / "batchd", upstream, route, **SETTINGS) as (server, client):
            yield Env(upstream, server, client, root)


@pytest.fixture
def env(module_env: Env) -> Env:
    """The module's server and upstream, with no batch left running by an earlier test and the
    upstream's settings and counters reset."""
    for batch in module_env.client.batches.list(limit=100):
        if batch.status in ("validating", "in_progress"):
            module_env.client.batches.cancel(batch.id)
        if batch.status not in TERMINAL:
            wait_for_batch(module_env.client, module_env.server, batch.id, TERMINAL, timeout=30)
    module_env.upstream.wait_idle(timeout=15)
    module_env.upstream.reset(config=True)
    return module_env


def bodies_for(prefix: str, n: int, extra_text: str = "") -> dict[str, dict[str, Any]]:
    return {
        f"{prefix}-{i:03d}": chat_body(f"{prefix} request {i} {extra_text}".strip())
        for i in range(n)
    }


def run_lines(bodies: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [request_line(cid, body) for cid, body in bodies.items()]


def wait_for_completed_count(env: Env, batch_id: str, at_least: int, timeout: float = 20) -> int:
    def progressed() -> int:
        state = batch_state(env.client, batch_id)
        assert state["status"] in ("validating", "in_progress"), state["status"]
        done: int = state["request_counts"]["completed"]
        return done if done >= at_least else 0

    message = f"batch {batch_id}: request_counts.completed never reached {at_least}"
    return int(wait_until(progressed, timeout, message, env.server))


def assert_upstream_quiet(upstream: UpstreamProcess, seconds: float = 0.5) -> int:
    """The number of requests the upstream got, unchanged over ``seconds``."""
    before = upstream.stats(digests=False)["total"]
    time.sleep(seconds)
    after = upstream.stats(digests=False)["total"]
    assert after == before, f"{after - before} requests reached the upstream after the end"
    return int(after)


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_mid_run(env: Env) -> None:
    env.upstream.control(latency_ms=200)
    bodies = bodies_for("cancel", 200)
    batch_id = submit(env.client, run_lines(bodies))
    seen = wait_for_completed_count(env, batch_id, 1)

    raw = env.client.batches.with_raw_response.cancel(batch_id)
    cancelling = check_response(raw, "Batch")
    assert cancelling["status"] == "cancelling"
    assert isinstance(cancelling["cancelling_at"], int)
    batch = wait_for_batch(env.client, env.server, batch_id, {"cancelled"}, timeout=15)
    sent = assert_upstream_quiet(env.upstream)

    assert isinstance(batch["cancelled_at"], int)
    assert batch["cancelling_at"] <= batch["cancelled_at"]
    assert batch["completed_at"] is None
    assert batch["expired_at"] is None
    results = fetch_results(env.client, batch, list(bodies))
    assert len(results.output) >= seen
    assert len(results.output) + len(results.errors) == len(bodies)
    assert results.errors, "every request ran although the batch was cancelled early"
    for line in results.errors:
        assert line["response"] is None, line
        assert line["error"]["code"] == "batch_cancelled", line
    for line in results.output:
        assert line["response"]["body"] == answers.chat_completion(bodies[line["custom_id"]])
    assert batch["usage"] == expected_usage(results.output)
    # dispatch stopped at the cancel: at most the requests in flight then were sent besides the
    # finished ones, and no cancelled request was sent and then dropped beyond those
    assert sent <= len(results.output) + CONCURRENCY, (sent, len(results.output))
    attempts = dict(zip(bodies, upstream_attempts(env.upstream, bodies.values()), strict=True))
    assert all(attempts[line["custom_id"]] == 1 for line in results.output)


def test_cancel_with_hung_requests_is_prompt(env: Env) -> None:
    bodies = bodies_for("hung", 12, "FAULT:hang")
    batch_id = submit(env.client, run_lines(bodies))
    wait_until(
        lambda: env.upstream.stats(digests=False)["in_flight"] >= CONCURRENCY,
        20,
        f"the upstream never had {CONCURRENCY} hung requests in flight",
        env.server,
    )
    started = time.monotonic()
    env.client.batches.cancel(batch_id)
    batch = wait_for_batch(env.client, env.server, batch_id, {"cancelled"}, timeout=15)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"cancelling took {elapsed:.1f}s with a {GRACE}s grace"

    results = fetch_results(env.client, batch, list(bodies))
    assert batch["output_file_id"] is None
    assert batch["request_counts"] == {"total": 12, "completed": 0, "failed": 12}
    assert {line["error"]["code"] for line in results.errors} == {"batch_cancelled"}
    assert assert_upstream_quiet(env.upstream) == CONCURRENCY
    # The batch is done with them after the grace; the HTTP client (pyreqwest) cannot abort a
    # request it already sent, so the upstream sees them end at the provider timeout at the latest.
    env.upstream.wait_idle(timeout=PROVIDER_TIMEOUT + 5)


# -- expiry ------------------------------------------------------------------------------------


def test_expiry_keeps_finished_results(env: Env) -> None:
    env.upstream.control(latency_ms=800)
    route = model_route(env.upstream, max_concurrency=CONCURRENCY, timeout=10.0)
    settings = {**SETTINGS, "completion_window_seconds": 3}
    with serving(env.root / "expiry", env.upstream, route, **settings) as (server, client):
        bodies = bodies_for("expiry", 30)  # 6 s of work at 4 x 0.8 s: cannot finish in 3 s
        started = time.monotonic()
        batch_id = submit(client, run_lines(bodies))
        created = batch_state(client, batch_id)
        assert created["expires_at"] == created["created_at"] + 3
        batch = wait_for_batch(client, server, batch_id, {"expired"}, timeout=20)
        elapsed = time.monotonic() - started
        sent = assert_upstream_quiet(env.upstream)
        results = fetch_results(client, batch, list(bodies))

    assert 1.5 < elapsed < 3 + GRACE + 5, elapsed
    assert isinstance(batch["expired_at"], int)
    assert batch["expired_at"] >= batch["expires_at"]
    assert batch["completed_at"] is None
    assert batch["cancelled_at"] is None
    counts = batch["request_counts"]
    assert counts["total"] == 30
    assert counts["completed"] + counts["failed"] == 30
    assert results.output, "no finished result was kept"
    assert results.errors, "every request finished although the batch expired"
    for line in results.errors:
        assert line["response"] is None, line
        assert line["error"]["code"] == "batch_expired", line
    for line in results.output:
        assert line["response"]["body"] == answers.chat_completion(bodies[line["custom_id"]])
    assert batch["usage"] == expected_usage(results.output)
    assert sent <= len(results.output) + CONCURRENCY


# -- progress, retries, usage ------------------------------------------------------------------


def test_request_counts_grow_while_running(env: Env) -> None:
    env.upstream.control(latency_ms=100)
    bodies = bodies_for("live", 60)  # about 1.5 s at 4 x 0.1 s
    batch_id = submit(env.client, run_lines(bodies))
    running: list[int] = []
    deadline = time.monotonic() + 30
    while True:
        state = batch_state(env.client, batch_id)
        if state["status"] != "in_progress" and running:
            break
        if state["status"] == "in_progress":
            assert state["request_counts"]["total"] == 60
            running.append(state["request_counts"]["completed"])
        assert time.monotonic() < deadline, f"still {state['status']}: {running[-5:]}"
        time.sleep(0.02)
    assert running == sorted(running), "request_counts.completed went down"
    partial = sorted({n for n in running if 0 < n < 60})
    assert len(partial) >= 2, f"completed counts seen while in_progress: {sorted(set(running))}"
    batch = wait_for_batch(env.client, env.server, batch_id, {"completed"}, timeout=15)
    assert batch["request_counts"] == {"total": 60, "completed": 60, "failed": 0}


def test_retry_after_is_honoured(env: Env) -> None:
    env.upstream.control(retry_after=1.0)
    bodies = bodies_for("ratelimited", 3, "FAULT:429x1")
    batch_id = submit(env.client, run_lines(bodies))
    batch = wait_for_batch(env.client, env.server, batch_id, {"completed"}, timeout=20)
    results = fetch_results(env.client, batch, list(bodies))
    assert batch["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert upstream_attempts(env.upstream, bodies.values()) == [2, 2, 2]
    for line in results.output:
        assert line["response"]["body"] == answers.chat_completion(bodies[line["custom_id"]])

    received: dict[str, dict[int, float]] = defaultdict(dict)
    for entry in env.upstream.requests_log():
        if entry["digest"] is not None:
            received[entry["digest"]][entry["attempt"]] = entry["received_at"]
    for body in bodies.values():
        times = received[answers.body_digest(body)]
        gap = times[2] - times[1]
        assert gap >= 0.95, f"the retry came {gap:.2f}s after a 429 with Retry-After: 1"
        assert gap < 5.0, f"the retry came {gap:.2f}s after a 429 with Retry-After: 1"


def test_usage_and_timestamps(env: Env) -> None:
    bodies = {
        f"usage-{i:02d}": chat_body(" ".join(["word"] * (i + 1)) + f" #{i}", n=1 + i % 3)
        for i in range(20)
    }
    batch_id = submit(env.client, run_lines(bodies))
    batch = wait_for_batch(env.client, env.server, batch_id, {"completed"}, timeout=20)
    results = fetch_results(env.client, batch, list(bodies))
    assert batch["error_file_id"] is None  # all succeeded: no error file
    assert batch["output_file_id"] is not None
    assert batch["request_counts"] == {"total": 20, "completed": 20, "failed": 0}

    usage = batch["usage"]
    assert usage == expected_usage(results.output)
    wanted = [answers.chat_completion(body)["usage"] for body in bodies.values()]
    assert usage["input_tokens"] == sum(u["prompt_tokens"] for u in wanted)
    assert usage["output_tokens"] == sum(u["completion_tokens"] for u in wanted)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    sdk_usage = env.client.batches.retrieve(batch_id).usage
    assert sdk_usage is not None
    assert sdk_usage.total_tokens == usage["total_tokens"]

    assert batch["created_at"] <= batch["in_progress_at"] <= batch["finalizing_at"]
    assert batch["finalizing_at"] <= batch["completed_at"]
    for key in ("failed_at", "expired_at", "cancelling_at", "cancelled_at"):
        assert batch[key] is None, key


def test_no_output_file_when_every_request_fails(env: Env) -> None:
    bodies = bodies_for("allbad", 5, "FAULT:400")
    batch_id = submit(env.client, run_lines(bodies))
    batch = wait_for_batch(env.client, env.server, batch_id, {"completed"}, timeout=20)
    results = fetch_results(env.client, batch, list(bodies))
    assert batch["output_file_id"] is None
    assert batch["error_file_id"] is not None
    assert batch["request_counts"] == {"total": 5, "completed": 0, "failed": 5}
    assert {line["response"]["status_code"] for line in results.errors} == {400}
    assert batch["usage"] == expected_usage([])
    assert upstream_attempts(env.upstream, bodies.values()) == [1] * 5
