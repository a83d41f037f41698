"""Fairness: a small batch of one project beside a large batch of another, against it alone.

A ``batchd serve`` subprocess with two API keys (projects ``a`` and ``b``) and one route on the
fake upstream of the test suite (``tests/upstream``: ``--latency-ms`` per answer, 20 by default;
``max_concurrency`` = ``--concurrency``, 64). Measured in the same run:

alone
    A batch of ``--small`` requests (100) on the idle server, create -> ``completed``
    (``GET /v1/batches/{id}`` every 20 ms), ``--rounds`` times (3), each of a project of its
    own (a project's own recent use counts against it, by design: each round is a project that
    has not used the model lately, as in the issue's scenario).
beside
    The same while project a's batch of ``--large`` requests (200,000) keeps every slot of the
    model busy (started first, and running: requests completed before each round).

Prints each round, the medians, the ratio beside / alone (issue 19's target: at most 1.5) and
how far the large batch got meanwhile (it is cancelled at the end). The model's slots go by
recent use (``batchd.engine.fairness``): the small batch's project has none, so it gets the
slots it asks for until it catches up.

    python bench/fairness.py                       # 200,000 beside 100, concurrency 64, 20 ms
    python bench/fairness.py --large 20000 --small 50 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.engine_support import MODEL, model_route
from tests.serverproc import BatchdServer, write_config
from tests.upstream.process import UpstreamProcess

WORK_DIR = Path(__file__).resolve().parent / ".work"
ROUNDS_MAX = 20
POLL = 0.02


def batch_file(prefix: str, count: int) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"{prefix}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"{prefix} {i}"}],
                },
            }
        )
        + b"\n"
        for i in range(count)
    )


def create(client: openai.OpenAI, prefix: str, count: int) -> str:
    file_id = client.files.create(
        file=(f"{prefix}.jsonl", batch_file(prefix, count)), purpose="batch"
    )
    return client.batches.create(
        input_file_id=file_id.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def until(client: openai.OpenAI, batch_id: str, statuses: set[str], timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if batch.status in {"failed", "expired", "cancelled"} or time.monotonic() > deadline:
            raise SystemExit(f"batch {batch_id} ended {batch.status}: {batch.errors}")
        time.sleep(POLL)


def completed(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return 0 if counts is None else counts.completed


def small_round(client: openai.OpenAI, count: int, label: str) -> float:
    started = time.perf_counter()
    batch_id = create(client, label, count)
    created = time.perf_counter()
    until(client, batch_id, {"in_progress", "finalizing", "completed"})
    running = time.perf_counter()
    batch = until(client, batch_id, {"completed"})
    seconds = time.perf_counter() - started
    print(
        f"  {label}: upload and create {created - started:.3f} s, to running "
        f"{running - created:.3f} s, to completed {time.perf_counter() - running:.3f} s",
        file=sys.stderr,
    )
    counts = batch.request_counts
    if counts is None or counts.completed != count:
        raise SystemExit(f"batch {batch_id} completed {counts}, not {count} requests")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=200_000, help="requests of the large batch")
    parser.add_argument("--small", type=int, default=100, help="requests of the small batch")
    parser.add_argument("--concurrency", type=int, default=64, help="the route's max_concurrency")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="the upstream's latency")
    parser.add_argument(
        "--jitter-ms", type=float, default=200.0, help="plus uniform [0, jitter) per answer"
    )
    parser.add_argument("--rounds", type=int, default=3, help="small batches alone and beside")
    parser.add_argument("--json", action="store_true", help="one JSON result line on stdout")
    args = parser.parse_args()
    WORK_DIR.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="fairness-", dir=WORK_DIR))
    rounds = range(min(args.rounds, ROUNDS_MAX))
    projects = ["a", "warm-up", *(f"alone-{r}" for r in rounds), *(f"beside-{r}" for r in rounds)]
    log = print if not args.json else (lambda *a: print(*a, file=sys.stderr))
    with UpstreamProcess(root, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms) as upstream:
        route = model_route(upstream, max_concurrency=args.concurrency, timeout=30.0)
        config = write_config(
            root / "batchd.toml",
            models=[route],
            api_keys=[{"key": f"bench-key-{project}", "project": project} for project in projects],
            max_requests_per_batch=max(args.large, 50_000),
            progress_interval_seconds=0.2,
        )
        server = BatchdServer(root / "data", config).start()
        try:
            clients = {
                project: openai.OpenAI(
                    base_url=server.api_url, api_key=f"bench-key-{project}", max_retries=0
                )
                for project in projects
            }
            a = clients["a"]
            small_round(clients["warm-up"], args.small, "warm-up")
            alone = [small_round(clients[f"alone-{r}"], args.small, f"alone{r}") for r in rounds]
            for seconds in alone:
                log(f"alone: {args.small} requests in {seconds:.3f} s")
            large = create(a, "large", args.large)
            until(a, large, {"in_progress"})
            while completed(a, large) == 0:
                time.sleep(POLL)
            time.sleep(1.0)  # every slot busy with the large batch
            beside = []
            for r in rounds:
                beside.append(small_round(clients[f"beside-{r}"], args.small, f"beside{r}"))
                log(f"beside the large batch: {args.small} requests in {beside[-1]:.3f} s")
            progress = completed(a, large)
            a.batches.cancel(large)
        finally:
            server.stop()
    alone_s, beside_s = statistics.median(alone), statistics.median(beside)
    ratio = beside_s / alone_s
    result = {
        "large": args.large,
        "small": args.small,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        "jitter_ms": args.jitter_ms,
        "alone_s": alone_s,
        "beside_s": beside_s,
        "alone_rounds": alone,
        "beside_rounds": beside,
        "ratio": ratio,
        "target_met": ratio <= 1.5,
        "large_completed_meanwhile": progress,
    }
    log(
        f"small batch ({args.small} requests, a project of its own): alone {alone_s:.3f} s, "
        f"beside project a's {args.large:,}-request batch {beside_s:.3f} s "
        f"(medians of {args.rounds}); "
        f"beside / alone {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'}); "
        f"the large batch completed {progress:,} requests meanwhile"
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
