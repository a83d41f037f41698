"""Anthropic's Message Batches against the same requests as an OpenAI batch: what the second
dialect costs.

N Messages requests (``--requests``, default 20,000; ``max_tokens``, a system prompt, one user
message) through ``batchd serve`` on a chat route (alias ``claude-haiku-4-5``, translated to chat
completions) against the fake upstream of the test suite (``tests/upstream``: ``--latency-ms``
per call, 20 by default; ``max_concurrency`` = ``--concurrency``, 64), measured in one run on
one server:

openai (the baseline)
    the requests as a JSONL file of ``/v1/messages`` lines: upload, ``POST /v1/batches``, poll
    until ``completed``, download the output file.
anthropic
    the same requests inline: ``POST /v1/messages/batches`` (stream-parsed into the same kind of
    file), poll until ``ended``, stream ``/results`` (converted to Anthropic's lines).

Both bodies are encoded before the clock starts; both are sent and read with httpx (not the
SDKs' model parsing, which is the client's cost); a warm-up batch first, then ``--rounds`` (2)
of each, alternated. Prints each phase (submit, run, results) averaged over the rounds, the
totals in requests/s and anthropic / openai.

    python bench/message_batches.py
    python bench/message_batches.py --requests 100000 --latency-ms 1 --concurrency 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.engine_support import model_route
from tests.serverproc import BatchdServer, write_config
from tests.upstream.process import UpstreamProcess

WORK_DIR = Path(__file__).resolve().parent / ".work"
ALIAS = "claude-haiku-4-5"
HEADERS = {"authorization": "Bearer -", "anthropic-version": "2023-06-01"}


def requests_of(count: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"req-{i}",
            "params": {
                "model": ALIAS,
                "max_tokens": 32,
                "system": "Answer with one word: positive, negative or neutral.",
                "messages": [
                    {"role": "user", "content": f"({tag}) Review {i}: the plot was fine."}
                ],
            },
        }
        for i in range(count)
    ]


def as_jsonl(requests: list[dict[str, Any]]) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": r["custom_id"],
                "method": "POST",
                "url": "/v1/messages",
                "body": r["params"],
            }
        )
        + b"\n"
        for r in requests
    )


def poll(http: httpx.Client, path: str, done: Any) -> dict[str, Any]:
    while True:
        state: dict[str, Any] = http.get(path).json()
        if done(state):
            return state
        time.sleep(0.02)


def run_openai(http: httpx.Client, data: bytes, count: int) -> dict[str, float]:
    started = time.perf_counter()
    upload = http.post(
        "/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}
    ).json()
    created = http.post(
        "/v1/batches",
        json={
            "input_file_id": upload["id"],
            "endpoint": "/v1/messages",
            "completion_window": "24h",
        },
    ).json()
    submitted = time.perf_counter()
    ended = poll(http, f"/v1/batches/{created['id']}", lambda b: b["status"] in _ENDED)
    if ended["status"] != "completed" or ended["request_counts"]["completed"] != count:
        raise SystemExit(f"the OpenAI batch ended {ended['status']}: {ended['request_counts']}")
    ran = time.perf_counter()
    lines = http.get(f"/v1/files/{ended['output_file_id']}/content").content.count(b"\n")
    if lines != count:
        raise SystemExit(f"{lines} output lines, not {count}")
    return _phases(started, submitted, ran, time.perf_counter())


def run_anthropic(http: httpx.Client, body: bytes, count: int) -> dict[str, float]:
    started = time.perf_counter()
    answer = http.post("/v1/messages/batches", content=body)
    if answer.status_code != 200:
        raise SystemExit(f"create: {answer.status_code} {answer.text}")
    batch_id = answer.json()["id"]
    submitted = time.perf_counter()
    ended = poll(
        http, f"/v1/messages/batches/{batch_id}", lambda b: b["processing_status"] == "ended"
    )
    if ended["request_counts"]["succeeded"] != count:
        raise SystemExit(f"the message batch ended with {ended['request_counts']}")
    ran = time.perf_counter()
    succeeded = 0
    with http.stream("GET", ended["results_url"]) as results:
        for line in results.iter_lines():
            succeeded += b'"type":"succeeded"' in line.encode()
    if succeeded != count:
        raise SystemExit(f"{succeeded} succeeded results, not {count}")
    return _phases(started, submitted, ran, time.perf_counter())


_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


def _phases(started: float, submitted: float, ran: float, read: float) -> dict[str, float]:
    return {
        "submit": submitted - started,
        "run": ran - submitted,
        "results": read - ran,
        "total": read - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternated")
    parser.add_argument("--json", action="store_true", help="one JSON result line on stdout")
    args = parser.parse_args()
    WORK_DIR.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="message-batches-", dir=WORK_DIR))
    log = print if not args.json else (lambda *a: print(*a, file=sys.stderr))
    n = args.requests
    file_data = as_jsonl(requests_of(n, "openai"))
    inline = orjson.dumps({"requests": requests_of(n, "anthropic")})
    with UpstreamProcess(root, latency_ms=args.latency_ms) as upstream:
        route = model_route(
            upstream, aliases=[ALIAS], max_concurrency=args.concurrency, timeout=30.0
        )
        config = write_config(
            root / "batchd.toml", models=[route], message_batch_max_requests=max(n, 100_000)
        )
        server = BatchdServer(root / "data", config).start()
        try:
            with httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=600) as http:
                run_openai(http, as_jsonl(requests_of(200, "warm-up")), 200)  # connections
                rounds: dict[str, list[dict[str, float]]] = {"openai": [], "anthropic": []}
                for _ in range(args.rounds):  # alternated: drift hits both alike
                    rounds["openai"].append(run_openai(http, file_data, n))
                    rounds["anthropic"].append(run_anthropic(http, inline, n))
            results = {
                name: {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
                for name, runs in rounds.items()
            }
        finally:
            server.stop()
    for name, phases in results.items():
        log(
            f"{name:>9}: {n / phases['total']:,.0f} requests/s in all; submit "
            f"{phases['submit']:.2f} s, run {phases['run']:.2f} s, results "
            f"{phases['results']:.2f} s"
        )
    ratio = results["openai"]["total"] / results["anthropic"]["total"]
    log(
        f"{n:,} Messages requests ({len(inline) / 1e6:.1f} MB inline), upstream "
        f"{args.latency_ms:g} ms a call, concurrency {args.concurrency}: anthropic / openai "
        f"throughput = {ratio:.2f}; submit {len(inline) / 1e6 / results['anthropic']['submit']:.0f}"
        " MB/s inline"
    )
    if args.json:
        print(json.dumps({**results, "ratio": ratio}))


if __name__ == "__main__":
    main()
