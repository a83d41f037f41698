"""Batch execution throughput: batchd against plain asyncio clients and the cookbook technique.

Sends the same N chat-completion requests (``--requests``, default 10,000) at concurrency 256 to
the fake upstream of the test suite (``tests/upstream``, its own process on uvloop, fixed
latency, 50 ms by default) four ways, measured in the same run:

plain
    One aiohttp ``ClientSession``, a semaphore of ``--concurrency``, POST each body and read the
    response (``send_aiohttp`` of ``bench/http_clients.py``): the ceiling.
plain-pyreqwest
    The same with one pyreqwest client (``send_pyreqwest``), the HTTP client batchd's ``openai``
    provider uses: the ceiling for batchd's own transport.
cookbook
    The technique of the OpenAI cookbook's ``api_request_parallel_processor.py``, written here:
    requests read one by one from a JSONL file, a retry queue, a status tracker, request and
    token budgets replenished over time (set so high they never throttle), one task per request,
    a main loop that sleeps 1 ms per turn, results appended to a JSONL file. The cookbook has no
    concurrency cap; here the main loop also waits while ``--concurrency`` calls are in flight.
batchd
    The requests as a batch input file, uploaded to a real ``batchd serve`` subprocess routed to
    the same upstream (``max_concurrency`` = ``--concurrency``); the batch is created and
    ``GET /v1/batches/{id}`` polled every 50 ms until ``completed``; the output file is
    downloaded and checked (one line per request, all status 200).

Prints requests/s, CPU ms per request (the bench process for the baselines, the batchd server
process for batchd), and batchd's throughput relative to each baseline, per round (runs
alternate, ``--rounds`` times, medians reported), and whether batchd reaches 0.9x plain.

    python bench/dispatch.py                              # 10,000 requests, concurrency 256, 50 ms
    python bench/dispatch.py --requests 2000 --only plain,plain-pyreqwest
    python bench/dispatch.py --rounds 3 --json            # one JSON result line on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.http_clients import (
    Sender,
    available,
    bodies,
    cpu_seconds,
    send_aiohttp,
    send_pyreqwest,
)

from tests.serverproc import BatchdServer, write_config
from tests.upstream.process import UpstreamProcess

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini"
ENDPOINT = "/v1/chat/completions"
RUNS = ("plain", "plain-pyreqwest", "cookbook", "batchd")
BASELINES = ("plain", "plain-pyreqwest", "cookbook")  # batchd's throughput is compared with each
TARGET = 0.9  # batchd >= 0.9 x plain
WARM_UP_REQUESTS = 200
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
WORK_DIR = ROOT / "bench" / ".work"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_loop(main: Coroutine[Any, Any, T], loop: str) -> T:
    """Run ``main`` on a fresh event loop: uvloop (as batchd serve has) or asyncio's own."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def process_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# -- (b) the cookbook's api_request_parallel_processor technique ------------------------------


@dataclass
class StatusTracker:
    """Progress of one run; a single instance shared by the main loop and every request task."""

    num_tasks_started: int = 0
    num_tasks_in_progress: int = 0  # the main loop ends when this is back at 0
    num_tasks_succeeded: int = 0
    num_tasks_failed: int = 0
    num_rate_limit_errors: int = 0
    num_api_errors: int = 0
    num_other_errors: int = 0
    time_of_last_rate_limit_error: float = 0.0
    num_calls_in_flight: int = 0  # not in the cookbook: for the concurrency cap


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt + completion tokens the request may consume, for the token budget.

    The cookbook counts prompt tokens with tiktoken; it is not installed here (and fetches its
    encodings at run time), so this estimates 4 characters a token over the same fields.
    """
    completion = int(body.get("max_tokens") or 15) * int(body.get("n") or 1)
    prompt = 2  # the reply's priming
    for message in body.get("messages", ()):
        prompt += 4  # per-message framing
        for key, value in message.items():
            prompt += len(str(value)) // 4 + (key == "name")
    return prompt + completion


def append_jsonl(record: Any, path: Path) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


@dataclass
class CookbookRequest:
    task_id: int
    body: dict[str, Any]
    tokens: int
    attempts_left: int
    metadata: Any = None
    errors: list[str] = field(default_factory=list)

    async def call(
        self,
        session: aiohttp.ClientSession,
        url: str,
        headers: dict[str, str],
        retry_queue: asyncio.Queue[CookbookRequest],
        out_path: Path,
        tracker: StatusTracker,
    ) -> None:
        error: Any = None
        tracker.num_calls_in_flight += 1
        try:
            async with session.post(url, headers=headers, json=self.body) as resp:
                response = await resp.json()
            if "error" in response:
                error = response
                tracker.num_api_errors += 1
                if "rate limit" in str(response["error"].get("message", "")).lower():
                    tracker.time_of_last_rate_limit_error = time.time()
                    tracker.num_rate_limit_errors += 1
                    tracker.num_api_errors -= 1
        except Exception as exc:  # the cookbook retries whatever went wrong
            error = exc
            tracker.num_other_errors += 1
        finally:
            tracker.num_calls_in_flight -= 1
        if error is not None:
            self.errors.append(str(error))
            if self.attempts_left:
                retry_queue.put_nowait(self)
                return
            append_jsonl([self.body, self.errors, self.metadata], out_path)
            tracker.num_tasks_failed += 1
        else:
            append_jsonl([self.body, response, self.metadata], out_path)
            tracker.num_tasks_succeeded += 1
        tracker.num_tasks_in_progress -= 1


async def cookbook_process_file(
    requests_path: Path,
    out_path: Path,
    url: str,
    *,
    max_requests_per_minute: float,
    max_tokens_per_minute: float,
    max_concurrency: int,
    max_attempts: int = 5,
    sleep_seconds: float = 0.001,
    rate_limit_pause_seconds: float = 15.0,
) -> StatusTracker:
    """Send every request of ``requests_path`` (one JSON body a line), throttled by budgets."""
    headers = {"Authorization": "Bearer bench"}
    retry_queue: asyncio.Queue[CookbookRequest] = asyncio.Queue()
    tracker = StatusTracker()
    tasks: set[asyncio.Task[None]] = set()
    next_request: CookbookRequest | None = None
    request_capacity = max_requests_per_minute
    token_capacity = max_tokens_per_minute
    last_update = time.time()
    file_not_finished = True
    task_ids = iter(range(1 << 62))
    connector = aiohttp.TCPConnector(limit=max_concurrency, limit_per_host=max_concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        with open(requests_path) as lines:  # noqa: ASYNC230 - the cookbook reads it so
            while True:
                if next_request is None:
                    if not retry_queue.empty():
                        next_request = retry_queue.get_nowait()
                    elif file_not_finished:
                        line = next(lines, None)
                        if line is None:
                            file_not_finished = False
                        else:
                            body = json.loads(line)
                            next_request = CookbookRequest(
                                task_id=next(task_ids),
                                body=body,
                                tokens=estimate_tokens(body),
                                attempts_left=max_attempts,
                                metadata=body.pop("metadata", None),
                            )
                            tracker.num_tasks_started += 1
                            tracker.num_tasks_in_progress += 1

                now = time.time()
                elapsed = now - last_update
                request_capacity = min(
                    request_capacity + max_requests_per_minute * elapsed / 60.0,
                    max_requests_per_minute,
                )
                token_capacity = min(
                    token_capacity + max_tokens_per_minute * elapsed / 60.0,
                    max_tokens_per_minute,
                )
                last_update = now

                if (
                    next_request is not None
                    and request_capacity >= 1
                    and token_capacity >= next_request.tokens
                    and tracker.num_calls_in_flight < max_concurrency
                ):
                    request_capacity -= 1
                    token_capacity -= next_request.tokens
                    next_request.attempts_left -= 1
                    call = next_request.call(session, url, headers, retry_queue, out_path, tracker)
                    task = asyncio.create_task(call)
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    next_request = None

                if tracker.num_tasks_in_progress == 0:
                    break

                await asyncio.sleep(sleep_seconds)

                since_limit = time.time() - tracker.time_of_last_rate_limit_error
                if since_limit < rate_limit_pause_seconds:
                    await asyncio.sleep(rate_limit_pause_seconds - since_limit)
    return tracker


# -- the runs ---------------------------------------------------------------------------------


class InFlightSampler:
    """Samples the upstream's requests in flight every ``interval`` s, in a thread: how full a
    run keeps the pipe (the ideal is the concurrency during the whole run)."""

    def __init__(self, upstream: UpstreamProcess, interval: float = 0.05) -> None:
        self.upstream = upstream
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(int(self.upstream.stats(digests=False)["in_flight"]))

    def __enter__(self) -> InFlightSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else float("nan")


@dataclass
class Measurement:
    """One run. ``cpu_s``: the CPU that counts for the figure (bench process for the
    baselines, batchd server for batchd); ``client_cpu_s``: the bench process in every run."""

    run: str
    requests: int
    seconds: float
    cpu_s: float
    client_cpu_s: float
    upstream_cpu_s: float = 0.0
    upstream_max_in_flight: int = 0
    upstream_mean_in_flight: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def cpu_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.requests


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, upstream: UpstreamProcess) -> None:
        self.args = args
        self.work = work
        self.upstream = upstream
        self.url = f"{upstream.api_url}/chat/completions"
        self.payloads = bodies(args.requests)
        self.cookbook_input = work / "cookbook-requests.jsonl"
        self.batch_input = work / "batch-input.jsonl"
        write_lines(self.cookbook_input, cookbook_lines(self.payloads))
        write_lines(self.batch_input, batch_lines(self.payloads))
        self.server: BatchdServer | None = None
        self.client: BatchdClient | None = None
        self.file_id = ""

    # Each run: reset the upstream's counters, time the bench process (and the upstream).
    def measured(self, run: str, n: int, work: Callable[[], dict[str, float]]) -> Measurement:
        self.upstream.reset(config=False)
        assert self.upstream.proc is not None
        up_cpu = process_cpu(self.upstream.proc.pid)
        cpu = cpu_seconds()
        started = time.perf_counter()
        with InFlightSampler(self.upstream) as sampler:
            extra = work()
        wall = extra.pop("seconds", time.perf_counter() - started)
        client_cpu = cpu_seconds() - cpu
        stats = self.upstream.stats(digests=False)
        if stats["total"] < n:
            raise RuntimeError(f"{run}: the upstream saw {stats['total']} of {n} requests")
        return Measurement(
            run=run,
            requests=n,
            seconds=wall,
            cpu_s=extra.pop("server_cpu_s", client_cpu),
            client_cpu_s=client_cpu,
            upstream_cpu_s=process_cpu(self.upstream.proc.pid) - up_cpu,
            upstream_max_in_flight=int(stats["max_in_flight"]),
            upstream_mean_in_flight=sampler.mean(),
            extra=extra,
        )

    def plain(self, n: int, run: str = "plain", send: Sender = send_aiohttp) -> Measurement:
        def work() -> dict[str, float]:
            ok = run_loop(send(self.url, self.payloads[:n], self.args.concurrency), self.loop)
            if ok != n:
                raise RuntimeError(f"{run}: {ok} of {n} requests answered 200")
            return {}

        return self.measured(run, n, work)

    def plain_pyreqwest(self, n: int) -> Measurement:
        return self.plain(n, "plain-pyreqwest", send_pyreqwest)

    def cookbook(self, n: int) -> Measurement:
        requests_path = self.cookbook_input
        if n < self.args.requests:
            requests_path = self.work / "cookbook-warm-up.jsonl"
            write_lines(requests_path, cookbook_lines(self.payloads[:n]))
        out_path = self.work / "cookbook-results.jsonl"
        out_path.unlink(missing_ok=True)

        def work() -> dict[str, float]:
            tracker = run_loop(
                cookbook_process_file(
                    requests_path,
                    out_path,
                    self.url,
                    max_requests_per_minute=1e12,
                    max_tokens_per_minute=1e15,
                    max_concurrency=self.args.concurrency,
                    sleep_seconds=self.args.cookbook_sleep_ms / 1000,
                ),
                self.loop,
            )
            if tracker.num_tasks_succeeded != n or tracker.num_tasks_failed:
                raise RuntimeError(f"cookbook: {tracker}")
            return {"retries": tracker.num_api_errors + tracker.num_other_errors}

        result = self.measured("cookbook", n, work)
        with open(out_path, "rb") as fh:
            lines = sum(1 for _ in fh)
        if lines != n:
            raise RuntimeError(f"cookbook: {lines} result lines for {n} requests")
        return result

    @property
    def loop(self) -> str:
        return str(self.args.loop)

    # -- batchd --------------------------------------------------------------------------------

    def start_batchd(self) -> None:
        data = self.work / "batchd-data"
        data.mkdir()
        route = {
            "name": MODEL,
            "provider": "openai",
            "base_url": self.upstream.api_url,
            "max_concurrency": self.args.concurrency,
        }
        config = write_config(
            self.work / "batchd.toml",
            models=[route],
            max_requests_per_batch=max(self.args.requests, 50_000),
        )
        self.server = BatchdServer(data, config).start()
        log(
            f"batchd serve pid {self.server.proc.pid if self.server.proc else '?'} on "
            f"{self.server.base_url}, log {self.server.log_path}"
        )
        self.client = BatchdClient(self.server.base_url, self.args.poll, self.args.timeout)
        started = time.perf_counter()
        self.file_id = run_loop(self.client.upload(self.batch_input), "asyncio")
        log(
            f"uploaded {self.batch_input.name} as {self.file_id} "
            f"in {time.perf_counter() - started:.2f} s"
        )

    def stop_batchd(self) -> None:
        if self.server is not None:
            self.server.stop()

    def batchd(self, n: int) -> Measurement:
        assert self.server is not None
        assert self.server.proc is not None
        assert self.client is not None
        file_id = self.file_id
        if n < self.args.requests:
            warm_up = self.work / "batch-warm-up.jsonl"
            write_lines(warm_up, batch_lines(self.payloads[:n]))
            file_id = run_loop(self.client.upload(warm_up), "asyncio")
        pid = self.server.proc.pid
        output = self.work / "batch-output.jsonl"

        def work() -> dict[str, float]:
            assert self.client is not None
            return run_loop(self.client.run_batch(file_id, n, pid, output), "asyncio")

        return self.measured("batchd", n, work)

    def run(self, name: str, n: int) -> Measurement:
        method: Callable[[int], Measurement] = getattr(self, name.replace("-", "_"))
        return method(n)


def write_lines(path: Path, lines: Iterator[bytes]) -> None:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line)
            fh.write(b"\n")


def cookbook_lines(payloads: list[bytes]) -> Iterator[bytes]:
    """The cookbook's input: one request body a line, ``metadata`` popped before sending."""
    for i, payload in enumerate(payloads):
        body = orjson.loads(payload)
        body["metadata"] = {"custom_id": f"r-{i}"}
        yield orjson.dumps(body)


def batch_lines(payloads: list[bytes]) -> Iterator[bytes]:
    for i, payload in enumerate(payloads):
        yield b'{"custom_id":"r-%d","method":"POST","url":"%s","body":%s}' % (
            i,
            ENDPOINT.encode(),
            payload,
        )


class BatchdClient:
    """The batchd API over aiohttp: upload, create, poll (light: one GET every ``poll`` s)."""

    def __init__(self, base_url: str, poll: float, timeout: float) -> None:
        self.base_url = base_url
        self.poll = poll
        self.timeout = timeout
        self.headers = {"authorization": "Bearer bench"}

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(self.base_url, headers=self.headers)

    async def upload(self, path: Path) -> str:
        async with self.session() as session:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            with open(path, "rb") as fh:  # noqa: ASYNC230 - aiohttp streams it
                form.add_field("file", fh, filename=path.name, content_type="application/jsonl")
                answer = await json_answer(session.post("/v1/files", data=form))
        return str(answer["id"])

    async def run_batch(self, file_id: str, n: int, pid: int, output: Path) -> dict[str, float]:
        """Create a batch, poll it to ``completed``, download and check the output file."""
        create = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
        async with self.session() as session:
            cpu = process_cpu(pid)
            started = time.perf_counter()
            batch = await json_answer(session.post("/v1/batches", json=create))
            running_seen = None
            polls: list[float] = []  # seconds each GET took: the API's latency while it runs
            deadline = started + self.timeout
            while batch["status"] not in TERMINAL:
                if running_seen is None and batch["status"] == "in_progress":
                    running_seen = time.perf_counter()
                if time.perf_counter() > deadline:
                    with contextlib.suppress(aiohttp.ClientError, RuntimeError):
                        await json_answer(session.post(f"/v1/batches/{batch['id']}/cancel"))
                    raise RuntimeError(
                        f"batchd: batch {batch['id']} still {batch['status']} after "
                        f"{self.timeout:g} s (request_counts {batch['request_counts']}); "
                        "cancelled it"
                    )
                await asyncio.sleep(self.poll)
                sent = time.perf_counter()
                batch = await json_answer(session.get(f"/v1/batches/{batch['id']}"))
                polls.append(time.perf_counter() - sent)
            done = time.perf_counter()
            server_cpu = process_cpu(pid) - cpu
            if batch["status"] != "completed":
                raise RuntimeError(f"batchd: batch ended {batch['status']}: {batch.get('errors')}")
            counts = batch["request_counts"]
            if counts != {"total": n, "completed": n, "failed": 0}:
                raise RuntimeError(f"batchd: request_counts {counts} for {n} requests")
            size = await download(session, f"/v1/files/{batch['output_file_id']}/content", output)
            downloaded = time.perf_counter()
        check_output(output, n)
        return {
            "seconds": done - started,
            "server_cpu_s": server_cpu,
            "to_in_progress_s": (running_seen or done) - started,
            "poll_ms_median": 1000 * median(polls),
            "poll_ms_max": 1000 * max(polls, default=float("nan")),
            "in_progress_to_completed_s": float(batch["completed_at"] - batch["in_progress_at"]),
            "download_s": downloaded - done,
            "output_mb": size / 1e6,
        }


async def json_answer(request: Awaitable[aiohttp.ClientResponse]) -> Any:
    async with await request as resp:
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status} from {resp.url}: {body[:500]!r}")
    return orjson.loads(body)


async def download(session: aiohttp.ClientSession, path: str, target: Path) -> int:
    size = 0
    async with session.get(path) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status} from {resp.url}")
        with open(target, "wb") as fh:  # noqa: ASYNC230 - a local disk
            async for chunk in resp.content.iter_chunked(1024 * 1024):
                fh.write(chunk)
                size += len(chunk)
    return size


def check_output(path: Path, n: int) -> None:
    """One line per request, each a 200 answer, every custom_id once."""
    seen: set[str] = set()
    with open(path, "rb") as fh:
        for line in fh:
            record = orjson.loads(line)
            if record["response"]["status_code"] != 200 or record.get("error"):
                raise RuntimeError(f"batchd: an output line is not a 200 answer: {line[:300]!r}")
            seen.add(record["custom_id"])
    if seen != {f"r-{i}" for i in range(n)}:
        raise RuntimeError(f"batchd: output has {len(seen)} distinct custom_ids for {n} requests")


# -- the report -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(
    args: argparse.Namespace, results: dict[str, list[Measurement]], runs: list[str]
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        "rounds": args.rounds,
        "ideal_rps": args.concurrency / (args.latency_ms / 1000),
        "runs": {},
    }
    for run in runs:
        ms = results[run]
        extras = sorted({key for m in ms for key in m.extra})
        summary["runs"][run] = {
            "rps": median([m.rps for m in ms]),
            "cpu_ms_per_request": median([m.cpu_ms(m.cpu_s) for m in ms]),
            "client_cpu_ms_per_request": median([m.cpu_ms(m.client_cpu_s) for m in ms]),
            "upstream_cpu_ms_per_request": median([m.cpu_ms(m.upstream_cpu_s) for m in ms]),
            "upstream_max_in_flight": max(m.upstream_max_in_flight for m in ms),
            "upstream_mean_in_flight": median([m.upstream_mean_in_flight for m in ms]),
            "per_round_rps": [round(m.rps) for m in ms],
            **{key: median([m.extra[key] for m in ms if key in m.extra]) for key in extras},
        }
    if "batchd" in runs:
        for base in BASELINES:
            if base in runs:
                ratios = [
                    b.rps / p.rps for b, p in zip(results["batchd"], results[base], strict=True)
                ]
                key = base.replace("-", "_")
                summary[f"batchd_over_{key}"] = median(ratios)
                summary[f"batchd_over_{key}_per_round"] = [round(r, 3) for r in ratios]
        if "plain" in runs:
            summary["target_met"] = summary["batchd_over_plain"] >= TARGET
    return summary


def report(summary: dict[str, Any]) -> None:
    print(
        f"{summary['requests']} chat requests, concurrency {summary['concurrency']}, upstream "
        f"latency {summary['latency_ms']:g} ms (ideal {summary['ideal_rps']:.0f} req/s); "
        f"medians of {summary['rounds']} rounds"
    )
    print(
        f"{'run':15s} {'req/s':>7s} {'CPU ms/req':>10s} {'bench CPU':>9s} {'upstream':>8s} "
        f"{'in flight: mean max':>19s}   per round"
    )
    for run, r in summary["runs"].items():
        print(
            f"{run:15s} {r['rps']:7.0f} {r['cpu_ms_per_request']:10.3f} "
            f"{r['client_cpu_ms_per_request']:9.3f} {r['upstream_cpu_ms_per_request']:8.3f} "
            f"{r['upstream_mean_in_flight']:14.0f} {r['upstream_max_in_flight']:4d}   "
            f"{r['per_round_rps']}"
        )
    print(
        "CPU ms/req: the bench process (plain, plain-pyreqwest, cookbook) or the batchd server "
        "process (batchd); "
        "bench CPU: the bench process in every run; upstream: the fake upstream's process; "
        "in flight: at the upstream, sampled every 50 ms (mean) and its peak (max)"
    )
    b = summary["runs"].get("batchd")
    if b:
        print(
            f"batchd: create -> in_progress {b['to_in_progress_s']:.3f} s, in_progress_at -> "
            f"completed_at {b['in_progress_to_completed_s']:.0f} s (whole seconds), output "
            f"download {b['download_s']:.3f} s ({b['output_mb']:.1f} MB); GET /v1/batches/{{id}} "
            f"while running: median {b['poll_ms_median']:.0f} ms, max {b['poll_ms_max']:.0f} ms"
        )
    for base in BASELINES:
        key = base.replace("-", "_")
        if f"batchd_over_{key}" in summary:
            print(
                f"batchd / {base}: {summary[f'batchd_over_{key}']:.2f} "
                f"(per round {summary[f'batchd_over_{key}_per_round']})"
            )
    if "target_met" in summary:
        verdict = "met" if summary["target_met"] else "NOT met"
        print(f"target batchd >= {TARGET} x plain: {verdict}")


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=10_000, help="requests per run")
    parser.add_argument(
        "--concurrency", type=int, default=256, help="in flight at most, and batchd's cap"
    )
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the upstream's latency")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, medians reported")
    parser.add_argument(
        "--only", default=",".join(RUNS), help="comma-separated runs (default: all four)"
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop" if available("uvloop") else "asyncio",
        help="the baselines' event loop (default uvloop when installed, as batchd serve uses)",
    )
    parser.add_argument("--poll", type=float, default=0.05, help="batch poll interval, s")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on a batch after, s")
    parser.add_argument(
        "--cookbook-sleep-ms",
        type=float,
        default=1.0,
        help="the cookbook main loop's sleep per turn (its value: 1 ms)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="also print one JSON result line")
    args = parser.parse_args(argv)
    runs = [run.strip() for run in args.only.split(",") if run.strip()]
    if not runs or any(run not in RUNS for run in runs):
        parser.error(f"--only takes a comma-separated subset of {','.join(RUNS)}")
    runs = [run for run in RUNS if run in runs]

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dispatch-", dir=WORK_DIR))
    results: dict[str, list[Measurement]] = {run: [] for run in runs}
    bench: Bench | None = None
    try:
        with UpstreamProcess(work, latency_ms=args.latency_ms, uvloop=available("uvloop")) as up:
            bench = Bench(args, work, up)
            if "batchd" in runs:
                bench.start_batchd()
            for run in runs:  # warm-up: imports, first connections, the first batch
                bench.run(run, min(WARM_UP_REQUESTS, args.requests))
            for round_no in range(args.rounds):
                order = runs if round_no % 2 == 0 else runs[::-1]
                for run in order:
                    m = bench.run(run, args.requests)
                    results[run].append(m)
                    log(
                        f"round {round_no + 1}: {run:15s} {m.rps:7.0f} req/s, "
                        f"CPU {m.cpu_ms(m.cpu_s):.3f} ms/request "
                        f"(load average {os.getloadavg()[0]:.2f})"
                    )
    except RuntimeError as exc:
        log(f"error: {exc}")
        if bench is not None and bench.server is not None:
            log(f"batchd log tail:\n{bench.server.log()[-3000:]}")
        return 1
    finally:
        if bench is not None:
            bench.stop_batchd()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(args, results, runs)
    report(summary)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
