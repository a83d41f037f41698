"""Ingest benchmark: upload and validate a ~200 MB, ~100k-line chat-completions batch file.

Run from the repository root with the project's virtualenv active::

    python bench/ingest.py                # 100k lines, 200 MB, openai SDK upload
    python bench/ingest.py --json         # also print one machine-readable result line
    python bench/ingest.py --strict       # exit 1 when a target is missed

What it does:

1. Generates (once; cached under ``bench/.work/``) a realistic ``/v1/chat/completions`` batch file:
   varied system/user/assistant messages with some non-ASCII text and JSON escapes, about one
   request in six with a ``response_format`` json_schema body, unique ``custom_id``\\ s, line
   lengths spread around the mean.
2. Starts the real server (``python -m batchd serve``) as a subprocess on a fresh data directory,
   warms it up with a tiny upload + batch, resets the server's peak-RSS counter (``clear_refs``)
   and reads its ``VmRSS``/``VmHWM`` from ``/proc/<pid>/status``.
3. Times the baseline in this process, right before the upload: read the file line by line and
   ``orjson.loads`` each line, best of 3 (the file is in the page cache).
4. Uploads the file (``POST /v1/files``, purpose ``batch``): by default with the openai SDK's
   ``files.create`` (httpx streams the file in 64 KiB chunks), or with ``--upload raw``, a
   streaming multipart body written with ``http.client`` in 1 MiB chunks.
5. ``batches.create``, then polls ``batches.retrieve`` every 20 ms until the batch leaves
   ``validating``; validation time = from before ``create`` to the ``in_progress`` answer.
   batchd validates a ``purpose=batch`` file while it streams in, so most of the validation
   work is inside the upload time; the target is therefore on upload + validation.
5b. Uploads the same bytes with ``purpose=user_data`` (stored and hashed, not validated): the
   difference to upload + validation is what validating costs, also shown against the baseline.
5c. Downloads the batch file's content (``files.content``, streamed) and checks its size.
6. Reads the server's ``VmHWM`` again; RSS growth = peak after - RSS before (uploads, validation
   and downloads of all runs included).

``--repeat N`` (default 3) does steps 3-5b N times on the same server and reports the medians
(the machine's speed drifts: compare ratios, which are taken per run, rather than absolute
times).

Times are wall-clock (``time.perf_counter``). MB = 10^6 bytes throughout, RSS included.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson
from openai import OpenAI

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / ".work"
MODEL = "gpt-4o-mini"
ENDPOINT: Final = "/v1/chat/completions"
MB = 1_000_000
GENERATOR_VERSION = 1

TARGET_RATIO = 2.0
TARGET_RSS_MB = 100.0


# -- the input file ---------------------------------------------------------------------------

_WORD_TEXT = (
    "the of and to in is that for it as with was on be by this are or from at an which have "
    "not but they all were we when your can said there use each she do how their if will up "
    "other about out many then them these so some her would make like him into time has look "
    "two more write go see number no way could people my than first water been call who oil "
    "its now find long down day did get come made may part over new sound take only little "
    "work know place year live me back give most very after thing our just name good sentence "
    "man think say great where help through much before line right too mean old any same tell "
    "boy follow came want show also around form three small set put end does another well "
    "large must big even such because turn here why ask went men read need land different "
    "home us move try kind hand picture again change off play spell air away animal house "
    "point page letter mother answer found study still learn should america world customer "
    "invoice refund shipping order account password billing subscription latency throughput "
    "database query index schema migration deployment kubernetes container gradient tensor "
    "embedding summarize translate classify extract sentiment entity paragraph document "
    "contract clause liability warranty patient symptom diagnosis dosage recipe ingredient"
)
_UNICODE_TEXT = (
    "café naïve résumé Zürich São Paulo Kraków déjà vu 東京 日本語 данные пример "
    "مرحبا 😀 🚀 ✓ €100 ±5% ½ °C"
)
_WORDS = _WORD_TEXT.split()
_UNICODE_WORDS = _UNICODE_TEXT.split()
_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a customer-support agent for an online store. Answer politely and concisely, and "
    "never promise refunds that the policy below does not allow.",
    "You are an expert data extractor. Return only the requested fields as JSON.",
    "You classify support tickets into one of: billing, shipping, technical, account, other.",
    'You are a translator. Translate the user\'s text into French; keep "quoted" terms as is.',
    "You summarise documents for busy executives: at most five bullet points, plain language.",
    "You are a careful medical-information assistant. You do not give diagnoses.\nCite sources.",
    "You review code diffs and point out bugs, security problems and missing tests.",
)
_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "extraction",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "category": {
                    "type": "string",
                    "enum": ["billing", "shipping", "technical", "account", "other"],
                },
                "sentiment": {"type": "number", "minimum": -1, "maximum": 1},
                "entities": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"type": "string"},
                        },
                        "required": ["name", "kind"],
                        "additionalProperties": False,
                    },
                },
                "summary": {"type": "string"},
            },
            "required": ["category", "sentiment", "entities", "summary"],
            "additionalProperties": False,
        },
    },
}


def _corpus(rng: random.Random, words: int = 600_000) -> str:
    """A long text of random words with punctuation, newlines, quotes, tabs and some non-ASCII."""
    out: list[str] = []
    for _ in range(words):
        roll = rng.random()
        if roll < 0.015:
            out.append(rng.choice(_UNICODE_WORDS))
        elif roll < 0.02:
            out.append(f'"{rng.choice(_WORDS)}"')
        else:
            out.append(rng.choice(_WORDS))
        roll = rng.random()
        if roll < 0.06:
            out.append(". ")
        elif roll < 0.07:
            out.append(".\n")
        elif roll < 0.075:
            out.append(",\t")
        elif roll < 0.09:
            out.append(", ")
        else:
            out.append(" ")
    return "".join(out)


def _text(rng: random.Random, corpus: str, length: int) -> str:
    start = rng.randrange(0, len(corpus) - length - 1)
    return corpus[start : start + length].strip()


def _request(rng: random.Random, corpus: str, index: int, target: int) -> bytes:
    custom_id = (
        f"request-{index:07d}"
        if index % 3
        else f"{uuid.UUID(int=rng.getrandbits(128), version=4)}-{index}"
    )
    body: dict[str, Any] = {"model": MODEL, "messages": []}
    messages: list[dict[str, str]] = body["messages"]
    messages.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
    turns = rng.choice((1, 1, 1, 2, 3))
    if rng.random() < 0.15:
        body["response_format"] = _SCHEMA
    if rng.random() < 0.5:
        body["max_tokens"] = rng.choice((64, 256, 512, 1024))
    else:
        body["max_completion_tokens"] = rng.choice((100, 500, 2000))
    if rng.random() < 0.6:
        body["temperature"] = round(rng.random() * 1.5, 2)
    if rng.random() < 0.1:
        body["seed"] = rng.randrange(1 << 31)
        body["top_p"] = 0.9
    if rng.random() < 0.05:
        body["metadata"] = {
            "tenant": f"t-{rng.randrange(1000)}",
            "trace": f"{rng.getrandbits(128):032x}",
        }
    request = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    for turn in range(turns):
        if turn:
            messages.append({"role": "assistant", "content": ""})
        messages.append({"role": "user", "content": ""})
    overhead = len(orjson.dumps(request)) + 1
    room = max(target - overhead, 40)
    # Split the room over the turns: the last user message gets the largest share.
    fillable = [m for m in messages if m["role"] != "system"]
    shares = [rng.uniform(0.2, 0.6) for _ in fillable[:-1]] + [1.0]
    total_share = sum(shares)
    for message, share in zip(fillable, shares, strict=True):
        # ~2% of the characters take more than one byte (non-ASCII, escapes).
        message["content"] = _text(rng, corpus, max(int(room * share / total_share / 1.02), 8))
    return orjson.dumps(request) + b"\n"


def generate(path: Path, lines: int, size_bytes: int, seed: int) -> None:
    """Write ``lines`` requests totalling about ``size_bytes`` bytes to ``path`` (atomically)."""
    rng = random.Random(seed)
    corpus = _corpus(rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    written = 0
    with open(tmp, "wb") as fh:
        for index in range(lines):
            remaining = lines - index
            mean = (size_bytes - written) / remaining
            # Line lengths from ~0.3x to ~2.4x the mean (right-skewed, mean ~1x).
            factor = min(max(rng.lognormvariate(0.0, 0.45) * 0.9, 0.3), 2.4)
            target = int(mean if remaining == 1 else mean * factor)
            line = _request(rng, corpus, index, max(target, 300))
            fh.write(line)
            written += len(line)
    os.replace(tmp, path)


def input_file(lines: int, size_mb: float, seed: int) -> Path:
    size_bytes = int(size_mb * MB)
    path = WORK_DIR / f"batch-v{GENERATOR_VERSION}-{lines}l-{size_bytes}b-s{seed}.jsonl"
    if not path.exists():
        log(f"generating {path.relative_to(BENCH_DIR.parent)} ...")
        started = time.perf_counter()
        generate(path, lines, size_bytes, seed)
        log(f"  done in {time.perf_counter() - started:.1f} s")
    return path


# -- the baseline -----------------------------------------------------------------------------


def orjson_baseline(path: Path, repeat: int = 3) -> float:
    """Best-of-``repeat`` time to read ``path`` line by line and ``orjson.loads`` each line."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        with open(path, "rb") as fh:
            for line in fh:
                orjson.loads(line)
        best = min(best, time.perf_counter() - started)
    return best


# -- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, *, max_requests: int, max_file_bytes: int) -> None:
    path.write_text(
        f"max_requests_per_batch = {max_requests}\n"
        f"max_batch_file_bytes = {max_file_bytes}\n"
        f"max_upload_bytes = {max_file_bytes}\n"
        "\n[[models]]\n"
        f'name = "{MODEL}"\n'
        'provider = "openai"\n'
        'base_url = "http://127.0.0.1:9/v1"\n'
    )


class Server:
    """``python -m batchd serve`` in a subprocess (the pid is the server's own)."""

    def __init__(self, root: Path, config: Path) -> None:
        self.port = free_port()
        self.log_path = root / "server.log"
        cmd = [sys.executable, "-m", "batchd", "serve", "--port", str(self.port)]
        cmd += ["--data-dir", str(root / "data"), "--config", str(config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"batchd exited with {self.proc.returncode}:\n{self.log()}")
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(f"{self.base_url}/health", timeout=1) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"batchd did not become ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict[str, int]:
        """``VmRSS``/``VmHWM`` etc. of the server process, in bytes."""
        values: dict[str, int] = {}
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024  # kB (KiB) in /proc
        return values

    def reset_peak(self) -> bool:
        """Reset ``VmHWM`` to the current RSS (``clear_refs`` 5); False where not permitted."""
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the client side --------------------------------------------------------------------------


def upload_sdk(client: OpenAI, path: Path, purpose: str = "batch") -> str:
    with open(path, "rb") as fh:
        return client.files.create(file=fh, purpose=purpose).id  # type: ignore[arg-type]


def upload_raw(base_url: str, path: Path, chunk_size: int = 1024 * 1024) -> str:
    """A streaming multipart ``POST /v1/files`` with ``http.client`` (Content-Length known)."""
    boundary = f"batchd-bench-{uuid.uuid4().hex}"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="purpose"\r\n\r\n'
        "batch\r\n"
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    try:
        conn.putrequest("POST", "/v1/files")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(len(head) + path.stat().st_size + len(tail)))
        conn.putheader("Authorization", "Bearer bench")
        conn.endheaders()
        conn.send(head)
        with open(path, "rb") as fh:
            for chunk in _chunks(fh, chunk_size):
                conn.send(chunk)
        conn.send(tail)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"upload failed: HTTP {resp.status}: {body[:500]!r}")
    return str(orjson.loads(body)["id"])


def _chunks(fh: BinaryIO, size: int) -> Iterator[bytes]:
    while chunk := fh.read(size):
        yield chunk


def download(client: OpenAI, file_id: str) -> int:
    """Stream the file's content back (the server streams it too); returns the byte count."""
    total = 0
    with client.files.with_streaming_response.content(file_id) as response:
        for chunk in response.iter_bytes(1024 * 1024):
            total += len(chunk)
    return total


def validate(client: OpenAI, file_id: str, poll: float) -> tuple[float, Any]:
    """Create a batch and poll until it leaves ``validating``; returns (seconds, batch)."""
    started = time.perf_counter()
    batch = client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h")
    while batch.status == "validating":
        time.sleep(poll)
        batch = client.batches.retrieve(batch.id)
    return time.perf_counter() - started, batch


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured upload + validation, with the baseline timed just before it."""

    baseline_s: float
    upload_s: float
    validation_s: float
    plain_upload_s: float  # the same bytes with purpose=user_data: stored, not validated
    download_s: float  # GET /v1/files/{id}/content of the batch file, streamed

    @property
    def total_s(self) -> float:
        return self.upload_s + self.validation_s

    @property
    def ratio_validation(self) -> float:
        """What validating costs on top of storing the file, against the baseline."""
        return max(self.total_s - self.plain_upload_s, 0.0) / self.baseline_s

    @property
    def ratio_total(self) -> float:
        return self.total_s / self.baseline_s


@dataclass
class Result:
    file: str
    lines: int
    bytes: int
    upload_method: str
    runs: int
    upload_s: float
    validation_s: float
    total_s: float
    baseline_s: float
    plain_upload_s: float
    download_s: float
    ratio_validation: float
    ratio_total: float
    upload_mb_s: float
    validation_mb_s: float
    total_mb_s: float
    baseline_mb_s: float
    rss_before_mb: float
    hwm_before_mb: float
    peak_after_mb: float
    rss_growth_mb: float
    peak_reset: bool
    request_total: int
    cpus: int
    loadavg_1m: float
    pass_ratio_total: bool
    pass_rss: bool
    per_run: list[dict[str, float]]


def log(message: str = "") -> None:
    print(message, file=LOG_STREAM, flush=True)


LOG_STREAM = sys.stdout


def warm_up(client: OpenAI, root: Path, poll: float) -> None:
    """A tiny upload + batch, so that one-time costs (imports, thread pool, SQLite) are paid."""
    small = root / "warmup.jsonl"
    lines = [
        orjson.dumps(
            {
                "custom_id": f"warm-{i}",
                "method": "POST",
                "url": ENDPOINT,
                "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            }
        )
        for i in range(2)
    ]
    small.write_bytes(b"\n".join(lines) + b"\n")
    file_id = upload_sdk(client, small)
    _, batch = validate(client, file_id, poll)
    if batch.status != "in_progress":
        raise RuntimeError(f"warm-up batch ended {batch.status}: {batch.errors}")
    client.batches.cancel(batch.id)


def measure(args: argparse.Namespace, path: Path, lines: int, root: Path, server: Server) -> Result:
    size = path.stat().st_size
    runs: list[Run] = []
    with OpenAI(base_url=f"{server.base_url}/v1", api_key="bench", max_retries=0) as client:
        warm_up(client, root, args.poll)
        time.sleep(0.2)
        peak_reset = server.reset_peak()
        before = server.status()
        request_total = 0
        for _ in range(args.repeat):
            # The baseline right before the upload, so that both see the same machine state.
            baseline_s = orjson_baseline(path)
            started = time.perf_counter()
            if args.upload == "sdk":
                file_id = upload_sdk(client, path)
            else:
                file_id = upload_raw(server.base_url, path)
            upload_s = time.perf_counter() - started
            validation_s, batch = validate(client, file_id, args.poll)
            if batch.status != "in_progress":
                raise RuntimeError(f"batch ended {batch.status}: {batch.errors}")
            request_total = batch.request_counts.total if batch.request_counts else 0
            if request_total != lines:
                raise RuntimeError(f"server counted {request_total} requests, file has {lines}")
            started = time.perf_counter()
            upload_sdk(client, path, purpose="user_data")
            plain_upload_s = time.perf_counter() - started
            started = time.perf_counter()
            downloaded = download(client, file_id)
            download_s = time.perf_counter() - started
            if downloaded != size:
                raise RuntimeError(f"downloaded {downloaded} bytes, uploaded {size}")
            runs.append(Run(baseline_s, upload_s, validation_s, plain_upload_s, download_s))
        after = server.status()

    def median(values: list[float]) -> float:
        return statistics.median(values)

    upload_s = median([r.upload_s for r in runs])
    validation_s = median([r.validation_s for r in runs])
    total_s = median([r.total_s for r in runs])
    baseline_s = median([r.baseline_s for r in runs])
    ratio_validation = median([r.ratio_validation for r in runs])
    ratio_total = median([r.ratio_total for r in runs])
    growth = (after["VmHWM"] - before["VmRSS"]) / MB
    return Result(
        file=str(path),
        lines=lines,
        bytes=size,
        upload_method=args.upload,
        runs=len(runs),
        upload_s=upload_s,
        validation_s=validation_s,
        total_s=total_s,
        baseline_s=baseline_s,
        plain_upload_s=median([r.plain_upload_s for r in runs]),
        download_s=median([r.download_s for r in runs]),
        ratio_validation=ratio_validation,
        ratio_total=ratio_total,
        upload_mb_s=size / MB / upload_s,
        validation_mb_s=size / MB / validation_s,
        total_mb_s=size / MB / total_s,
        baseline_mb_s=size / MB / baseline_s,
        rss_before_mb=before["VmRSS"] / MB,
        hwm_before_mb=before["VmHWM"] / MB,
        peak_after_mb=after["VmHWM"] / MB,
        rss_growth_mb=growth,
        peak_reset=peak_reset,
        request_total=request_total,
        cpus=os.cpu_count() or 0,
        loadavg_1m=os.getloadavg()[0],
        pass_ratio_total=ratio_total <= TARGET_RATIO,
        pass_rss=growth <= TARGET_RSS_MB,
        per_run=[
            {
                "baseline_s": r.baseline_s,
                "upload_s": r.upload_s,
                "validation_s": r.validation_s,
                "plain_upload_s": r.plain_upload_s,
                "download_s": r.download_s,
                "total_s": r.total_s,
                "ratio_validation": r.ratio_validation,
                "ratio_total": r.ratio_total,
            }
            for r in runs
        ],
    )


def run(args: argparse.Namespace) -> Result:
    path = input_file(args.lines, args.size_mb, args.seed)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        lines = sum(1 for _ in fh)  # also pulls the file into the page cache
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=WORK_DIR))
    config = root / "batchd.toml"
    write_config(
        config,
        max_requests=max(lines, 100_000),
        max_file_bytes=max(200 * 1024 * 1024, size + 1024 * 1024),
    )
    server = Server(root, config)
    try:
        server.wait_ready()
        return measure(args, path, lines, root, server)
    except BaseException:
        log(server.log()[-4000:])
        raise
    finally:
        server.stop()
        if args.keep:
            log(f"kept the server's data directory and log under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def report(r: Result) -> None:
    method = "openai SDK files.create" if r.upload_method == "sdk" else "raw streaming multipart"
    verdict = {True: "PASS", False: "FAIL"}
    log(f"file        {Path(r.file).name}")
    log(
        f"            {r.bytes / MB:.1f} MB ({r.bytes / 2**20:.1f} MiB), {r.lines} lines, "
        f"avg {r.bytes / r.lines:.0f} B/line"
    )
    log(f"machine     {r.cpus} CPUs, load average {r.loadavg_1m:.2f} (1 min, at the end)")
    if r.runs > 1:
        log(f"runs        {r.runs} (figures below: the median of each over the runs)")
        for i, run in enumerate(r.per_run, 1):
            log(
                f"  run {i}: baseline {run['baseline_s']:.3f} s, upload {run['upload_s']:.3f} s, "
                f"create->in_progress {run['validation_s']:.3f} s, plain upload "
                f"{run['plain_upload_s']:.3f} s, ratio {run['ratio_total']:.2f}"
            )
    log(
        f"upload      {r.upload_s:7.3f} s  {r.upload_mb_s:7.1f} MB/s  ({method}; batchd "
        "validates the file as it streams in)"
    )
    log(
        f"validation  {r.validation_s:7.3f} s  {r.validation_mb_s:7.1f} MB/s  "
        f"(batches.create -> in_progress, {r.request_total} requests)"
    )
    log(f"total       {r.total_s:7.3f} s  {r.total_mb_s:7.1f} MB/s  (upload + validation)")
    log(
        f"plain       {r.plain_upload_s:7.3f} s  (the same upload with purpose=user_data: "
        "stored and hashed, not validated)"
    )
    log(f"download    {r.download_s:7.3f} s  (GET /v1/files/{{id}}/content, streamed)")
    log(
        f"baseline    {r.baseline_s:7.3f} s  {r.baseline_mb_s:7.1f} MB/s  "
        "(read lines + orjson.loads each, best of 3)"
    )
    log(f"ratio       (upload + validation) / baseline   {r.ratio_total:6.2f}")
    log(
        f"ratio       (total - plain upload) / baseline  {r.ratio_validation:6.2f}"
        "  (validation's cost)"
    )
    log(
        f"server RSS  before {r.rss_before_mb:.1f} MB, peak after {r.peak_after_mb:.1f} MB, "
        f"growth {r.rss_growth_mb:.1f} MB"
        + ("" if r.peak_reset else f"  (peak not reset; peak before {r.hwm_before_mb:.1f} MB)")
    )
    log("targets")
    log(f"  (upload + validation) / baseline <= {TARGET_RATIO} {verdict[r.pass_ratio_total]}")
    log(f"  server RSS growth <= {TARGET_RSS_MB:.0f} MB             {verdict[r.pass_rss]}")


def main(argv: list[str] | None = None) -> int:
    global LOG_STREAM
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=100_000, help="requests (default 100000)")
    parser.add_argument(
        "--size-mb", type=float, default=200.0, help="file size in MB = 10^6 bytes (default 200)"
    )
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument(
        "--upload",
        choices=("sdk", "raw"),
        default="sdk",
        help="sdk: openai files.create (default); raw: streaming multipart via http.client",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="measured runs on the same server; figures are medians (default 3)",
    )
    parser.add_argument(
        "--poll", type=float, default=0.02, help="batch status poll interval, s (default 0.02)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the server's data directory and log"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON result line on stdout (report: stderr)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.json:
        LOG_STREAM = sys.stderr
    result = run(args)
    report(result)
    if args.json:
        print(json.dumps(asdict(result)), flush=True)
    passed = result.pass_ratio_total and result.pass_rss
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
