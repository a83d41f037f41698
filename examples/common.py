"""What the examples share: a ``batchd serve`` subprocess on a free port, and running one batch
to its end with the official ``openai`` SDK."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from openai import OpenAI
from openai.types import Batch

ROOT = Path(__file__).resolve().parents[1]
MOVIES_CSV = ROOT.parent / "shared" / "data" / "imdb_top_1000.csv"
TERMINAL = ("completed", "failed", "expired", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit(f"{what} did not start")


@contextmanager
def batchd_server(workdir: Path, routes: list[dict[str, Any]] | None = None) -> Iterator[OpenAI]:
    """``batchd serve`` with a throw-away data directory; an SDK client pointed at it.

    ``routes`` is the ``[[models]]`` routing table; ``None`` serves the embedded default models
    (``pip install 'batchd[local]'``).
    """
    port = free_port()
    cmd = [sys.executable, "-m", "batchd", "serve", "--port", str(port)]
    cmd += ["--data-dir", str(workdir / "data"), "--log-level", "warning"]
    if routes is not None:
        config = workdir / "batchd.toml"
        config.write_text(
            "".join(
                "[[models]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in route.items())
                for route in routes
            )
        )
        cmd += ["--config", str(config)]
    proc = subprocess.Popen(cmd)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc, "batchd")
        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed")
    finally:
        proc.terminate()
        proc.wait()


def served_models(client: OpenAI) -> list[str]:
    return [model.id for model in client.models.list()]


def run_batch(
    client: OpenAI, lines: Iterable[dict[str, Any]], endpoint: str, job: str
) -> tuple[Batch, list[dict[str, Any]], list[dict[str, Any]]]:
    """Upload ``lines`` as a batch file, create the batch, follow it to its end (printing the
    progress) and return it with its output and error lines."""
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=(f"{job}.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata={"job": job},
    )
    shown = None
    while batch.status not in TERMINAL:
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
        counts = batch.request_counts
        progress = (batch.status, counts.completed if counts else 0, counts.failed if counts else 0)
        if progress != shown and counts is not None:
            print(f"  {batch.status}: {counts.completed + counts.failed} of {counts.total} done")
            shown = progress
    output = _lines(client, batch.output_file_id)
    errors = _lines(client, batch.error_file_id)
    return batch, output, errors


def _lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def movie_rows(limit: int) -> list[dict[str, str]]:
    """The first ``limit`` rows of the IMDb top-1000 data set (``../shared/data``)."""
    if not MOVIES_CSV.is_file():
        raise SystemExit(f"the IMDb data set is not here: {MOVIES_CSV} (see ../shared/data)")
    with MOVIES_CSV.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))[:limit]
