"""The batch layer's own cost per result, without a GPU: an instant provider against the floor.

The ``instant`` provider (``bench/instant_provider.py``) returns precomputed results at once,
so a batch costs only what batchd does with each result: reading the input, building the result
objects, journaling them, finalizing the output file, and (for ``serve``) uploading and
downloading. Four cases, each with N requests (``--requests``, default 100,000):

emb-384, emb-1536
    ``/v1/embeddings``, one input a line; a float vector of 384 or 1536 dimensions per result
    (the shortest decimals of the float32 values, as the ``sentence-transformers`` provider
    writes them).
emb-384-b64
    The same 384-dim vectors with ``encoding_format: "base64"``.
chat-300
    ``/v1/chat/completions``, a 300-token answer per result (the route has group size 1 and
    64 requests in flight, as an ``openai`` route does).

Each case runs three ways, measured in the same run:

floor
    In the bench process: the same output file from the same results with the fastest plain
    code: for each request the output line (``{"id", "custom_id", "response": {"status_code",
    "request_id", "body"}, "error"}``) with ``orjson.dumps`` on the prepared objects (the
    vectors as lists of Python floats, converted from the float32 rows before the clock starts;
    for base64 the rows' bytes encoded while timed; the chat bodies as dicts), each line
    (``OPT_APPEND_NEWLINE``) written into one 1 MiB buffered file (best of ``--floor-repeat``;
    the ``fsync`` after it is timed apart). Line by line into the buffer is the fastest plain
    way found: joining all lines into one bytes object and writing it once ran at half the
    speed (32k against 68k lines/s for emb-384: the large allocations' page faults). Its ids
    have the shape and length of batchd's (a counter in hex).
    For the float cases a second floor, ``numpy``, gives orjson the float32 rows themselves
    (``OPT_SERIALIZE_NUMPY``): faster, but not the same file (a value below 1e-5 is written
    without an exponent), so the ratios are taken against the first.
run
    ``batchd run INPUT -o OUTPUT --config C`` as a subprocess: the whole command (interpreter
    start, storing and validating the input, the batch, the output written, the state
    directory removed).
serve
    A ``batchd serve`` subprocess (started before, not timed): upload (``POST /v1/files``),
    ``POST /v1/batches``, ``GET /v1/batches/{id}`` every ``--poll`` s until ``completed``,
    download of the output file.

Every output file is compared with the floor's: line count, size, and whether the lines are
byte-identical once the ``batch_req_`` and ``req_`` ids (which differ, with the same length)
are masked.

Figures: results/s and MB/s of output (wall clock), the ratio to the floor's results/s, the
batchd process's CPU per result by stage, and the stages' wall seconds. Stages: the process's
CPU (``/proc``, sampled every 10 ms, per thread) cut at the provider's first call and at the
log's ``finalizing`` and ``completed`` records; the provider's own CPU from its counters, so
``engine+journal`` is the dispatch stage less the provider. ``--profile`` runs ``run`` once more
per case under py-spy (``--gil``: the thread holding the GIL, i.e. Python's own CPU, not the
waits of idle threads) and prints where it goes: self time by function, and by stage (the first
marker of ``_BUCKETS`` from the leaf up).

    python bench/result_path.py                         # 100,000 requests, every case, both paths
    python bench/result_path.py --requests 2000 --cases emb-384,chat-300 --paths run
    python bench/result_path.py --profile --json        # with py-spy; one JSON line on stdout
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.instant_provider import (
    CHAT,
    EMBEDDINGS,
    chat_answers,
    chat_body,
    embedding_tokens,
    plugin_dir,
    vectors,
)
from bench.result_stages import (
    Sampler,
    children_cpu,
    compare,
    log_times,
    provider_marks,
    stages,
)

from tests.serverproc import BatchdServer, clean_env, write_config

ROOT = Path(__file__).resolve().parents[1]
WORK_DIR = ROOT / "bench" / ".work"
PY_SPY = Path(sys.executable).with_name("py-spy")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
BUFFER = 1 << 20  # the floor's file buffer
POOL = 8192  # distinct vectors and answers (request i gets number i % POOL)
CHAT_TOKENS = 300
CHAT_CONCURRENCY = 64  # an openai route's default max_concurrency
EMBEDDING_GROUP = 512  # the sentence-transformers provider's default group_size
TARGETS = {"run": 0.8, "serve": 0.7}  # issue 18: x the floor
# The ids batchd draws: masked when the files are compared (same length as the floor's).


@dataclass(frozen=True)
class Case:
    name: str
    endpoint: str
    dimensions: int = 384
    base64: bool = False

    @property
    def model(self) -> str:
        return f"instant-{self.name}"

    def route(self, stats_path: Path) -> dict[str, Any]:
        chat = self.endpoint == CHAT
        return {
            "name": self.model,
            "provider": "instant",
            "serves": "chat" if chat else "embeddings",
            "dimensions": self.dimensions,
            "pool": POOL,
            "answer_tokens": CHAT_TOKENS,
            "group_size": 1 if chat else EMBEDDING_GROUP,
            "max_concurrency": CHAT_CONCURRENCY if chat else 1,
            "stats_path": str(stats_path),
        }

    def body(self, i: int) -> dict[str, Any]:
        if self.endpoint == CHAT:
            return {
                "model": self.model,
                "messages": [{"role": "user", "content": f"Question {i}: what is {i % 97}?"}],
                "max_tokens": CHAT_TOKENS,
            }
        body: dict[str, Any] = {"model": self.model, "input": f"Sentence number {i} of the set."}
        if self.base64:
            body["encoding_format"] = "base64"
        return body


CASES = {
    case.name: case
    for case in (
        Case("emb-384", EMBEDDINGS, 384),
        Case("emb-1536", EMBEDDINGS, 1536),
        Case("emb-384-b64", EMBEDDINGS, 384, base64=True),
        Case("chat-300", CHAT),
    )
}
PATHS = ("run", "serve")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def batch_input(case: Case, n: int) -> bytes:
    return b"".join(
        orjson.dumps(
            {"custom_id": f"r-{i}", "method": "POST", "url": case.endpoint, "body": case.body(i)}
        )
        + b"\n"
        for i in range(n)
    )


# -- the floor -------------------------------------------------------------------------------------


def floor(case: Case, n: int, out: Path, repeat: int, numpy: bool = False) -> dict[str, Any]:
    """The output file from the results with plain code: best of ``repeat``, then an fsync.

    The results, prepared before the clock starts: float vectors as lists of Python floats
    (the values of the float32 rows, as today's output writes them); base64 vectors as the
    float32 rows (encoded while timed); chat bodies as dicts. With ``numpy`` the float rows
    go to ``orjson`` as numpy arrays (``OPT_SERIALIZE_NUMPY``): faster, but not the same
    file (orjson writes a float32 below 1e-5 without an exponent, ``0.00000799935`` for
    ``7.99935e-6``).
    """
    custom_ids = [f"r-{i}" for i in range(n)]
    tokens = [embedding_tokens(i) for i in range(n)]
    rows = vectors(case.dimensions, POOL)
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
    floats: Any = rows
    if case.endpoint == EMBEDDINGS and not case.base64 and not numpy:
        floats = [orjson.loads(orjson.dumps(row, option=option)) for row in rows]
    answers = chat_answers(CHAT_TOKENS, POOL)
    bodies = (
        [chat_body(i, case.model, answers[i % POOL], CHAT_TOKENS) for i in range(n)]
        if case.endpoint == CHAT
        else []
    )
    dumps, b64 = orjson.dumps, base64.b64encode

    def output_line(i: int, body: dict[str, Any]) -> bytes:
        return dumps(
            {
                "id": f"batch_req_{i:032x}",
                "custom_id": custom_ids[i],
                "response": {"status_code": 200, "request_id": f"req_{i:032x}", "body": body},
                "error": None,
            },
            option=option,
        )

    def embedding_line(i: int) -> bytes:
        t = tokens[i]
        row = b64(rows[i % POOL].tobytes()).decode() if case.base64 else floats[i % POOL]
        return output_line(
            i,
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": row}],
                "model": case.model,
                "usage": {"prompt_tokens": t, "total_tokens": t},
            },
        )

    def chat_line(i: int) -> bytes:
        return output_line(i, bodies[i])

    line = chat_line if case.endpoint == CHAT else embedding_line
    best = float("inf")
    cpu_best = 0.0
    for _ in range(repeat):
        out.unlink(missing_ok=True)
        cpu = time.process_time()
        started = time.perf_counter()
        with open(out, "wb", buffering=BUFFER) as fh:
            write = fh.write
            for i in range(n):
                write(line(i))
        seconds = time.perf_counter() - started
        if seconds < best:
            best, cpu_best = seconds, time.process_time() - cpu
    started = time.perf_counter()
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    size = out.stat().st_size
    return {
        "seconds": best,
        "rps": n / best,
        "mb_s": size / 1e6 / best,
        "output_mb": size / 1e6,
        "cpu_us": 1e6 * cpu_best / n,
        "fsync_s": time.perf_counter() - started,
    }


def run_path(case: Case, n: int, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """``batchd run`` to its end; the output file is left at ``work/run-output.jsonl``."""
    input_path, output = work / f"{case.name}.jsonl", work / "run-output.jsonl"
    state, stats_path = work / "run-state", work / "run-provider.json"
    config = write_config(work / "run.toml", models=[case.route(stats_path)])
    cmd = [sys.executable, "-m", "batchd", "run", str(input_path), "-o", str(output)]
    cmd += ["--config", str(config), "--state-dir", str(state), "--keep-state"]
    cmd += ["--progress-interval", "3600", "--log-format", "json"]
    cpu = children_cpu()
    spawned = time.time()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    with Sampler(proc.pid) as sampler:
        _, err = proc.communicate()
    exited = time.time()
    total_cpu = children_cpu() - cpu
    if proc.returncode != 0:
        raise RuntimeError(f"batchd run exited {proc.returncode}: {err.decode()[-3000:]}")
    # `batchd run` removes its state directory at the end; --keep-state kept it for the log.
    marks = log_times((state / "batchd.log").read_text().splitlines())
    shutil.rmtree(state)
    removed = time.time()
    marks.update(spawned=spawned, exit=exited, removed=removed)
    provider = provider_marks(marks, stats_path)
    order = [
        ("startup", "spawned", "first_log"),
        ("ingest", "first_log", "first_call"),
        ("dispatch", "first_call", "finalizing"),
        ("finalize", "finalizing", "completed"),
        ("export", "completed", "exit"),
    ]
    seconds = removed - spawned
    parts = stages(n, sampler, marks, provider, order, end_cpu=total_cpu)
    parts["remove state"] = {"wall_s": removed - exited, "cpu_us": 0.0, "main_cpu_us": 0.0}
    return {
        "seconds": seconds,
        "engine_s": marks.get("completed", exited) - marks.get("first_call", spawned),
        "cpu_us": 1e6 * total_cpu / n,
        "stages": parts,
        "provider_calls": provider.get("calls"),
        "output": output,
    }


class HTTP:
    """One keep-alive connection to the server (http.client: little client overhead)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.used = 0.0

    def send(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> http.client.HTTPResponse:
        if time.monotonic() - self.used > 1.0:
            self.conn.close()  # the server drops idle connections after a few seconds
        headers = {"Authorization": "Bearer bench"}
        if content_type:
            headers["Content-Type"] = content_type
        self.conn.request(method, path, body=body, headers=headers)
        return self.conn.getresponse()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        payload = None if body is None else orjson.dumps(body)
        response = self.send(method, path, payload, "application/json")
        raw = response.read()
        self.used = time.monotonic()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} from {method} {path}: {raw[:500]!r}")
        return orjson.loads(raw)

    def upload(self, name: str, content: bytes) -> str:
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        body = head + content + f"\r\n--{boundary}--\r\n".encode()
        response = self.send("POST", "/v1/files", body, f"multipart/form-data; boundary={boundary}")
        raw = response.read()
        self.used = time.monotonic()
        if response.status != 200:
            raise RuntimeError(f"upload: HTTP {response.status}: {raw[:500]!r}")
        return str(orjson.loads(raw)["id"])

    def download(self, path: str, to: Path) -> None:
        response = self.send("GET", path)
        if response.status != 200:
            raise RuntimeError(f"download: HTTP {response.status}: {response.read()[:500]!r}")
        with open(to, "wb") as fh:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
        self.used = time.monotonic()

    def close(self) -> None:
        self.conn.close()


def serve_path(
    case: Case, n: int, work: Path, env: dict[str, str], poll: float, timeout: float
) -> dict[str, Any]:
    """Upload, batch, download through a fresh ``batchd serve`` (its start not timed)."""
    stats_path, output = work / "serve-provider.json", work / "serve-output.jsonl"
    config = write_config(
        work / "serve.toml",
        models=[case.route(stats_path)],
        max_requests_per_batch=max(n, 50_000),
    )
    server = BatchdServer(work / "serve-data", config, env=env, args=("--log-format", "json"))
    server.start(timeout=60)
    assert server.proc is not None
    http = HTTP(server.port)
    content = (work / f"{case.name}.jsonl").read_bytes()
    marks: dict[str, float] = {}
    try:
        with Sampler(server.proc.pid) as sampler:
            marks["upload"] = time.time()
            file_id = http.upload(f"{case.name}.jsonl", content)
            marks["admit"] = time.time()
            create = {"input_file_id": file_id, "endpoint": case.endpoint}
            batch = http.json("POST", "/v1/batches", {**create, "completion_window": "24h"})
            started = time.perf_counter()
            while batch["status"] not in TERMINAL:
                if time.perf_counter() - started > timeout:
                    raise RuntimeError(f"batch still {batch['status']} after {timeout:g} s")
                time.sleep(poll)
                batch = http.json("GET", f"/v1/batches/{batch['id']}")
            marks["seen"] = time.time()
            if batch["status"] != "completed":
                raise RuntimeError(f"batch ended {batch['status']}: {batch.get('errors')}")
            counts = batch["request_counts"]
            if counts != {"total": n, "completed": n, "failed": 0}:
                raise RuntimeError(f"request_counts {counts} for {n} requests")
            http.download(f"/v1/files/{batch['output_file_id']}/content", output)
            marks["downloaded"] = time.time()
            sampler.sample()
    except Exception:
        log(f"batchd log tail:\n{server.log()[-3000:]}")
        raise
    finally:
        http.close()
        server.stop()  # the provider writes its counters when it is closed
        shutil.rmtree(server.data_dir, ignore_errors=True)
    marks.update(log_times(server.log().splitlines()))
    # The log's "completed" comes after the journal is deleted; the client may see it first.
    marks["ended"] = min(marks.get("completed", marks["seen"]), marks["seen"])
    provider = provider_marks(marks, stats_path)
    order = [
        ("upload", "upload", "admit"),
        ("admit", "admit", "first_call"),
        ("dispatch", "first_call", "finalizing"),
        ("finalize", "finalizing", "ended"),
        ("poll", "ended", "seen"),
        ("download", "seen", "downloaded"),
    ]
    c0, _ = sampler.at(marks["upload"])
    c1, _ = sampler.at(marks["downloaded"])
    return {
        "seconds": marks["downloaded"] - marks["upload"],
        "engine_s": marks["ended"] - marks.get("first_call", marks["admit"]),
        "cpu_us": 1e6 * (c1 - c0) / n,
        "stages": stages(n, sampler, marks, provider, order),
        "provider_calls": provider.get("calls"),
        "output": output,
    }


# -- py-spy ----------------------------------------------------------------------------------------

_BUCKETS = (  # the first marker found from the leaf up names the stage of a sample
    ("provider", ("InstantProvider.execute (",)),
    ("journal: encode line", ("output_line (", "journal_line (")),
    ("journal: write+fsync", ("_write_and_sync (", "_fill_sync (")),
    ("journal: commit/count", ("_commit (",)),
    ("finalize: copy", ("copy (batchd/engine/results.py", "write_results (")),
    ("input: read/parse", ("(batchd/engine/inputs.py",)),
    ("dispatch/record", ("(batchd/engine/dispatch.py",)),
    ("ingest/validate", ("(batchd/validation.py", "(batchd/core/files.py", "Ingest")),
    ("storage", ("(batchd/storage/",)),
    ("export", ("_copy_out (", "(batchd/atomicfile.py")),
    ("store (SQL)", ("(sqlalchemy/", "(aiosqlite/", "(batchd/store/")),
    ("import/startup", ("_find_and_load (", "<module> (")),
)


def profile(case: Case, n: int, work: Path, env: dict[str, str], rate: int) -> dict[str, Any]:
    """``batchd run`` under py-spy (GIL holder only): sampled CPU by leaf function and by
    stage."""
    input_path, output = work / f"{case.name}.jsonl", work / "profile-output.jsonl"
    raw = work / "py-spy.txt"
    config = write_config(work / "profile.toml", models=[case.route(work / "profile.json")])
    cmd = [
        str(PY_SPY),
        "record",
        "--gil",
        "--format",
        "raw",
        "--rate",
        str(rate),
        "--output",
        str(raw),
    ]
    cmd += ["--", sys.executable, "-m", "batchd", "run", str(input_path), "-o", str(output)]
    cmd += ["--config", str(config), "--state-dir", str(work / "profile-state")]
    cmd += ["--progress-interval", "3600"]
    done = subprocess.run(cmd, env=env, capture_output=True, check=False)
    if done.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy: {done.returncode}: {done.stderr.decode()[-2000:]}")
    leaves: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for text in raw.read_text().splitlines():
        stack, _, count_text = text.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        names = [re.sub(r":\d+\)$", ")", frame) for frame in frames]
        leaves[names[-1]] += count
        for name in set(names):
            if name.startswith("<module>") or "(batchd/cli/" in name:
                continue  # imports and the command's frames, above everything
            if "(batchd/" in name or "(batchd_bench_instant.py)" in name:
                inclusive[name] += count
        bucket = "other"
        for frame in reversed(frames):
            hit = next((name for name, marks in _BUCKETS if any(m in frame for m in marks)), None)
            if hit is not None:
                bucket = hit
                break
        buckets[bucket] += count
    output.unlink(missing_ok=True)
    shutil.rmtree(work / "profile-state", ignore_errors=True)
    share = {name: count / total for name, count in buckets.most_common()} if total else {}
    top = [(name, count / total) for name, count in leaves.most_common(15)] if total else []
    within = [(name, count / total) for name, count in inclusive.most_common(25)] if total else []
    return {
        "samples": total,
        "rate": rate,
        "by_stage": share,
        "top_self": top,
        "top_inclusive": within,
    }


# -- main ------------------------------------------------------------------------------------------


def measure_case(
    case: Case, args: argparse.Namespace, work: Path, env: dict[str, str]
) -> dict[str, Any]:
    n = args.requests
    (work / f"{case.name}.jsonl").write_bytes(batch_input(case, n))
    floor_path = work / "floor.jsonl"
    result: dict[str, Any] = {"case": case.name, "requests": n}
    result["floor"] = base = floor(case, n, floor_path, args.floor_repeat)
    log(
        f"{case.name} floor: {base['rps']:,.0f} results/s, {base['mb_s']:,.0f} MB/s "
        f"({base['output_mb']:.1f} MB; fsync {base['fsync_s']:.2f} s)"
    )
    if case.endpoint == EMBEDDINGS and not case.base64:  # the numpy rows straight to orjson
        numpy_path = work / "floor-numpy.jsonl"
        result["floor_numpy"] = fast = floor(case, n, numpy_path, args.floor_repeat, numpy=True)
        fast["file"] = compare(floor_path, numpy_path)
        numpy_path.unlink()
        log(f"{case.name} floor (numpy rows): {fast['rps']:,.0f} results/s; {fast['file']}")
    measure: dict[str, Callable[[], dict[str, Any]]] = {
        "run": lambda: run_path(case, n, work, env),
        "serve": lambda: serve_path(case, n, work, env, args.poll, args.timeout),
    }
    for name in args.paths:
        got = measure[name]()
        output: Path = got.pop("output")
        got["file"] = compare(floor_path, output)
        output.unlink()
        got["rps"] = n / got["seconds"]
        got["mb_s"] = got["file"]["size"] / 1e6 / got["seconds"]
        got["ratio"] = got["rps"] / base["rps"]
        got["engine_ratio"] = n / got["engine_s"] / base["rps"]
        result[name] = got
        log(
            f"{case.name} {name}: {got['rps']:,.0f} results/s, {got['mb_s']:,.0f} MB/s, "
            f"{got['ratio']:.3f} x floor; file {got['file']}"
        )
    if args.profile:
        result["profile"] = profile(case, n, work, env, args.profile_rate)
    floor_path.unlink()
    (work / f"{case.name}.jsonl").unlink()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=100_000, help="requests per batch")
    parser.add_argument(
        "--cases",
        type=lambda text: text.split(","),
        default=list(CASES),
        help=f"comma-separated, of {', '.join(CASES)}",
    )
    parser.add_argument(
        "--paths", type=lambda text: text.split(","), default=list(PATHS), help="run,serve"
    )
    parser.add_argument("--floor-repeat", type=int, default=2, help="floor runs, best kept")
    parser.add_argument("--poll", type=float, default=0.05, help="serve: poll interval, s")
    parser.add_argument("--timeout", type=float, default=1800.0, help="serve: give up, s")
    parser.add_argument("--profile", action="store_true", help="also run under py-spy")
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples/s")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="also print one JSON result line")
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES] + [p for p in args.paths if p not in PATHS]
    if unknown:
        parser.error(f"unknown cases or paths: {', '.join(unknown)}")
    if args.profile and not PY_SPY.exists():
        parser.error(f"--profile needs py-spy beside the interpreter ({PY_SPY})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="result-path-", dir=WORK_DIR))
    plugins = plugin_dir(work / "plugins")
    # the plugin before this process's own path (a checkout's src/ to measure, if set)
    paths = [str(plugins), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = clean_env({"PYTHONPATH": os.pathsep.join(paths)})
    check = subprocess.run(
        [sys.executable, "-c", "from importlib.metadata import entry_points as e; "
         "print(*[p.value for p in e(group='batchd.providers') if p.name == 'instant'])"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    log(f"instant provider entry point seen by the subprocesses: {check.stdout.strip()!r}")
    log(f"{args.requests:,} requests; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
    results = []
    try:
        for name in args.cases:
            results.append(measure_case(CASES[name], args, work, env))
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(results, args.paths)
    if args.json:
        print(json.dumps({"requests": args.requests, "cases": results}, default=str))
    return 0


STAGES = {
    "run": ("startup", "ingest", "provider", "engine+journal", "finalize", "export"),
    "serve": ("upload", "admit", "provider", "engine+journal", "finalize", "poll", "download"),
}


def report(results: list[dict[str, Any]], paths: list[str]) -> None:
    print(f"{results[0]['requests']:,} requests a batch, {os.cpu_count()} CPUs")
    print(
        f"{'case':<12} {'path':<6} {'results/s':>10} {'MB/s':>7} {'wall s':>7} {'x floor':>8} "
        f"{'CPU µs/result':>13}  output file"
    )
    print(
        "(x floor: results/s of the whole path over the floor's; engine: of the provider's first "
        "call to the batch's completion, start, ingest and export left out)"
    )
    for r in results:
        f = r["floor"]
        print(
            f"{r['case']:<12} {'floor':<6} {f['rps']:>10,.0f} {f['mb_s']:>7,.0f} "
            f"{f['seconds']:>7.2f} {1:>8.3f} {f['cpu_us']:>13.1f}  {f['output_mb']:.1f} MB "
            f"(an fsync after it: {f['fsync_s']:.2f} s)"
        )
        fast = r.get("floor_numpy")
        if fast:
            file = fast["file"]
            print(
                f"{'':<12} {'numpy':<6} {fast['rps']:>10,.0f} {fast['mb_s']:>7,.0f} "
                f"{fast['seconds']:>7.2f} {fast['rps'] / f['rps']:>8.3f} {fast['cpu_us']:>13.1f}  "
                f"orjson on the numpy rows: {file['lines'] - file['same']:,} of "
                f"{file['lines']:,} lines differ ({file['size'] - file['floor_size']:+,} bytes: "
                "floats below 1e-5 without an exponent)"
            )
        for path in paths:
            p = r[path]
            file = p["file"]
            same = "byte-identical but ids" if file["identical_but_ids"] else "DIFFERENT"
            if not file["identical_but_ids"]:
                same += f" (first at line {file['first_different_line']})"
            target = TARGETS[path]
            print(
                f"{'':<12} {path:<6} {p['rps']:>10,.0f} {p['mb_s']:>7,.0f} {p['seconds']:>7.2f} "
                f"{p['ratio']:>8.3f} {p['cpu_us']:>13.1f}  engine {p['engine_ratio']:.3f} x floor; "
                f"{file['lines']:,} lines, "
                f"{file['size']:,} bytes (floor {file['floor_size']:,}): {same}; target "
                f"{target}: {'met' if p['ratio'] >= target else 'not met'}"
            )
    for path in paths:
        names = STAGES[path]
        print(
            f"\n{path}: stages, wall s / CPU µs per result of the batchd process (all threads; "
            "the provider's CPU is its own count; engine+journal is the rest of the dispatch)"
        )
        print(f"{'case':<12} " + " ".join(f"{name:>15}" for name in names))
        for r in results:
            stages_of = r[path]["stages"]
            cells = []
            for name in names:
                st = stages_of.get(name)
                if st is None:
                    cells.append(f"{'-':>15}")
                    continue
                wall = "" if st["wall_s"] is None else f"{st['wall_s']:.2f}/"
                cells.append(f"{wall + format(st['cpu_us'], '.1f'):>15}")
            print(f"{r['case']:<12} " + " ".join(cells))
    profiled = [r for r in results if r.get("profile")]
    for r in profiled:
        prof = r["profile"]
        stages_text = ", ".join(f"{k} {v:.0%}" for k, v in prof["by_stage"].items())
        print(f"\npy-spy, {r['case']} run ({prof['samples']} samples): {stages_text}")
        print("  self time, by function:")
        for name, share in prof["top_self"]:
            print(f"  {share:6.1%}  {name}")
        print("  inclusive, batchd's functions (and the provider's):")
        for name, share in prof["top_inclusive"]:
            print(f"  {share:6.1%}  {name}")


if __name__ == "__main__":
    sys.exit(main())
