"""Adaptive concurrency against an upstream with a hidden capacity.

The fake upstream of the test suite (``tests/upstream``) answers in ``--latency-ms`` (100) and
refuses with a 429 (no ``Retry-After``) every request that finds ``--capacity`` (64) others in
flight. The same batch of ``--requests`` (10,000) chat requests runs through ``batchd serve``
three ways, in the same run:

fixed-low
    ``max_concurrency`` = ``--low`` (32): below the capacity.
fixed-high
    ``max_concurrency`` = ``--high`` (256): above it.
adaptive
    ``adaptive = true``, ``max_concurrency`` = ``--high``: the limit learnt from the answers.

Prints each run's requests/s, the 429s the upstream sent, the most requests it had in flight,
and adaptive's throughput against fixed-low and its 429s against fixed-high. ``max_attempts``
is 20, so that no request runs out of attempts.

    python bench/adaptive.py
    python bench/adaptive.py --requests 3000 --json
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

from tests.engine_support import MODEL, model_route
from tests.serverproc import BatchdServer, write_config
from tests.upstream.process import UpstreamProcess

WORK_DIR = Path(__file__).resolve().parent / ".work"


def batch_file(count: int) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": MODEL, "messages": [{"role": "user", "content": f"{i}"}]},
            }
        )
        + b"\n"
        for i in range(count)
    )


def run(
    root: Path, upstream: UpstreamProcess, args: argparse.Namespace, name: str, **route: Any
) -> dict[str, Any]:
    config = write_config(
        root / f"{name}.toml",
        models=[model_route(upstream, timeout=30.0, **route)],
        max_requests_per_batch=max(50_000, args.requests),
        max_attempts=20,
        retry_base_seconds=0.05,
        retry_cap_seconds=2.0,
    )
    upstream.reset()
    server = BatchdServer(root / f"data-{name}", config).start()
    try:
        client = openai.OpenAI(base_url=server.api_url, api_key="-", max_retries=0)
        batch, seconds = timed_batch(client, batch_file(args.requests), "/v1/chat/completions")
    finally:
        server.stop()
    stats = upstream.stats(digests=False)
    counts = batch.request_counts
    return {
        "status": batch.status,
        "seconds": seconds,
        "rps": args.requests / seconds,
        "completed": counts.completed if counts else 0,
        "failed": counts.failed if counts else 0,
        "429s": int(stats["by_outcome"].get("429", 0)),
        "max_in_flight": int(stats["max_in_flight"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--low", type=int, default=32)
    parser.add_argument("--high", type=int, default=256)
    parser.add_argument("--json", action="store_true", help="one JSON result line on stdout")
    args = parser.parse_args()
    WORK_DIR.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="adaptive-", dir=WORK_DIR))
    log = print if not args.json else (lambda *a: print(*a, file=sys.stderr))
    results: dict[str, dict[str, Any]] = {}
    with UpstreamProcess(root, latency_ms=args.latency_ms, capacity=args.capacity) as upstream:
        for name, route in (
            ("fixed-low", {"max_concurrency": args.low}),
            ("fixed-high", {"max_concurrency": args.high}),
            ("adaptive", {"max_concurrency": args.high, "adaptive": True}),
        ):
            result = results[name] = run(root, upstream, args, name, **route)
            log(
                f"{name:10s}: {result['rps']:7,.0f} requests/s, {result['429s']:6,} 429s, "
                f"at most {result['max_in_flight']} in flight at the upstream, "
                f"{result['completed']:,} completed, {result['failed']:,} failed"
            )
    adaptive, low, high = results["adaptive"], results["fixed-low"], results["fixed-high"]
    summary = {
        "throughput_vs_fixed_low": adaptive["rps"] / low["rps"],
        "throughput_vs_fixed_high": adaptive["rps"] / high["rps"],
        "429s_vs_fixed_high": adaptive["429s"] / max(1, high["429s"]),
    }
    log(
        f"hidden capacity {args.capacity}, {args.latency_ms:g} ms: adaptive / fixed-{args.low} "
        f"throughput {summary['throughput_vs_fixed_low']:.2f}, adaptive / fixed-{args.high} "
        f"throughput {summary['throughput_vs_fixed_high']:.2f} and 429s "
        f"{adaptive['429s']:,} / {high['429s']:,}"
    )
    if args.json:
        print(json.dumps({"runs": results, **summary}))


if __name__ == "__main__":
    main()
