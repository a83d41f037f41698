"""The batch workflow with the official openai SDK against a local batchd.

Starts ``batchd serve`` on a free port with a throw-away data directory and a one-model routing
table, then: upload a JSONL batch file, create a batch, watch it validate, list, cancel, and
download the error file. Run it with ``python examples/quickstart.py``.

Request execution arrives with the execution engine; until then a valid batch waits in
``in_progress`` and this example cancels it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from openai import OpenAI

CONFIG = """
[[models]]
name = "gpt-4o-mini"
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    config = workdir / "batchd.toml"
    config.write_text(CONFIG)
    cmd = [sys.executable, "-m", "batchd", "serve", "--port", str(port)]
    cmd += ["--data-dir", str(workdir / "data"), "--config", str(config)]
    proc = subprocess.Popen(cmd)
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("batchd did not start")


def batch_file() -> bytes:
    questions = ["What is 2+2?", "Name a prime number.", "Translate 'cat' to French."]
    lines = [
        {
            "custom_id": f"request-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": q}]},
        }
        for i, q in enumerate(questions, 1)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_server(Path(tmp), port)
        try:
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed")
            uploaded = client.files.create(file=("requests.jsonl", batch_file()), purpose="batch")
            print(f"uploaded {uploaded.id}: {uploaded.bytes} bytes")
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"job": "quickstart"},
            )
            while batch.status == "validating":
                time.sleep(0.1)
                batch = client.batches.retrieve(batch.id)
            print(f"batch {batch.id}: {batch.status}, {batch.request_counts.total} requests")
            print("batches:", [b.id for b in client.batches.list(limit=10)])
            batch = client.batches.cancel(batch.id)
            while batch.status == "cancelling":
                time.sleep(0.1)
                batch = client.batches.retrieve(batch.id)
            print(f"batch {batch.id}: {batch.status}, counts {batch.request_counts}")
            if batch.error_file_id:
                print(client.files.content(batch.error_file_id).text, end="")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
