"""The batch workflow with the official openai SDK against a local batchd.

Starts ``batchd serve`` on a free port with a throw-away data directory and a one-model routing
table, then: upload a JSONL batch file, create a batch, follow its progress, and download the
output file. Run it with ``python examples/quickstart.py``.

The model is served by an OpenAI-compatible upstream. Point it at yours (vLLM, Ollama, OpenAI…)
with ``--base-url http://127.0.0.1:8000/v1 --model <name>`` (and ``UPSTREAM_API_KEY`` in the
environment if it needs a key); without ``--base-url`` the example starts the fake OpenAI server
of batchd's test suite (``python -m tests.upstream``: deterministic answers, no model) as a
stand-in, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(400):
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit(f"{what} did not start")


def start_stand_in_upstream(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tests.upstream", "--port", str(port), "--latency-ms", "20"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/_stats", proc, "the stand-in upstream")
    return proc


def start_server(
    workdir: Path, port: int, base_url: str, model: str, upstream_model: str | None
) -> subprocess.Popen[bytes]:
    config = workdir / "batchd.toml"
    route = {"name": model, "provider": "openai", "base_url": base_url}
    if upstream_model:
        route["upstream_model"] = upstream_model
    if os.environ.get("UPSTREAM_API_KEY"):
        route["api_key_env"] = "UPSTREAM_API_KEY"
    config.write_text(
        "[[models]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in route.items())
    )
    cmd = [sys.executable, "-m", "batchd", "serve", "--port", str(port)]
    cmd += ["--data-dir", str(workdir / "data"), "--config", str(config)]
    proc = subprocess.Popen(cmd)
    wait_until_up(f"http://127.0.0.1:{port}/health", proc, "batchd")
    return proc


def batch_file(model: str) -> bytes:
    questions = ["What is 2+2?", "Name a prime number.", "Translate 'cat' to French."]
    lines = [
        {
            "custom_id": f"request-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": q}]},
        }
        for i, q in enumerate(questions, 1)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible upstream, e.g. http://h:8000/v1")
    parser.add_argument("--model", default="gpt-4o-mini", help="the model name to batch for")
    parser.add_argument("--upstream-model", help="the name the upstream knows the model by")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        base_url = args.base_url
        if base_url is None:
            upstream_port = free_port()
            upstream = start_stand_in_upstream(upstream_port)
            stack.callback(upstream.wait)
            stack.callback(upstream.terminate)
            base_url = f"http://127.0.0.1:{upstream_port}/v1"
            print(f"no --base-url: using the stand-in upstream at {base_url}")
        port = free_port()
        server = start_server(Path(tmp), port, base_url, args.model, args.upstream_model)
        stack.callback(server.wait)
        stack.callback(server.terminate)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed")
        uploaded = client.files.create(
            file=("requests.jsonl", batch_file(args.model)), purpose="batch"
        )
        print(f"uploaded {uploaded.id}: {uploaded.bytes} bytes")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"job": "quickstart"},
        )
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)
        counts = batch.request_counts
        assert counts is not None
        print(
            f"batch {batch.id}: {batch.status}, {counts.completed} of {counts.total} "
            f"completed, {counts.failed} failed"
        )
        if batch.output_file_id:
            for line in client.files.content(batch.output_file_id).text.splitlines():
                result = json.loads(line)
                answer = result["response"]["body"]["choices"][0]["message"]["content"]
                print(f"{result['custom_id']}: {answer}")
        if batch.error_file_id:
            print(client.files.content(batch.error_file_id).text, end="")


if __name__ == "__main__":
    main()
