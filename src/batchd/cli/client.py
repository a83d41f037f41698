"""The client commands of ``batchd``: ``submit``, ``status``, ``wait``, ``download``, ``cancel``,
``retry`` and ``ls``, run against a batchd server (or OpenAI itself) through the official
``openai`` SDK and nothing but the public Files and Batches API (``retry`` excepted: it calls
batchd's ``POST /v1/batches/{id}/retry``).

Every command takes ``--base-url`` (or ``OPENAI_BASE_URL``, else ``batchd serve``'s default
address) and ``--api-key`` (or ``OPENAI_API_KEY``). Results a script reads (a batch id, the paths
written, JSON) go to stdout; messages for people go to stderr.

Exit statuses, the same for every command:

* 0: done (``wait``: the batch ended ``completed``, even with failed requests);
* 1: the server refused (no such batch, a 4xx/5xx answer), or the batch did not complete
  (``wait``: it ended ``failed``, ``expired`` or ``cancelled``, or ``--timeout`` passed);
* 2: fix the command or its setting: a bad option or input file, an unwritable directory, a
  server that cannot be reached, an API key it refuses;
* 130: interrupted (Ctrl-C); a batch being waited for keeps running.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from batchd.atomicfile import AtomicFile
from batchd.cli.common import fail
from batchd.cli.progress import ProgressDisplay, Snapshot
from batchd.core.lifecycle import TERMINAL as TERMINAL_STATUSES
from batchd.core.priority import PRIORITY_KEY, check_priority

if TYPE_CHECKING:  # the SDK is imported when a command runs: `batchd serve` starts without it
    import openai
    from openai import OpenAI
    from openai.types import Batch

__all__ = ["cancel", "download", "ls", "retry", "status", "submit", "wait"]

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
"""Where ``batchd serve`` listens by default."""
DEFAULT_API_KEY = "-"
"""Sent when no key is given: batchd without API keys ignores it."""
DEFAULT_ENDPOINT = "/v1/chat/completions"
WAIT_ERRORS_SHOWN = 20
"""Validation errors listed when ``wait`` sees a batch fail (``status`` lists them all)."""

BaseUrlOption = Annotated[
    str,
    typer.Option(
        "--base-url",
        envvar="OPENAI_BASE_URL",
        help="The API's address, ending in /v1, e.g. --base-url http://gpu-box:8080/v1 or "
        "https://api.openai.com/v1. Also OPENAI_BASE_URL; default http://127.0.0.1:8080/v1 "
        "(batchd serve's default address).",
        show_default=False,
    ),
]
ApiKeyOption = Annotated[
    str,
    typer.Option(
        "--api-key",
        envvar="OPENAI_API_KEY",
        help="The API key, e.g. --api-key sk-... Also OPENAI_API_KEY; batchd without keys "
        "ignores it (default '-').",
        show_default=False,
    ),
]
BatchIdArgument = Annotated[
    str, typer.Argument(help="The batch's id, e.g. batch_6a1f..., as printed by batchd submit.")
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of text, e.g. --json | jq .status.")
]
WaitOption = Annotated[
    bool,
    typer.Option("--wait", help="Then follow the batch as `batchd wait` does, e.g. --wait."),
]
IntervalOption = Annotated[
    float,
    typer.Option(help="Seconds between two looks at the batch, e.g. --interval 10.", min=0.1),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        help="Give up waiting after this many seconds (exit status 1, the batch keeps running), "
        "e.g. --timeout 3600. Default: wait as long as it takes.",
        min=0,
    ),
]


# -- plumbing ----------------------------------------------------------------------------------


def _server_message(exc: openai.APIStatusError) -> str:
    """The ``error.message`` of an OpenAI error envelope, else the body as text."""
    body = exc.body
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else str(body or exc.message)


@contextmanager
def _connect(base_url: str, api_key: str) -> Iterator[OpenAI]:
    """An SDK client on ``base_url``; API failures become a message and an exit status."""
    import httpx
    import openai

    try:
        with openai.OpenAI(base_url=base_url, api_key=api_key) as client:
            yield client
    except httpx.TransportError as exc:  # the connection broke while a body was streamed
        fail(f"the connection to {base_url} broke ({exc!r}); run the command again", 2)
    except openai.APITimeoutError:
        fail(f"{base_url} did not answer in time; try again, or check --base-url", 2)
    except openai.APIConnectionError:
        fail(
            f"cannot reach {base_url}: is `batchd serve` running? set --base-url or "
            "OPENAI_BASE_URL",
            2,
        )
    except openai.AuthenticationError as exc:
        fail(
            f"{base_url} refused the API key ({_server_message(exc)}); set --api-key or "
            "OPENAI_API_KEY",
            2,
        )
    except openai.NotFoundError as exc:
        fail(f"not found at {base_url}: {_server_message(exc)}", 1)
    except openai.APIStatusError as exc:
        fail(f"{base_url} answered {exc.status_code}: {_server_message(exc)}", 1)
    except openai.APIError as exc:
        fail(f"unexpected answer from {base_url} ({exc.message}); check --base-url", 2)


def _local_time(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _snapshot(batch: Batch) -> Snapshot:
    counts = batch.request_counts
    return Snapshot(
        status=batch.status,
        total=counts.total if counts else 0,
        completed=counts.completed if counts else 0,
        failed=counts.failed if counts else 0,
        tokens=batch.usage.total_tokens if batch.usage else 0,
    )


def _error_lines(batch: Batch, limit: int | None = None) -> list[str]:
    """The batch's validation errors, ``line 3: invalid_json_line: ...``, at most ``limit``."""
    errors = batch.errors.data if batch.errors and batch.errors.data else []
    lines = []
    for error in errors[:limit]:
        where = f"line {error.line}: " if error.line is not None else ""
        param = f" (param {error.param})" if error.param else ""
        lines.append(f"{where}{error.code or 'error'}: {error.message or ''}{param}")
    if limit is not None and len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more (batchd status {batch.id})")
    return lines


def _first_line_url(path: Path) -> str | None:
    """The ``url`` of the file's first request line, when it has one."""
    try:
        with path.open("rb") as handle:
            first = json.loads(handle.readline(1 << 20))
    except (OSError, ValueError):
        return None
    url = first.get("url") if isinstance(first, dict) else None
    return url if isinstance(url, str) and url else None


def _parse_metadata(pairs: list[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--metadata takes key=value, e.g. --metadata job=nightly; got {pair!r}", 2)
        metadata[key] = value
    return metadata


# -- submit and wait ---------------------------------------------------------------------------


def submit(
    file: Annotated[
        Path,
        typer.Argument(
            help="The JSONL file of requests, one {custom_id, method, url, body} per line, "
            "e.g. requests.jsonl.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="The endpoint every line calls, e.g. --endpoint /v1/embeddings. Default: the "
            "url of the file's first line, else /v1/chat/completions.",
        ),
    ] = None,
    completion_window: Annotated[
        str,
        typer.Option(help="The time the batch may take, e.g. --completion-window 24h."),
    ] = "24h",
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            "-m",
            metavar="KEY=VALUE",
            help="A key=value label kept with the batch, repeatable, e.g. "
            "--metadata job=nightly --metadata owner=ana.",
        ),
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option(
            help="high, normal or low: the batch's share of each model's concurrency beside "
            "other batches (4:2:1), e.g. --priority low for a nightly backfill. Sets the "
            "metadata batchd_priority. Default: normal.",
            show_default=False,
        ),
    ] = None,
    wait_: WaitOption = False,
    interval: IntervalOption = 2.0,
    timeout: TimeoutOption = None,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = DEFAULT_API_KEY,
) -> None:
    """Upload a batch file and create a batch on it; prints only the batch id on stdout, e.g.
    `ID=$(batchd submit requests.jsonl --metadata job=nightly)`.

    --interval and --timeout apply with --wait.
    """
    labels = _parse_metadata(metadata or [])
    if priority is not None:
        labels[PRIORITY_KEY] = priority
        problem = check_priority(labels)
        if problem is not None:
            fail(f"--priority {priority}: use high, normal or low", 2)
    if endpoint is None:
        endpoint = _first_line_url(file) or DEFAULT_ENDPOINT
    with _connect(base_url, api_key) as client:
        with file.open("rb") as handle:
            uploaded = client.files.create(file=handle, purpose="batch")
        typer.echo(f"uploaded {file} as {uploaded.id} ({uploaded.bytes:,} bytes)", err=True)
        batch = client.batches.create(
            input_file_id=uploaded.id,
            # the server checks these; the SDK's Literal types would refuse what it may accept
            endpoint=cast(Any, endpoint),
            completion_window=cast(Any, completion_window),
            metadata=labels or None,
        )
        typer.echo(f"created batch {batch.id} for {endpoint} ({batch.status})", err=True)
        typer.echo(batch.id)
        if wait_:
            raise typer.Exit(_follow(client, batch.id, interval, timeout))


def _follow(client: OpenAI, batch_id: str, interval: float, timeout: float | None) -> int:
    """Show the batch's progress until it ends; the exit status (see the module docstring)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        batch = client.batches.retrieve(batch_id)
        with ProgressDisplay(batch_id) as display:
            display.update(_snapshot(batch))
            while batch.status not in TERMINAL_STATUSES:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                time.sleep(interval if left is None else min(interval, left))
                batch = client.batches.retrieve(batch_id)
                display.update(_snapshot(batch))
    except KeyboardInterrupt:
        typer.echo(
            f"batchd: stopped waiting; batch {batch_id} keeps running "
            f"(`batchd wait {batch_id}` to follow it again, `batchd cancel {batch_id}` to stop it)",
            err=True,
        )
        return 130
    if batch.status not in TERMINAL_STATUSES:
        typer.echo(
            f"batchd: batch {batch_id} is still {batch.status} after {timeout:g}s; "
            "it keeps running",
            err=True,
        )
        return 1
    return _report_end(batch)


def _report_end(batch: Batch) -> int:
    """Say how the batch ended, on stderr; 0 when it completed, else 1."""
    snap = _snapshot(batch)
    if batch.status == "completed":
        failed = f", {snap.failed:,} failed (see the error file)" if snap.failed else ""
        typer.echo(
            f"batch {batch.id} completed: {snap.completed:,} of {snap.total:,} requests "
            f"succeeded{failed}. Get the results with `batchd download {batch.id} -o DIR`.",
            err=True,
        )
        return 0
    if batch.status == "failed":
        typer.echo(f"batchd: batch {batch.id} failed:", err=True)
        for line in _error_lines(batch, WAIT_ERRORS_SHOWN) or ["(no reason given)"]:
            typer.echo(f"  {line}", err=True)
        return 1
    typer.echo(
        f"batchd: batch {batch.id} {batch.status} with {snap.done:,} of {snap.total:,} requests "
        f"done; what finished is in its files (`batchd download {batch.id} -o DIR`).",
        err=True,
    )
    return 1


def wait(
    batch_id: BatchIdArgument,
    interval: IntervalOption = 2.0,
    timeout: TimeoutOption = None,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = DEFAULT_API_KEY,
) -> None:
    """Show a batch's progress until it ends, e.g. `batchd wait batch_6a1f... --timeout 3600`.

    Exit status 0 when it ends completed, 1 when it ends failed (its validation errors are
    listed with their line numbers), expired or cancelled, or when --timeout passes. Ctrl-C stops
    waiting and leaves the batch running.
    """
    with _connect(base_url, api_key) as client:
        code = _follow(client, batch_id, interval, timeout)
    raise typer.Exit(code)


# -- status, cancel, ls ------------------------------------------------------------------------

_TIMES = (
    ("created", "created_at"),
    ("in progress", "in_progress_at"),
    ("finalizing", "finalizing_at"),
    ("completed", "completed_at"),
    ("failed", "failed_at"),
    ("cancelling", "cancelling_at"),
    ("cancelled", "cancelled_at"),
    ("expired", "expired_at"),
    ("expires", "expires_at"),
)


def _describe(batch: Batch) -> list[str]:
    """The batch's main fields, one ``label  value`` line each, then its errors."""
    snap = _snapshot(batch)
    rows = [
        ("id", batch.id),
        ("status", batch.status),
        ("endpoint", batch.endpoint),
        ("requests", f"{snap.total:,} total, {snap.completed:,} completed, {snap.failed:,} failed"),
        ("input file", batch.input_file_id),
        ("output file", batch.output_file_id or "none"),
        ("error file", batch.error_file_id or "none"),
    ]
    if batch.model:
        rows.append(("model", batch.model))
    if batch.usage:
        usage = batch.usage
        rows.append(
            (
                "tokens",
                f"{usage.total_tokens:,} ({usage.input_tokens:,} input, "
                f"{usage.output_tokens:,} output)",
            )
        )
    if batch.metadata:
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in batch.metadata.items())))
    for label, field in _TIMES:
        timestamp = getattr(batch, field)
        if timestamp is not None:
            rows.append((label, _local_time(timestamp)))
    lines = [f"{label:<12} {value}" for label, value in rows]
    errors = _error_lines(batch)
    if errors:
        lines.append(f"errors ({len(errors)}):")
        lines.extend(f"  {line}" for line in errors)
    return lines


def status(
    batch_id: BatchIdArgument,
    json_: JsonOption = False,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = DEFAULT_API_KEY,
) -> None:
    """Print a batch's status, request counts, file ids, timestamps (local time) and validation
    errors, e.g. `batchd status batch_6a1f...`; --json prints the whole batch object."""
    with _connect(base_url, api_key) as client:
        batch = client.batches.retrieve(batch_id)
    typer.echo(batch.to_json() if json_ else "\n".join(_describe(batch)))


def cancel(
    batch_id: BatchIdArgument,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = DEFAULT_API_KEY,
) -> None:
    """Cancel a batch and print its new status (cancelling, then cancelled once the requests in
    flight are done), e.g. `batchd cancel batch_6a1f...`. Finished results are kept."""
    with _connect(base_url, api_key) as client:
        batch = client.batches.cancel(batch_id)
    typer.echo(f"{batch.id} {batch.status}")


def retry(
    batch_id: BatchIdArgument,
    all_errors: Annotated[
        bool,
        typer.Option(
            "--all-errors",
            help="Retry every failed request, e.g. --all-errors. Default: only those another "
            "try may turn into an answer (HTTP 408, 409, 429 and 5xx, timeouts, connection "
            "errors, requests a cancel or the deadline stopped).",
        ),
    ] = False,
    wait_: WaitOption = False,
    interval: IntervalOption = 2.0,
    timeout: TimeoutOption = None,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = DEFAULT_API_KEY,
) -> None:
    """Create a new batch of the failed requests of an ended batch; prints only its id on
    stdout, e.g. `ID=$(batchd retry batch_6a1f...)`. Its metadata names the batch it retries
    (batchd_retry_of). Join both: `batchd join out.jsonl errors.jsonl retry-out.jsonl ...`.
    A batchd extension (POST /v1/batches/{id}/retry).

    --interval and --timeout apply with --wait.
    """
    import uuid

    from openai.types import Batch

    with _connect(base_url, api_key) as client:
        batch = client.post(
            f"/batches/{batch_id}/retry",
            body={"all_errors": all_errors},
            cast_to=Batch,
            # the SDK tries a timed-out call again: the key makes that one batch, not two
            options={"headers": {"Idempotency-Key": str(uuid.uuid4())}},
        )
        typer.echo(f"created batch {batch.id} retrying {batch_id} ({batch.status})", err=True)
        typer.echo(batch.id)
        if wait_:
            raise typer.Exit(_follow(client, batch.id, interval, timeout))


def ls(
    limit: Annotated[
        int, typer.Option(help="How many batches, newest first, e.g. --limit 50.", min=1)
    ] = 20,
    json_: JsonOption = False,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = DEFAULT_API_KEY,
) -> None:
    """List recent batches, newest first: id, status, endpoint, created (local time),
    done/total and failed requests, e.g. `batchd ls --limit 50`; --json prints one batch object
    per line."""
    with _connect(base_url, api_key) as client:
        pages = client.batches.list(limit=min(limit, 100))
        batches = list(itertools.islice(pages, limit))
    if json_:
        for batch in batches:
            typer.echo(batch.to_json(indent=None))
        return
    if not batches:
        typer.echo("no batches", err=True)
        return
    table = Table("id", "status", "endpoint", "created", "done/total", "failed", box=None)
    for batch in batches:
        snap = _snapshot(batch)
        table.add_row(
            batch.id,
            batch.status,
            batch.endpoint,
            _local_time(batch.created_at),
            f"{snap.done:,}/{snap.total:,}",
            f"{snap.failed:,}",
        )
    console = Console(markup=False, highlight=False)
    if not console.is_terminal:
        console.width = 200  # a pipe or a file: one row per line, nothing cut
    console.print(table)


# -- models ------------------------------------------------------------------------------------


def models(
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = DEFAULT_API_KEY,
) -> None:
    """List the models a server serves, and for a route with several servers (base_urls) each
    replica's state (closed; open: ejected; half_open: probed), load and requests sent, e.g.
    `batchd models --base-url http://127.0.0.1:8080/v1`."""
    with _connect(base_url, api_key) as client:
        names = [model.id for model in client.models.list()]
        root = base_url.rstrip("/").removesuffix("/v1").removesuffix("/openai")
        health = client.get(f"{root}/health", cast_to=object)
    replicas = health.get("replicas", {}) if isinstance(health, dict) else {}
    table = Table("model", "replica", "state", "in flight", "sent", box=None)
    for name in names:
        states = replicas.get(name) or []
        if not states:
            table.add_row(name, "", "", "", "")
        for state in states:
            table.add_row(
                name,
                str(state.get("replica")),
                str(state.get("state")),
                f"{state.get('in_flight')}/{state.get('limit')}",
                str(state.get("sent")),
            )
    console = Console(markup=False, highlight=False)
    if not console.is_terminal:
        console.width = 200
    console.print(table)


# -- download ----------------------------------------------------------------------------------


def _save(client: OpenAI, file_id: str, path: Path) -> None:
    """Stream the file's content to ``path`` through a temporary file beside it."""
    out = AtomicFile(path)
    try:
        with client.files.with_streaming_response.content(file_id) as response:
            for chunk in response.iter_bytes():
                out.file.write(chunk)
        out.commit()
    except BaseException:
        out.discard()
        raise


def download_partial(client: OpenAI, batch_id: str, output_dir: Path) -> None:
    """``download --partial``: both partial files, through the batchd extension
    ``GET /batches/{id}/partial/{output,errors}``."""
    import httpx2

    counts: dict[str, str] = {}
    status = final = ""
    with httpx2.Client(
        base_url=str(client.base_url), headers=client.auth_headers, timeout=client.timeout
    ) as http:
        for kind in ("output", "errors"):
            path = output_dir / f"{batch_id}_{kind}.partial.jsonl"
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
                out = AtomicFile(path)
            except OSError as exc:
                fail(f"cannot write to {output_dir}: {exc.strerror or exc}", 2)
            try:
                with http.stream("GET", f"batches/{batch_id}/partial/{kind}") as response:
                    if response.status_code != 200:
                        message = _error_message(response.read())
                        fail(
                            f"{client.base_url} answered {response.status_code}: {message} "
                            "(partial results are a batchd extension: without --partial, "
                            "download the batch once it has ended)",
                            1,
                        )
                    for chunk in response.iter_bytes():
                        out.file.write(chunk)
                    counts[kind] = response.headers.get("x-batchd-partial-lines", "?")
                    status = response.headers.get("x-batchd-batch-status", "?")
                    final = response.headers.get("x-batchd-partial-final", "")
                out.commit()
            except httpx2.TransportError as exc:
                out.discard()
                fail(f"the connection to {client.base_url} broke ({exc!r}); run it again", 2)
            except OSError as exc:
                out.discard()
                fail(f"cannot write to {output_dir}: {exc.strerror or exc}", 2)
            except BaseException:
                out.discard()
                raise
            typer.echo(str(path))
    when = "has ended: these are its final files" if final == "true" else "so far"
    typer.echo(
        f"batch {batch_id} is {status}: {counts['output']} output lines and "
        f"{counts['errors']} error lines ({when}; partial results)",
        err=True,
    )


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error", {})
        return str(error.get("message") or body[:200].decode(errors="replace"))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


def download(
    batch_id: BatchIdArgument,
    output_dir: Annotated[
        Path,
        typer.Option(
            "--output-dir",
            "-o",
            help="Directory to write <batch id>_output.jsonl and <batch id>_errors.jsonl to "
            "(made if missing), e.g. -o results/.",
            file_okay=False,
        ),
    ],
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = DEFAULT_API_KEY,
    partial: Annotated[
        bool,
        typer.Option(
            "--partial",
            help="Download the results so far of a batch still running (batchd servers only), "
            "to <batch id>_output.partial.jsonl and <batch id>_errors.partial.jsonl, e.g. "
            "--partial -o results/. batchd join reads them; rows without a result yet are "
            "reported as such.",
        ),
    ] = False,
) -> None:
    """Download a finished batch's output file (successful requests) and error file (the
    others), e.g. `batchd download batch_6a1f... -o results/`; prints the paths written.

    A file the batch does not have (no request succeeded, or none failed) is skipped, and said
    so. A batch still running is refused (wait for it first), unless --partial.
    """
    if partial:
        with _connect(base_url, api_key) as client:
            client.batches.retrieve(batch_id)  # a clear message for a batch that is not there
            download_partial(client, batch_id, output_dir)
        return
    with _connect(base_url, api_key) as client:
        batch = client.batches.retrieve(batch_id)
        if batch.status not in TERMINAL_STATUSES:
            fail(f"batch is still {batch.status}; run `batchd wait {batch_id}` first", 1)
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            files = (
                ("output", batch.output_file_id, "no request succeeded"),
                ("errors", batch.error_file_id, "no request failed"),
            )
            for kind, file_id, why in files:
                if file_id is None:
                    reason = "" if batch.status == "failed" else f" ({why})"
                    typer.echo(f"batch {batch_id} has no {kind} file{reason}", err=True)
                    continue
                path = output_dir / f"{batch_id}_{kind}.jsonl"
                _save(client, file_id, path)
                typer.echo(str(path))
        except OSError as exc:
            fail(f"cannot write to {output_dir}: {exc.strerror or exc}", 2)
    if batch.status == "failed":
        typer.echo(f"batch {batch_id} failed; `batchd status {batch_id}` says why", err=True)
