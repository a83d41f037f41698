"""Which HTTP client should batchd use for upstream calls? aiohttp, httpx and pyreqwest under
concurrency.

Sends the same N chat-completion requests with each client at a fixed concurrency against the
fake upstream of the test suite (``tests/upstream``, its own process, fixed latency), on one
event loop, with one pooled client per run. Prints requests/s, the client process's CPU time per
request, and each client's throughput relative to aiohttp, measured in the same run (clients
alternate, ``--rounds`` times, medians reported). The CPU time is the whole process's, so it
includes the threads a client runs its I/O on (pyreqwest's tokio thread).

    python bench/http_clients.py                     # 10,000 requests, concurrency 256, 50 ms
    python bench/http_clients.py --requests 2000 --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.upstream.process import UpstreamProcess

Sender = Callable[[str, list[bytes], int], Awaitable[int]]


def bodies(n: int) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Classify the movie."},
                    {"role": "user", "content": f"Movie number {i}: a story about {i % 97}."},
                ],
                "max_tokens": 50,
            }
        )
        for i in range(n)
    ]


async def with_limit(concurrency: int, jobs: list[Callable[[], Awaitable[int]]]) -> int:
    semaphore = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(job: Callable[[], Awaitable[int]]) -> None:
        nonlocal ok
        async with semaphore:
            status = await job()
        ok += status == 200

    await asyncio.gather(*(one(job) for job in jobs))
    return ok


async def send_aiohttp(url: str, payloads: list[bytes], concurrency: int) -> int:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    headers = {"content-type": "application/json", "authorization": "Bearer bench"}
    async with aiohttp.ClientSession(connector=connector) as session:

        def job(payload: bytes) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                async with session.post(url, data=payload, headers=headers) as resp:
                    await resp.read()
                    return resp.status

            return run

        return await with_limit(concurrency, [job(p) for p in payloads])


async def _send_httpx_like(module: Any, url: str, payloads: list[bytes], concurrency: int) -> int:
    limits = module.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json", "authorization": "Bearer bench"}
    async with module.AsyncClient(limits=limits, timeout=60) as client:

        def job(payload: bytes) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                resp = await client.post(url, content=payload, headers=headers)
                return int(resp.status_code)

            return run

        return await with_limit(concurrency, [job(p) for p in payloads])


async def send_httpx(url: str, payloads: list[bytes], concurrency: int) -> int:
    import httpx

    return await _send_httpx_like(httpx, url, payloads, concurrency)


async def send_httpx2(url: str, payloads: list[bytes], concurrency: int) -> int:
    import httpx2

    return await _send_httpx_like(httpx2, url, payloads, concurrency)


async def send_pyreqwest(url: str, payloads: list[bytes], concurrency: int) -> int:
    """As batchd's ``openai`` provider sends: headers on the client, the URL parsed once, the
    whole answer read by ``send()``."""
    from pyreqwest.client import ClientBuilder
    from pyreqwest.http import Url

    headers = {"content-type": "application/json", "authorization": "Bearer bench"}
    builder = ClientBuilder().max_connections(concurrency).default_headers(headers).no_proxy()
    target = Url(url)
    async with builder.build() as client:

        def job(payload: bytes) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                resp = await client.post(target).body_bytes(payload).build().send()
                await resp.bytes()
                return resp.status

            return run

        return await with_limit(concurrency, [job(p) for p in payloads])


CLIENTS: dict[str, Sender] = {
    "aiohttp": send_aiohttp,
    "httpx": send_httpx,
    "httpx2": send_httpx2,
    "pyreqwest": send_pyreqwest,
}


def available(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(sender: Sender, url: str, payloads: list[bytes], concurrency: int) -> dict[str, float]:
    cpu = cpu_seconds()
    started = time.perf_counter()
    ok = asyncio.run(sender(url, payloads, concurrency))
    wall = time.perf_counter() - started
    used = cpu_seconds() - cpu
    if ok != len(payloads):
        raise RuntimeError(f"only {ok} of {len(payloads)} requests succeeded")
    return {"rps": len(payloads) / wall, "cpu_ms_per_request": 1000 * used / len(payloads)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    names = [name for name in CLIENTS if available(name)]
    payloads = bodies(args.requests)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with UpstreamProcess(latency_ms=args.latency_ms, uvloop=True) as upstream:
        url = f"{upstream.api_url}/chat/completions"
        for name in names:  # warm-up: imports, first connections
            measure(CLIENTS[name], url, payloads[:200], min(args.concurrency, 200))
        for _ in range(args.rounds):
            for name in names:
                results[name].append(measure(CLIENTS[name], url, payloads, args.concurrency))
        stats = upstream.stats(digests=False)
    ideal = args.concurrency / (args.latency_ms / 1000)
    print(
        f"{args.requests} chat requests, concurrency {args.concurrency}, upstream latency "
        f"{args.latency_ms:g} ms (ideal {ideal:.0f} req/s); medians of {args.rounds} rounds"
    )
    print(f"upstream max concurrency seen: {stats.get('max_in_flight')}")
    base = statistics.median(r["rps"] for r in results["aiohttp"]) if "aiohttp" in names else None
    for name in names:
        rps = statistics.median(r["rps"] for r in results[name])
        cpu = statistics.median(r["cpu_ms_per_request"] for r in results[name])
        ratio = f"{rps / base:5.2f}x aiohttp" if base else ""
        print(f"{name:9s} {rps:8.0f} req/s   client CPU {cpu:6.3f} ms/request   {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
