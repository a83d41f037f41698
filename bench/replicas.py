"""One route over three servers of different speeds: does batchd get the sum of their throughputs?

Three fake upstreams (``tests/upstream``, each its own process on uvloop) answer in 20, 50 and
200 ms (``--latencies``). Measured in the same run, each through a real ``batchd serve`` and the
``openai`` SDK (upload, create, poll to ``completed``, download and count the output):

alone-N
    a route on that server only, ``max_concurrency`` = ``--concurrency`` (16), a batch sized to
    last about ``--seconds`` (3 s) at that server's speed;
together
    one route with the three as ``base_urls`` (each ``max_concurrency`` = ``--concurrency``, the
    route the sum), a batch sized to last about ``--seconds`` at the sum of their speeds.

Prints each run's requests/s, how the ``together`` batch was split between the servers (each
server's request count), and the ratio of ``together`` to the sum of the ``alone`` runs (target
>= 0.9).

    python bench/replicas.py
    python bench/replicas.py --latencies 20,50,200 --concurrency 32 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import batch_file, log, run_batch

from tests.serverproc import BatchdServer, write_config
from tests.upstream.process import UpstreamProcess

MODEL = "gpt-4o-mini"
TARGET = 0.9


def measure(root: Path, urls: list[str], concurrency: int, requests: int) -> float:
    """Requests/s of one batch of ``requests`` through a route on ``urls``."""
    root.mkdir(parents=True)
    route: dict[str, Any] = {"name": MODEL, "provider": "openai", "timeout": 30.0}
    if len(urls) == 1:
        route.update(base_url=urls[0], max_concurrency=concurrency)
    else:
        route["base_urls"] = [{"url": url, "max_concurrency": concurrency} for url in urls]
    config = write_config(root / "batchd.toml", models=[route], max_requests_per_batch=100_000)
    server = BatchdServer(root / "data", config).start(timeout=60)
    try:
        run_batch(server.api_url, batch_file(100), 100)  # warm up: connections
        seconds, _ = run_batch(server.api_url, batch_file(requests), requests)
    finally:
        server.stop()
    return requests / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latencies", default="20,50,200", help="ms of each server")
    parser.add_argument("--concurrency", type=int, default=16, help="per server")
    parser.add_argument("--seconds", type=float, default=3.0, help="about how long each batch")
    parser.add_argument("--json", action="store_true", help="one JSON result line on stdout")
    args = parser.parse_args()
    latencies = [float(ms) for ms in args.latencies.split(",")]
    work = Path(tempfile.mkdtemp(prefix="batchd-replicas-"))
    results: dict[str, Any] = {"latencies_ms": latencies, "concurrency": args.concurrency}
    try:
        with contextlib.ExitStack() as stack:
            upstreams = []
            for i, latency in enumerate(latencies):
                (work / f"up{i}").mkdir()
                upstreams.append(
                    stack.enter_context(
                        UpstreamProcess(work / f"up{i}", latency_ms=latency, uvloop=True)
                    )
                )
            alone = []
            for i, (upstream, latency) in enumerate(zip(upstreams, latencies, strict=True)):
                ideal = args.concurrency / (latency / 1000)
                rate = measure(
                    work / f"alone{i}",
                    [upstream.api_url],
                    args.concurrency,
                    max(200, int(ideal * args.seconds)),
                )
                alone.append(rate)
                log(f"alone-{latency:g}ms: {rate:8.1f} req/s (ideal {ideal:.0f})")
            before = [u.stats(digests=False)["total"] for u in upstreams]
            total = int(sum(alone) * args.seconds)
            together = measure(
                work / "together", [u.api_url for u in upstreams], args.concurrency, total
            )
            split = [
                u.stats(digests=False)["total"] - b for u, b in zip(upstreams, before, strict=True)
            ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = together / sum(alone)
    log(f"together: {together:8.1f} req/s; split (incl. 100 warm-up requests): {split}")
    log(f"together / sum of alone ({sum(alone):.1f}): {ratio:.2f}")
    verdict = "meets" if ratio >= TARGET else "misses"
    log(f"{verdict} the target of {TARGET}")
    results.update(
        alone_req_per_s=[round(r, 1) for r in alone],
        together_req_per_s=round(together, 1),
        split=split,
        ratio=round(ratio, 3),
    )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
