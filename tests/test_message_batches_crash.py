"""Message Batches survive ``kill -9`` exactly once, as OpenAI batches do: ``batchd serve`` is
killed in the middle of a slow Message Batch and restarted on the same data directory; the batch
ends with one succeeded result per request, and no request counted before the kill is sent
again. Also in shared mode (an API process and a worker on PostgreSQL): a canceled Message Batch
counts its canceled requests from the results the workers stored."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import anthropic

from batchd.providers.messages import chat_body
from tests.engine_support import MODEL, log_tail, model_route, shared_mode, upstream_attempts
from tests.serverproc import BatchdServer, write_config
from tests.upstream.process import UpstreamProcess

ALIAS = "claude-haiku-4-5"


def params(text: str) -> dict[str, Any]:
    return {"model": ALIAS, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}


def sdk_on(server: BatchdServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="-", max_retries=0)


def test_a_message_batch_resumes_after_kill_9_exactly_once(tmp_path: Path) -> None:
    requests = [{"custom_id": f"slow-{i:03d}", "params": params(f"crash {i}")} for i in range(60)]
    with UpstreamProcess(tmp_path, latency_ms=100) as upstream:
        route = model_route(upstream, aliases=[ALIAS], max_concurrency=4, timeout=10.0)
        config = write_config(
            tmp_path / "batchd.toml", models=[route], progress_interval_seconds=0.1
        )
        srv = BatchdServer(tmp_path / "data", config).start()
        restarted = None
        try:
            with sdk_on(srv) as sdk:
                batch_id = sdk.messages.batches.create(requests=requests).id  # type: ignore[arg-type]
                deadline = time.monotonic() + 30
                while sdk.messages.batches.retrieve(batch_id).request_counts.succeeded < 8:
                    assert time.monotonic() < deadline, log_tail(srv)
                    time.sleep(0.01)
                time.sleep(0.3)
                counted = sdk.messages.batches.retrieve(batch_id).request_counts.succeeded
            srv.kill()
            assert srv.proc.returncode == -signal.SIGKILL
            upstream.wait_idle()
            sent_before = upstream.stats(digests=False)["total"]
            restarted = BatchdServer(tmp_path / "data", config).start()
            with sdk_on(restarted) as sdk:
                deadline = time.monotonic() + 60
                while (batch := sdk.messages.batches.retrieve(batch_id)).processing_status != (
                    "ended"
                ):
                    assert time.monotonic() < deadline, log_tail(restarted)
                    time.sleep(0.05)
                results = list(sdk.messages.batches.results(batch_id))
        finally:
            srv.stop()
            if restarted is not None:
                restarted.stop()
        bodies = [{**chat_body(r["params"]), "model": MODEL} for r in requests]  # type: ignore[arg-type]
        attempts = upstream_attempts(upstream, bodies)
    assert batch.request_counts.succeeded == len(requests)
    ids = [line.custom_id for line in results]
    assert sorted(ids) == sorted(r["custom_id"] for r in requests)  # each exactly once
    assert {line.result.type for line in results} == {"succeeded"}
    resent = sum(attempts) - len(requests)
    assert min(attempts) == 1
    assert resent <= sent_before - counted, (resent, sent_before, counted)


def test_a_canceled_message_batch_in_shared_mode(tmp_path: Path) -> None:
    requests = [{"custom_id": f"s{i:03d}", "params": params(f"shared {i}")} for i in range(40)]
    with (
        UpstreamProcess(tmp_path, latency_ms=150) as upstream,
        shared_mode(tmp_path, upstream, aliases=[ALIAS], max_concurrency=2) as (api, _worker),
        sdk_on(api) as sdk,
    ):
        batch_id = sdk.messages.batches.create(requests=requests).id  # type: ignore[arg-type]
        deadline = time.monotonic() + 60
        while sdk.messages.batches.retrieve(batch_id).request_counts.succeeded < 2:
            assert time.monotonic() < deadline, log_tail(api)
            time.sleep(0.05)
        sdk.messages.batches.cancel(batch_id)
        while (batch := sdk.messages.batches.retrieve(batch_id)).processing_status != "ended":
            assert time.monotonic() < deadline, log_tail(api)
            time.sleep(0.05)
        kinds: dict[str, int] = {}
        for line in sdk.messages.batches.results(batch_id):
            kinds[line.result.type] = kinds.get(line.result.type, 0) + 1
    counts = batch.request_counts
    assert counts.canceled > 0
    assert counts.succeeded + counts.canceled == len(requests)
    assert kinds == {"succeeded": counts.succeeded, "canceled": counts.canceled}
