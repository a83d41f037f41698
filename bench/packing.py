"""Packed embeddings: an embeddings batch through ``batchd serve`` with and without packing.

N embeddings lines (``--requests``, default 20,000; one short text each, ``--dimensions``
384) against the fake upstream of the test suite (``tests/upstream``: ``--latency-ms`` per
call, 5 by default), an ``openai`` route with ``max_concurrency`` = ``--concurrency`` (8, an
embeddings server's few streams), measured in the same run:

single
    ``pack_inputs = 1``: one upstream call a line (batchd before issue 19).
packed
    ``pack_inputs`` = ``--pack`` (64, the default): the inputs of up to 64 lines a call.

Each: upload, create, ``GET /v1/batches/{id}`` every 20 ms until ``completed``; prints
requests/s, the upstream calls, and packed / single. The output files of both are compared:
every line's vector is the same.

    python bench/packing.py
    python bench/packing.py --requests 5000 --latency-ms 20 --json
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
MODEL = "text-embedding-3-small"


def batch_file(count: int, dimensions: int) -> bytes:
    body = {"model": MODEL, "input": "", "dimensions": dimensions}
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {**body, "input": f"the text of line {i}"},
            }
        )
        + b"\n"
        for i in range(count)
    )


def run(
    root: Path, upstream: UpstreamProcess, args: argparse.Namespace, pack: int
) -> dict[str, Any]:
    route = model_route(
        upstream, name=MODEL, max_concurrency=args.concurrency, timeout=30.0, pack_inputs=pack
    )
    config = write_config(
        root / f"batchd-{pack}.toml",
        models=[route],
        max_requests_per_batch=max(50_000, args.requests),
    )
    upstream.reset()
    server = BatchdServer(root / f"data-{pack}", config).start()
    try:
        client = openai.OpenAI(base_url=server.api_url, api_key="-", max_retries=0)
        data = batch_file(args.requests, args.dimensions)
        batch, seconds = timed_batch(client, data, "/v1/embeddings", poll=0.02)
        if batch.status != "completed" or batch.output_file_id is None:
            raise SystemExit(f"pack_inputs {pack}: the batch ended {batch.status}")
        output = client.files.content(batch.output_file_id).content
    finally:
        server.stop()
    vectors = {}
    for line in output.splitlines():
        record = orjson.loads(line)
        vectors[record["custom_id"]] = record["response"]["body"]["data"][0]["embedding"]
    calls = upstream.stats(digests=False)["total"]
    return {"seconds": seconds, "rps": args.requests / seconds, "calls": calls, "vectors": vectors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--pack", type=int, default=64, help="pack_inputs of the packed run")
    parser.add_argument("--dimensions", type=int, default=384, help="of each vector")
    parser.add_argument("--json", action="store_true", help="one JSON result line on stdout")
    args = parser.parse_args()
    WORK_DIR.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="packing-", dir=WORK_DIR))
    log = print if not args.json else (lambda *a: print(*a, file=sys.stderr))
    with UpstreamProcess(root, latency_ms=args.latency_ms) as upstream:
        single = run(root, upstream, args, 1)
        log(f"single: {single['rps']:,.0f} requests/s ({single['calls']:,} upstream calls)")
        packed = run(root, upstream, args, args.pack)
        log(f"packed: {packed['rps']:,.0f} requests/s ({packed['calls']:,} upstream calls)")
    same = single.pop("vectors") == packed.pop("vectors")
    ratio = packed["rps"] / single["rps"]
    log(
        f"{args.requests:,} embeddings lines ({args.dimensions} dimensions), upstream "
        f"{args.latency_ms:g} ms a call, concurrency {args.concurrency}: packed ({args.pack} "
        f"inputs a call) / single = {ratio:.2f}; "
        f"vectors identical: {same}"
    )
    if args.json:
        print(json.dumps({"single": single, "packed": packed, "ratio": ratio, "same": same}))


if __name__ == "__main__":
    main()
