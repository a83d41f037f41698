"""Prometheus metrics (``/metrics``, ``batchd worker --metrics-port``): counted right, guarded.

A real ``batchd serve`` runs a batch against the fake upstream with seeded faults (500s, 429s,
connection resets, and requests that ask for a 400); the scrape, parsed with prometheus-client's
own parser, must agree with the batch's ``request_counts`` and ``usage``, its error file, and
the upstream's own count of what it received. The Grafana dashboard in ``deploy/grafana`` may
only query metrics that scrape has. Access: open on loopback, the metrics token when one is set
(API keys do not open it), refused on any other address without one. A worker of a shared
PostgreSQL database serves its metrics on ``--metrics-port``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from starlette.testclient import TestClient

from batchd.api import create_app
from batchd.config import Settings
from batchd.metrics import Metrics, metrics_access, serve_metrics
from tests.engine_support import (
    MODEL,
    chat_body,
    fetch_results,
    model_route,
    request_line,
    sdk,
    serving,
    shared_mode,
    submit,
    wait_for_batch,
)
from tests.serverproc import BatchdServer, free_port, write_config
from tests.upstream.process import UpstreamProcess

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "batchd-dashboard.json"
REQUESTS = 200
BAD = 4  # requests that ask the upstream for a 400
FAULTS: dict[str, Any] = {
    "seed": 20261205,
    "p_500": 0.15,
    "p_429": 0.15,
    "p_reset": 0.05,
    "retry_after": 0.05,
}
TOKEN = "metrics-token-0123456789"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, token: str | None = None) -> Samples:
    """Every sample of a ``/metrics`` answer, by name and labels."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


@dataclass
class Ran:
    batch: dict[str, Any]
    errors: list[dict[str, Any]]
    upstream: dict[str, Any]
    samples: Samples
    server: BatchdServer
    fake: UpstreamProcess


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ran]:
    """A faulty batch run to its end, then the upstream's stats and one scrape."""
    root = tmp_path_factory.mktemp("metrics")
    with (
        UpstreamProcess(root, **FAULTS) as upstream,
        serving(
            root / "batchd",
            upstream,
            model_route(upstream, timeout=2.0, max_concurrency=16),
            max_attempts=3,
            retry_base_seconds=0.02,
            retry_cap_seconds=0.1,
            progress_interval_seconds=0.1,
        ) as (server, client),
    ):
        bodies = {f"req-{i:03d}": chat_body(f"metrics request {i}") for i in range(REQUESTS)}
        for i in range(BAD):
            bodies[f"req-{i:03d}"] = chat_body(f"please fail FAULT:400 ({i})")
        batch_id = submit(client, [request_line(c, b) for c, b in bodies.items()])
        batch = wait_for_batch(client, server, batch_id, {"completed"}, timeout=60)
        results = fetch_results(client, batch, list(bodies))
        stats = upstream.wait_idle(timeout=20)
        samples = scrape(f"{server.base_url}/metrics")
        yield Ran(batch, results.errors, stats, samples, server, upstream)


def test_requests_by_outcome_match_the_batch_and_its_error_file(ran: Ran) -> None:
    counts = ran.batch["request_counts"]
    samples = ran.samples
    assert total(samples, "batchd_requests_total", model=MODEL) == REQUESTS
    assert total(samples, "batchd_requests_total", outcome="succeeded") == counts["completed"]
    failed = REQUESTS - total(samples, "batchd_requests_total", outcome="succeeded")
    assert failed == counts["failed"] > BAD
    expected: dict[str, int] = {}
    for line in ran.errors:  # what the error file says each failure was
        if line["response"] is not None:
            status = line["response"]["status_code"]
            outcome = "http_429" if status == 429 else "http_5xx" if status >= 500 else "http_4xx"
        else:
            outcome = line["error"]["code"]
        expected[outcome] = expected.get(outcome, 0) + 1
    assert expected.get("http_4xx") == BAD
    for outcome, count in expected.items():
        assert total(samples, "batchd_requests_total", outcome=outcome) == count, outcome


def test_upstream_requests_and_429s_match_the_upstreams_own_count(ran: Ran) -> None:
    samples, seen = ran.samples, ran.upstream
    attempts = seen["total"]
    assert attempts > REQUESTS  # retries happened
    assert total(samples, "batchd_upstream_requests_total", model=MODEL) == attempts
    by_code = seen["by_outcome"]
    assert total(samples, "batchd_upstream_rate_limited_total") == by_code["429"] > 0
    assert total(samples, "batchd_upstream_requests_total", code="429") == by_code["429"]
    assert total(samples, "batchd_upstream_requests_total", code="500") == by_code["500"] > 0
    assert total(samples, "batchd_upstream_requests_total", code="none") == by_code["reset"] > 0
    # the upstream is named host:port, never by its URL
    upstreams = {dict(labels)["upstream"] for (name, labels) in samples if "upstream" in name}
    assert upstreams == {f"127.0.0.1:{ran_port(samples)}"}
    assert total(samples, "batchd_upstream_request_seconds_count") == attempts
    assert total(samples, "batchd_upstream_request_seconds_bucket", le="+Inf") == attempts
    assert total(samples, "batchd_upstream_request_seconds_sum") > 0
    # every attempt after a request's first is an engine retry (one replica: no failover)
    assert total(samples, "batchd_request_retries_total", model=MODEL) == attempts - REQUESTS


def ran_port(samples: Samples) -> str:
    for name, labels in samples:
        if name == "batchd_upstream_rate_limited_total":
            return dict(labels)["upstream"].rsplit(":", 1)[1]
    raise AssertionError("no upstream in the scrape")


def test_tokens_batches_commits_validation_and_gauges(ran: Ran) -> None:
    samples, usage = ran.samples, ran.batch["usage"]
    tokens = "batchd_tokens_total"
    labels = {"model": MODEL, "project": "default"}
    assert total(samples, tokens, direction="input", **labels) == usage["input_tokens"] > 0
    assert total(samples, tokens, direction="output", **labels) == usage["output_tokens"] > 0
    assert total(samples, "batchd_batches", status="completed") == 1
    assert total(samples, "batchd_batches", status="in_progress") == 0
    commits = total(samples, "batchd_result_commit_seconds_count", sink="journal")
    assert 0 < commits <= REQUESTS // 8 + 1  # one group (here: one request) in 8 is timed
    assert total(samples, "batchd_validated_requests_total", source="upload") == REQUESTS
    assert total(samples, "batchd_validation_seconds_count", source="upload") == 1
    assert total(samples, "batchd_requests_in_flight", model=MODEL) == 0
    assert total(samples, "batchd_requests_waiting", model=MODEL) == 0
    assert ("batchd_requests_in_flight", (("model", MODEL),)) in samples


def test_every_metric_the_dashboard_queries_is_scraped(ran: Ran) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 9
    queried = {name for expr in exprs for name in re.findall(r"\bbatchd_[a-z_]+\b", expr)}
    for variable in dashboard["templating"]["list"]:
        queried.update(re.findall(r"\bbatchd_[a-z_]+\b", str(variable.get("query", ""))))
    scraped = {name for name, _labels in ran.samples}
    assert {"batchd_requests_total", "batchd_tokens_total", "batchd_batches"} <= queried
    missing = queried - scraped
    assert not missing, f"the dashboard queries metrics /metrics does not have: {missing}"
    for panel in dashboard["panels"]:  # every panel queries something that exists
        assert panel["targets"], panel["title"]


def test_in_flight_and_waiting_while_a_batch_runs(ran: Ran) -> None:
    """Scraped mid-run, with a slow upstream: the route's 16 slots busy, the rest waiting."""
    ran.fake.reset(config=True)
    ran.fake.control(p_500=0.0, p_429=0.0, p_reset=0.0, latency_ms=300.0)
    url = f"{ran.server.base_url}/metrics"
    bodies = {f"slow-{i}": chat_body(f"slow request {i}") for i in range(64)}
    with sdk(ran.server) as client:
        batch_id = submit(client, [request_line(c, b) for c, b in bodies.items()])
        deadline = time.monotonic() + 20
        while True:
            samples = scrape(url)
            if total(samples, "batchd_requests_in_flight", model=MODEL) == 16:
                break
            assert time.monotonic() < deadline, "never 16 requests in flight"
            time.sleep(0.02)
        assert total(samples, "batchd_batches", status="in_progress") == 1
        done = total(samples, "batchd_requests_total", model=MODEL) - REQUESTS
        waiting = total(samples, "batchd_requests_waiting", model=MODEL)
        assert 0 < waiting <= 64 - 16 - done
        wait_for_batch(client, ran.server, batch_id, {"completed"}, timeout=30)
    samples = scrape(url)
    assert total(samples, "batchd_requests_in_flight", model=MODEL) == 0
    assert total(samples, "batchd_requests_waiting", model=MODEL) == 0
    assert total(samples, "batchd_requests_total", outcome="succeeded") == (
        ran.batch["request_counts"]["completed"] + 64
    )


# -- access ------------------------------------------------------------------------------------


def test_access_decision() -> None:
    token = SecretStr(TOKEN)
    assert metrics_access(None, "127.0.0.1", None) is None
    assert metrics_access(None, "::1", None) is None
    assert metrics_access(None, "localhost", "Bearer whatever") is None
    refused = metrics_access(None, "0.0.0.0", None)
    assert refused is not None
    assert refused[0] == 403
    assert "metrics_token" in refused[2]
    assert metrics_access(None, "metrics.example.com", None) is not None  # a name: not trusted
    assert metrics_access(token, "0.0.0.0", f"Bearer {TOKEN}") is None
    for wrong in (None, "", TOKEN, f"Bearer {TOKEN}x", "Bearer sk-an-api-key"):
        refused = metrics_access(token, "127.0.0.1", wrong)
        assert refused is not None, wrong
        assert refused[0] == 401, wrong
        assert "Authorization: Bearer" in refused[2]


def _app(tmp_path: Path, **settings: Any) -> TestClient:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "embedded_models": False,
        "models": [{"name": MODEL, "provider": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        **settings,
    }
    return TestClient(create_app(Settings(**values)))


def test_metrics_on_loopback_are_open(tmp_path: Path) -> None:
    with _app(tmp_path) as client:
        answer = client.get("/metrics")
        assert answer.status_code == 200
        assert "batchd_requests_in_flight" in answer.text
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_metrics_token_is_required_when_set_and_api_keys_do_not_open_it(tmp_path: Path) -> None:
    api_key = "sk-batchd-api-key-0123456789"
    with _app(tmp_path, metrics_token=TOKEN, api_keys=[{"key": api_key, "project": "p"}]) as client:
        for headers in ({}, {"Authorization": f"Bearer {api_key}"}, {"Authorization": "Bearer x"}):
            answer = client.get("/metrics", headers=headers)
            assert answer.status_code == 401, headers
            error = answer.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert "Authorization: Bearer <metrics_token>" in error["message"]
            assert answer.headers["www-authenticate"].startswith("Bearer")
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200
        assert "batchd_batches" in answer.text
        # and the token opens nothing of the API
        assert (
            client.get("/v1/batches", headers={"Authorization": f"Bearer {TOKEN}"}).status_code
            == 401
        )


def test_metrics_on_another_address_without_a_token_are_refused(tmp_path: Path) -> None:
    with _app(tmp_path, host="0.0.0.0", insecure=True) as client:
        answer = client.get("/metrics")
        assert answer.status_code == 403
        error = answer.json()["error"]
        assert error["code"] == "metrics_token_required"
        assert "set metrics_token" in error["message"]
    with _app(tmp_path, host="0.0.0.0", insecure=True, metrics_token=TOKEN) as client:
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200


def test_several_apps_in_one_process_each_have_their_metrics(tmp_path: Path) -> None:
    with _app(tmp_path / "a") as first, _app(tmp_path / "b") as second:
        assert first.get("/metrics").status_code == 200
        assert second.get("/metrics").status_code == 200
    assert Metrics().registry is not Metrics().registry


def test_worker_metrics_server_answers_and_guards() -> None:
    async def run() -> None:
        metrics = Metrics(process=False)
        metrics.requests_for(MODEL, "p").succeeded = 3

        async def counts() -> dict[str, int]:
            return {"completed": 2}

        port = free_port()
        server = await serve_metrics(
            metrics, counts, host="127.0.0.1", port=port, token=SecretStr(TOKEN)
        )
        try:

            def get(path: str, token: str | None) -> tuple[int, str]:
                request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
                if token:
                    request.add_header("Authorization", f"Bearer {token}")
                try:
                    with urllib.request.urlopen(request, timeout=5) as resp:
                        return resp.status, resp.read().decode()
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.read().decode()

            status, text = await asyncio.to_thread(get, "/metrics", TOKEN)
            assert status == 200
            assert f'batchd_requests_total{{model="{MODEL}",outcome="succeeded"}} 3.0' in text
            assert 'batchd_batches{status="completed"} 2.0' in text
            status, text = await asyncio.to_thread(get, "/metrics", None)
            assert status == 401
            assert "metrics_token" in text
            status, _ = await asyncio.to_thread(get, "/other", TOKEN)
            assert status == 404
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(run())


# -- shared mode -------------------------------------------------------------------------------


def test_worker_serves_its_metrics_in_shared_mode(tmp_path: Path) -> None:
    port = free_port()
    with (
        UpstreamProcess(tmp_path) as upstream,
        shared_mode(tmp_path, upstream, worker_args=("--metrics-port", str(port))) as (api, worker),
    ):
        assert f"metrics at http://127.0.0.1:{port}/metrics" in worker.log()
        bodies = {f"s-{i}": chat_body(f"shared {i}") for i in range(20)}
        with sdk(api) as client:
            batch_id = submit(client, [request_line(c, b) for c, b in bodies.items()])
            wait_for_batch(client, api, batch_id, {"completed"}, timeout=60)
        worker_samples = scrape(f"http://127.0.0.1:{port}/metrics")
        api_samples = scrape(f"{api.base_url}/metrics")
    assert total(worker_samples, "batchd_requests_total", outcome="succeeded") == 20
    assert total(worker_samples, "batchd_upstream_requests_total", code="200") == 20
    assert total(worker_samples, "batchd_result_commit_seconds_count", sink="database") > 0
    assert total(worker_samples, "batchd_batches", status="completed") == 1
    assert total(api_samples, "batchd_batches", status="completed") == 1
    assert total(api_samples, "batchd_validated_requests_total", source="upload") == 20
    assert total(api_samples, "batchd_requests_total") == 0  # the API process sends nothing


def test_worker_refuses_a_public_metrics_address_without_a_token(tmp_path: Path) -> None:
    from tests.serverproc import batchd

    config = write_config(tmp_path / "batchd.toml", database_url="postgresql://u@127.0.0.1:9/x")
    result = batchd(
        "worker",
        "--config",
        str(config),
        "--metrics-port",
        "9464",
        "--metrics-host",
        "0.0.0.0",
        timeout=30,
    )
    assert result.returncode != 0
    assert "set metrics_token" in result.stderr
