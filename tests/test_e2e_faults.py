"""End to end: a batch against a faulty upstream (seeded 500s, 429s, hangs and resets).

The upstream's fault for each attempt of each body is a pure function of (seed, body digest,
attempt), so the test predicts, request by request, how many attempts batchd makes, which
requests end in the error file and with what, and checks all of it against the files and the
upstream's own per-digest counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from openai import OpenAI

from tests.engine_support import (
    chat_body,
    expected_usage,
    fetch_results,
    model_route,
    request_line,
    serving,
    submit,
    upstream_attempts,
    wait_for_batch,
)
from tests.serverproc import BatchdServer
from tests.upstream import answers
from tests.upstream.faults import FaultConfig, decide
from tests.upstream.process import UpstreamProcess

MAX_ATTEMPTS = 3
REQUESTS = 300
FAULTS: dict[str, Any] = {
    "seed": 20261122,
    "p_500": 0.20,
    "p_429": 0.10,
    "p_hang": 0.05,
    "p_reset": 0.05,
    "retry_after": 0.05,
    "hang_s": 30.0,
}
NO_FAULTS = {"p_500": 0.0, "p_429": 0.0, "p_hang": 0.0, "p_reset": 0.0}
ERROR_500 = {
    "error": {
        "message": "The server had an error while processing your request (injected).",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
ERROR_429 = {
    "error": {
        "message": "Rate limit reached (injected). Please try again later.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
ERROR_400 = {
    "error": {
        "message": "Injected bad request (FAULT:400).",
        "type": "invalid_request_error",
        "param": None,
        "code": "injected_fault",
    }
}


@dataclass
class Env:
    upstream: UpstreamProcess
    server: BatchdServer
    client: OpenAI


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("faults")
    with (
        UpstreamProcess(root, **FAULTS) as upstream,
        serving(
            root / "batchd",
            upstream,
            model_route(upstream, timeout=1.0, max_concurrency=32),
            max_attempts=MAX_ATTEMPTS,
            retry_base_seconds=0.05,
            retry_cap_seconds=0.2,
            progress_interval_seconds=0.2,
        ) as (server, client),
    ):
        yield Env(upstream, server, client)


@pytest.fixture
def clean(env: Env) -> Env:
    env.upstream.wait_idle(timeout=40)
    env.upstream.reset(config=True)
    return env


@dataclass(frozen=True)
class Prediction:
    attempts: int
    """Attempts the upstream will see: up to the first success, else MAX_ATTEMPTS."""
    last_fault: str | None
    """The fault of the last attempt; None when it succeeds."""


def predict(config: FaultConfig, body: dict[str, Any]) -> Prediction:
    digest = answers.body_digest(body)  # batchd sends the line's body unchanged
    fault: str | None = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        fault = decide(config, digest, attempt, answers.request_texts(body)).fault
        if fault is None:
            return Prediction(attempt, None)
    return Prediction(MAX_ATTEMPTS, fault)


def test_fault_mix_loses_nothing_and_fails_exactly_the_predicted_requests(clean: Env) -> None:
    config = FaultConfig().updated(FAULTS)
    bodies = {f"fault-{i:03d}": chat_body(f"fault mix request {i}") for i in range(REQUESTS)}
    predictions = {cid: predict(config, body) for cid, body in bodies.items()}
    doomed = {cid for cid, p in predictions.items() if p.last_fault is not None}
    kinds = {p.last_fault for p in predictions.values() if p.last_fault is not None}
    # the seed gives a useful mix: some failures of every kind, retried successes
    assert 5 <= len(doomed) <= 60, len(doomed)
    assert kinds == {"500", "429", "hang", "reset"}, kinds
    assert sum(p.attempts > 1 and p.last_fault is None for p in predictions.values()) > 50

    started = time.monotonic()
    batch_id = submit(clean.client, [request_line(cid, body) for cid, body in bodies.items()])
    batch = wait_for_batch(clean.client, clean.server, batch_id, {"completed"}, timeout=60)
    elapsed = time.monotonic() - started

    results = fetch_results(clean.client, batch, list(bodies))
    counts = batch["request_counts"]
    assert counts["total"] == REQUESTS
    assert counts["completed"] + counts["failed"] == REQUESTS
    failed = {line["custom_id"] for line in results.errors}
    assert failed == doomed, (
        f"unexpected failures {sorted(failed - doomed)[:10]}, "
        f"unexpected successes {sorted(doomed - failed)[:10]}"
    )

    for line in results.errors:
        fault = predictions[line["custom_id"]].last_fault
        if fault == "500":
            assert line["error"] is None, line
            assert line["response"]["status_code"] == 500, line
            assert line["response"]["body"] == ERROR_500, line
        elif fault == "429":
            assert line["error"] is None, line
            assert line["response"]["status_code"] == 429, line
            assert line["response"]["body"] == ERROR_429, line
        elif fault == "hang":
            assert line["response"] is None, line
            assert line["error"]["code"] == "request_timeout", line
        else:
            assert fault == "reset"
            assert line["response"] is None, line
            assert line["error"]["code"] == "connection_error", line
            # what went wrong, on the model's upstream, not where that upstream is
            assert "on the upstream of model" in line["error"]["message"], line
            assert f":{clean.upstream.port}" not in line["error"]["message"], line
            assert str(clean.server.data_dir) not in line["error"]["message"], line

    for line in results.output:
        body = bodies[line["custom_id"]]
        assert line["response"]["body"] == answers.chat_completion(body), line["custom_id"]
    assert batch["usage"] == expected_usage(results.output)

    # the upstream saw exactly the predicted attempts: retries up to the first success, and
    # max_attempts for the failures (never more, never fewer)
    seen = dict(zip(bodies, upstream_attempts(clean.upstream, bodies.values()), strict=True))
    wrong = {
        cid: (seen[cid], p.attempts) for cid, p in predictions.items() if seen[cid] != p.attempts
    }
    assert not wrong, (
        f"(attempts seen, predicted) differ for {len(wrong)}: {list(wrong.items())[:10]}"
    )
    print(f"{REQUESTS} requests, {len(doomed)} failed as predicted, {elapsed:.1f}s")


def test_a_400_is_sent_once_and_kept_with_the_upstream_body(clean: Env) -> None:
    clean.upstream.control(**NO_FAULTS)
    bodies = {
        "ok-0": chat_body("a fine request"),
        "bad-1": chat_body("please fail FAULT:400 now"),
        "ok-2": chat_body("another fine request"),
        "bad-3": chat_body("FAULT:400 again"),
    }
    batch_id = submit(clean.client, [request_line(cid, body) for cid, body in bodies.items()])
    batch = wait_for_batch(clean.client, clean.server, batch_id, {"completed"}, timeout=30)
    results = fetch_results(clean.client, batch, list(bodies))
    assert batch["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    assert [line["custom_id"] for line in results.output] == ["ok-0", "ok-2"]
    assert [line["custom_id"] for line in results.errors] == ["bad-1", "bad-3"]
    for line in results.errors:
        assert line["error"] is None, line
        assert line["response"]["status_code"] == 400, line
        assert line["response"]["body"] == ERROR_400, line
    assert upstream_attempts(clean.upstream, bodies.values()) == [1, 1, 1, 1]
    clean.upstream.wait_idle()
    assert clean.upstream.stats(digests=False)["total"] == 4
