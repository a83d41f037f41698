"""The result cache: what it costs on a first batch, and what a batch submitted again saves.

N chat lines with ``"temperature": 0`` (``--requests``, default 20,000) through ``batchd serve``
against the fake upstream of the test suite (``tests/upstream``: ``--latency-ms`` per call, 20
by default), routes of ``max_concurrency`` = ``--concurrency`` (64), measured in one run on one
server:

off
    a route without the cache (the baseline).
cold
    the same lines on a route with ``cache = true``, nothing cached yet: every line is looked
    up (a query per 512), sent, and its answer stored.
again
    the cold batch submitted again with ``--changed`` of its lines changed (1 %): only those
    reach the upstream.

Each: upload, create, ``GET /v1/batches/{id}`` every 20 ms until ``completed``; prints
requests/s and upstream calls, cold / off (the cache's cost) and again / off.

    python bench/cache.py
    python bench/cache.py --requests 5000 --latency-ms 50 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import openai
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timed_batch import timed_batch

from tests.engine_support import model_route
from tests.serverproc import BatchdServer, write_config
from tests.upstream.process import UpstreamProcess

WORK_DIR = Path(__file__).resolve().parent / ".work"
CHAT = "/v1/chat/completions"


def batch_file(model: str, count: int, changed: int = 0) -> bytes:
    """``count`` lines for ``model``; the first ``changed`` of every 100 reworded."""
    lines = []
    for i in range(count):
        text = f"Classify item {i} as one of: news, sport, culture."
        if i % 100 < changed:
            text += " (fixed)"
        body = {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "temperature": 0,
            "max_tokens": 16,
        }
        line = {"custom_id": f"line-{i}", "method": "POST", "url": CHAT, "body": body}
        lines.append(orjson.dumps(line) + b"\n")
    return b"".join(lines)


def measure(
    client: openai.OpenAI, upstream: UpstreamProcess, data: bytes, count: int
) -> dict[str, Any]:
    before = upstream.stats(digests=False)["total"]
    batch, seconds = timed_batch(client, data, CHAT, poll=0.02)
    if batch.status != "completed" or batch.request_counts.completed != count:
        raise SystemExit(f"the batch ended {batch.status}: {batch.request_counts}")
    calls = upstream.stats(digests=False)["total"] - before
    cached = batch.usage.input_tokens_details.cached_tokens if batch.usage else 0
    return {"seconds": seconds, "rps": count / seconds, "calls": calls, "cached_tokens": cached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--changed", type=int, default=1, help="lines changed per 100, again")
    parser.add_argument("--json", action="store_true", help="one JSON result line on stdout")
    args = parser.parse_args()
    WORK_DIR.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="cache-", dir=WORK_DIR))
    log = print if not args.json else (lambda *a: print(*a, file=sys.stderr))
    n = args.requests
    with UpstreamProcess(root, latency_ms=args.latency_ms) as upstream:
        routes = [
            model_route(upstream, name=name, max_concurrency=args.concurrency, timeout=30.0, **opt)
            for name, opt in (("plain", {}), ("cached", {"cache": True}))
        ]
        limit = max(50_000, n)
        config = write_config(root / "batchd.toml", models=routes, max_requests_per_batch=limit)
        server = BatchdServer(root / "data", config).start()
        try:
            client = openai.OpenAI(base_url=server.api_url, api_key="-", max_retries=0)
            results = {
                "off": measure(client, upstream, batch_file("plain", n), n),
                "cold": measure(client, upstream, batch_file("cached", n), n),
                "again": measure(client, upstream, batch_file("cached", n, args.changed), n),
            }
        finally:
            server.stop()
    for name, result in results.items():
        log(f"{name:>5}: {result['rps']:,.0f} requests/s ({result['calls']:,} upstream calls)")
    cold = results["cold"]["rps"] / results["off"]["rps"]
    again = results["again"]["rps"] / results["off"]["rps"]
    log(
        f"{n:,} chat lines, upstream {args.latency_ms:g} ms a call, concurrency "
        f"{args.concurrency}: cold / off = {cold:.2f} (the cache's cost on a first batch); "
        f"again with {args.changed} % changed / off = {again:.2f}, "
        f"{results['again']['calls']:,} upstream calls instead of {n:,}"
    )
    if args.json:
        print(json.dumps({**results, "cold_ratio": cold, "again_ratio": again}))


if __name__ == "__main__":
    main()
