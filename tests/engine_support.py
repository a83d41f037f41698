"""Helpers for the end-to-end tests of batch execution: a real ``batchd serve`` running batches
against the fake upstream (``tests.upstream``), driven through the real ``openai`` SDK.

Every wait has a timeout; a timed-out wait fails with the batch's last state and the tail of the
server log, so that a missing or stuck engine shows up as a readable failure.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import OpenAI

from tests.pg import fresh_database_sync
from tests.schema import check_response
from tests.serverproc import BatchdServer, BatchdWorker, api_and_worker, write_config
from tests.upstream import answers
from tests.upstream.process import UpstreamProcess

__all__ = [
    "CHAT",
    "MODEL",
    "TERMINAL",
    "Results",
    "batch_state",
    "chat_body",
    "check_line",
    "expected_usage",
    "fetch_results",
    "log_tail",
    "model_route",
    "request_line",
    "sdk",
    "serving",
    "shared_mode",
    "start_server",
    "submit",
    "to_jsonl",
    "upstream_attempts",
    "wait_for_batch",
    "wait_until",
]

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
LINE_KEYS = {"id", "custom_id", "response", "error"}


# -- requests ----------------------------------------------------------------------------------


def chat_body(text: str, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def request_line(custom_id: str, body: dict[str, Any], url: str = CHAT) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def to_jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


# -- servers -----------------------------------------------------------------------------------


def model_route(upstream: UpstreamProcess, **options: Any) -> dict[str, Any]:
    """A ``[[models]]`` entry for ``gpt-4o-mini`` on the fake upstream."""
    route: dict[str, Any] = {
        "name": MODEL,
        "provider": "openai",
        "base_url": upstream.api_url,
        "max_concurrency": 32,
        "timeout": 2.0,
    }
    route.update(options)
    return route


def start_server(
    root: Path,
    upstream: UpstreamProcess,
    route: dict[str, Any] | None = None,
    **settings: Any,
) -> BatchdServer:
    """Write ``root/batchd.toml`` (one route on ``upstream`` plus ``settings``) and start
    ``batchd serve`` on ``root/data``."""
    root.mkdir(parents=True, exist_ok=True)
    config = write_config(root / "batchd.toml", models=[route or model_route(upstream)], **settings)
    return BatchdServer(root / "data", config).start()


def sdk(server: BatchdServer, timeout: float = 30.0) -> OpenAI:
    return OpenAI(base_url=server.api_url, api_key="x", max_retries=0, timeout=timeout)


@contextlib.contextmanager
def serving(
    root: Path,
    upstream: UpstreamProcess,
    route: dict[str, Any] | None = None,
    **settings: Any,
) -> Iterator[tuple[BatchdServer, OpenAI]]:
    """:func:`start_server` and an SDK client on it; the server stopped on the way out."""
    server = start_server(root, upstream, route, **settings)
    try:
        with sdk(server) as client:
            yield server, client
    finally:
        server.stop()


@dataclass
class Served:
    """A fake upstream, a ``batchd serve`` routed to it, and an SDK client on the server."""

    upstream: UpstreamProcess
    server: BatchdServer
    client: OpenAI


@contextlib.contextmanager
def served(
    root: Path, route: dict[str, Any], upstream: dict[str, Any], **settings: Any
) -> Iterator[Served]:
    """The fake upstream (``upstream``: its options) and :func:`serving` with one route on it
    (``route``: options of :func:`model_route`) and ``settings``; stopped on the way out."""
    with (
        UpstreamProcess(root, **upstream) as process,
        serving(root / "batchd", process, model_route(process, **route), **settings) as (
            server,
            client,
        ),
    ):
        yield Served(process, server, client)


@contextlib.contextmanager
def shared_mode(
    root: Path, upstream: UpstreamProcess, *, worker_args: tuple[str, ...] = (), **route: Any
) -> Iterator[tuple[BatchdServer, BatchdWorker]]:
    """Scaled out on a fresh PostgreSQL database (skipped without one, see ``tests/pg.py``):
    ``root/batchd.toml`` with one route on ``upstream`` (8 at a time, and ``route``'s options),
    then an API process without an engine and one worker (``worker_args``) on ``root/data``,
    started; both stopped on the way out."""
    with fresh_database_sync() as database:
        config = write_config(
            root / "batchd.toml",
            models=[model_route(upstream, **{"max_concurrency": 8, **route})],
            database_url=database,
            range_size=500,
            lease_seconds=3.0,
        )
        with api_and_worker(root / "data", config, worker_args=worker_args) as processes:
            yield processes


def submit(client: OpenAI, lines: Sequence[dict[str, Any]], name: str = "in.jsonl") -> str:
    """Upload ``lines`` as a batch file and create a batch on it; the batch id."""
    file_id = client.files.create(file=(name, to_jsonl(lines)), purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    return batch.id


# -- waiting -----------------------------------------------------------------------------------


def log_tail(server: BatchdServer | None, lines: int = 60) -> str:
    if server is None:
        return "(no server)"
    text = server.log().splitlines()
    return "\n".join(text[-lines:]) or "(empty log)"


def batch_state(client: OpenAI, batch_id: str) -> dict[str, Any]:
    """The raw batch JSON, checked against the official ``Batch`` schema."""
    data: dict[str, Any] = check_response(
        client.batches.with_raw_response.retrieve(batch_id), "Batch"
    )
    return data


def _summary(data: dict[str, Any]) -> str:
    return f"status={data.get('status')} request_counts={data.get('request_counts')}"


def wait_for_batch(
    client: OpenAI,
    server: BatchdServer | None,
    batch_id: str,
    statuses: Iterable[str] = ("completed",),
    timeout: float = 60.0,
    poll: float = 0.05,
) -> dict[str, Any]:
    """Poll until the batch's status is one of ``statuses``; its JSON.

    Fails at once when it reaches another terminal status, and after ``timeout`` seconds with the
    batch's last state and the server log tail (a batch that stays ``in_progress`` usually means
    that no execution engine is running it).
    """
    wanted = set(statuses)
    deadline = time.monotonic() + timeout
    data: dict[str, Any] = {}
    while True:
        data = batch_state(client, batch_id)
        status = data["status"]
        if status in wanted:
            return data
        if status in TERMINAL:
            raise AssertionError(
                f"batch {batch_id} ended {status}, expected one of {sorted(wanted)}: "
                f"{_summary(data)} errors={data.get('errors')}\n"
                f"--- server log tail ---\n{log_tail(server)}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"batch {batch_id} not {'/'.join(sorted(wanted))} after {timeout:g}s: "
                f"{_summary(data)}\n--- server log tail ---\n{log_tail(server)}"
            )
        time.sleep(poll)


def wait_until(
    predicate: Any, timeout: float, message: str, server: BatchdServer | None = None
) -> Any:
    """Call ``predicate()`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{message} (waited {timeout:g}s)\n--- server log tail ---\n{log_tail(server)}"
            )
        time.sleep(0.02)


# -- results -----------------------------------------------------------------------------------


@dataclass
class Results:
    output: list[dict[str, Any]]
    errors: list[dict[str, Any]]

    @property
    def all(self) -> list[dict[str, Any]]:
        return self.output + self.errors

    def by_custom_id(self) -> dict[str, dict[str, Any]]:
        return {line["custom_id"]: line for line in self.all}

    def error_codes(self) -> Counter[str]:
        return Counter(
            line["error"]["code"] if line["error"] else f"http_{line['response']['status_code']}"
            for line in self.errors
        )


def _lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = client.files.content(file_id).content
    assert content.endswith(b"\n"), f"file {file_id} does not end with a newline"
    return [json.loads(line) for line in content.splitlines()]


RESPONSE_KEYS = {"status_code", "request_id", "body", "headers"}


def check_line(line: dict[str, Any]) -> None:
    """The shape of an output/error file line."""
    assert set(line) == LINE_KEYS, line
    assert isinstance(line["id"], str), line
    assert line["id"].startswith("batch_req_"), line
    assert isinstance(line["custom_id"], str), line
    response, error = line["response"], line["error"]
    if response is not None:
        keys = set(response)
        assert {"status_code", "request_id", "body"} <= keys <= RESPONSE_KEYS, line
        if "headers" in keys:  # an answer from the result cache (batchd.engine.cache)
            assert response["headers"]["x-batchd-cache"] == "hit", line
        assert isinstance(response["status_code"], int), line
    if error is not None:
        assert response is None, f"a line with an error has no response: {line}"
        assert isinstance(error, dict), line
        assert isinstance(error.get("code"), str), line
        assert isinstance(error.get("message"), str), line
    assert response is not None or error is not None, f"line with neither: {line}"


def fetch_results(
    client: OpenAI, batch: dict[str, Any], custom_ids: Sequence[str] | None = None
) -> Results:
    """Download and check the output and error files of a finished batch.

    Checks: every line's shape; output lines are 2xx with ``error`` null and error lines are not;
    ``output_file_id``/``error_file_id`` are null exactly when that file would be empty; each
    custom_id at most once over both files; ``request_counts`` match the files; with
    ``custom_ids`` (input order): every request exactly once and each file in input order.
    """
    results = Results(
        _lines(client, batch["output_file_id"]), _lines(client, batch["error_file_id"])
    )
    for line in results.all:
        check_line(line)
    for line in results.output:
        assert line["error"] is None, line
        assert line["response"] is not None, line
        assert 200 <= line["response"]["status_code"] < 300, line
    for line in results.errors:
        response = line["response"]
        assert response is None or not 200 <= response["status_code"] < 300, line
    if batch["output_file_id"] is not None:
        assert results.output, "output_file_id is set for an empty output file"
    if batch["error_file_id"] is not None:
        assert results.errors, "error_file_id is set for an empty error file"
    seen = Counter(line["custom_id"] for line in results.all)
    twice = sorted(cid for cid, n in seen.items() if n > 1)
    assert not twice, f"{len(twice)} custom_ids appear more than once, e.g. {twice[:5]}"
    ids = Counter(line["id"] for line in results.all)
    assert all(n == 1 for n in ids.values()), "a batch_req_ id appears twice"
    counts = batch["request_counts"]
    assert counts["completed"] == len(results.output), (counts, len(results.output))
    assert counts["failed"] == len(results.errors), (counts, len(results.errors))
    assert counts["completed"] + counts["failed"] == counts["total"], counts
    if custom_ids is not None:
        order = {cid: i for i, cid in enumerate(custom_ids)}
        missing = sorted(set(custom_ids) - set(seen), key=order.__getitem__)
        extra = sorted(set(seen) - set(custom_ids))
        assert not missing, f"{len(missing)} requests have no result, e.g. {missing[:5]}"
        assert not extra, f"results for unknown custom_ids: {extra[:5]}"
        for name, lines in (("output", results.output), ("error", results.errors)):
            positions = [order[line["custom_id"]] for line in lines]
            assert positions == sorted(positions), f"the {name} file is not in input order"
    return results


def expected_usage(output: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The Batch ``usage`` that the successful lines add up to."""
    input_tokens = cached = output_tokens = reasoning = 0
    for line in output:
        usage = line["response"]["body"].get("usage") or {}
        input_tokens += usage.get("prompt_tokens", 0)
        output_tokens += usage.get("completion_tokens", 0)
        cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        reasoning += (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def upstream_attempts(upstream: UpstreamProcess, bodies: Iterable[dict[str, Any]]) -> list[int]:
    """How many times the upstream received each of ``bodies`` (by body digest)."""
    digests = upstream.stats()["digests"]
    out = []
    for body in bodies:
        record = digests.get(answers.body_digest(body))
        out.append(0 if record is None else int(record["attempts"]))
    return out
