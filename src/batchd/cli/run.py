"""``batchd run``: a batch file run to its end on this machine, with no server (see
:mod:`batchd.localrun` for how a run is stored and resumed)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import platformdirs
import typer

from batchd.cli.common import (
    ConfigOption,
    LogFormatOption,
    ModelOption,
    UpstreamModelOption,
    UpstreamOption,
    fail,
    route_overrides,
)
from batchd.cli.progress import ProgressDisplay, Snapshot
from batchd.config import Settings
from batchd.errors import BatchdError, DataDirLocked
from batchd.logs import formatter

if TYPE_CHECKING:
    from batchd.store.records import BatchRecord

__all__ = ["default_errors_path", "default_state_dir", "run"]

INTERRUPTED = 130
# An offline run is not bound by OpenAI's per-batch limits (50,000 requests, 200 MB): these
# apply unless the configuration sets its own. Memory grows by about 100 bytes per request
# during validation (the custom_id set) and 13 bytes per request while the batch runs.
RUN_LIMITS = {
    "max_requests_per_batch": 1_000_000,
    "max_batch_file_bytes": 10 * 1024**3,
    "max_upload_bytes": 10 * 1024**3,
}


def run_settings(
    config: Path | None, state_dir: Path, log_level: str, **overrides: Any
) -> Settings:
    """The settings of a run: the configuration's (and ``overrides``'), on ``state_dir``, with
    :data:`RUN_LIMITS` where it sets none."""
    settings = Settings.load(config, data_dir=state_dir, log_level=log_level, **overrides)
    limits = {k: v for k, v in RUN_LIMITS.items() if k not in settings.model_fields_set}
    return settings.model_copy(update=limits)


_POLL = 0.1  # seconds between two looks at the batch (a store read): how late the end is seen


def default_errors_path(output: Path) -> Path:
    """``out.jsonl`` → ``out.errors.jsonl``."""
    return output.with_name(f"{output.stem}.errors{output.suffix or '.jsonl'}")


def default_cache_db() -> Path:
    """The result cache of ``batchd run --cache``: in the per-user cache directory, e.g.
    ``~/.cache/batchd/results.sqlite3`` on Linux."""
    return Path(platformdirs.user_cache_dir("batchd", appauthor=False)) / "results.sqlite3"


def with_cache(settings: Settings, database: Path) -> Settings:
    """``settings`` with ``cache = true`` on every route, the answers kept in ``database`` (an
    SQLite file, made with its directory when missing)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    models = tuple(route.model_copy(update={"cache": True}) for route in settings.models)
    url = f"sqlite:///{database.resolve()}"
    return settings.model_copy(update={"models": models, "cache_database_url": url})


def default_state_dir(output: Path) -> Path:
    """``dir/out.jsonl`` → ``dir/.out.jsonl.batchd``."""
    return output.with_name(f".{output.name}.batchd")


def _log_to(state_dir: Path, level: str, log_format: str = "text") -> None:
    """batchd's log goes to ``<state_dir>/batchd.log``; warnings and errors also to stderr."""
    state_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(level)
    fmt = formatter(log_format)
    to_file = logging.FileHandler(state_dir / "batchd.log")
    to_file.setFormatter(fmt)
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    to_stderr.setFormatter(fmt)
    root.handlers[:] = [to_file, to_stderr]


def _snapshot(batch: BatchRecord) -> Snapshot:
    tokens = (batch.usage or {}).get("total_tokens", 0)
    return Snapshot(
        batch.status,
        batch.total,
        batch.completed,
        batch.failed,
        tokens if isinstance(tokens, int) else 0,
    )


def _check_jsonl(input_path: Path) -> None:
    """A file that is not JSONL at all (a CSV table, ...) is said at once, whatever --endpoint
    says: before a state directory is made or the file is copied into it."""
    from batchd.validation import first_line_not_jsonl

    try:
        with input_path.open("rb") as fh:
            problem = first_line_not_jsonl(fh)
    except OSError as exc:
        fail(f"{input_path}: {exc.strerror or exc}")
    if problem is not None:
        fail(f"{input_path}: {problem}")


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _report_validation(batch: BatchRecord, input_path: Path) -> None:
    errors = batch.errors or []
    _say(f"batchd: {input_path} failed validation ({len(errors)} errors); nothing was sent:")
    for error in errors:
        where = f"line {error['line']}: " if error.get("line") else ""
        _say(f"  {where}{error.get('message', '')} ({error.get('code', 'invalid')})")


async def _execute(
    settings: Settings,
    input_path: Path,
    output: Path,
    errors: Path,
    endpoint: str | None,
    interval: float,
    keep_state: bool,
) -> int:
    # The engine is imported here: the other commands do not pay for it.

    # The engine is imported here: the other commands do not pay for it.
    from batchd.localrun import LocalRun
    from batchd.providers import build_providers
    from batchd.runtime import open_services

    providers = build_providers(settings, os.environ)
    async with open_services(settings, providers) as services:
        local = LocalRun(services, input_path, endpoint)
        started, resumed = await local.start()
        if resumed:
            _say(
                f"batchd: resuming {started.id} ({started.completed + started.failed:,} of "
                f"{started.total:,} requests have results; they are not sent again)"
            )
        batch = started
        with ProgressDisplay(input_path.name, interval=interval) as display:
            async for batch in local.watch(started.id, interval=_POLL):
                display.update(_snapshot(batch))
        if batch.status == "failed":
            _report_validation(batch, input_path)
            return 1
        # the state directory is removed next unless kept: its files may be linked, not copied
        outcome = await local.export(batch, output, errors, link=not keep_state)
        cache = services.metrics.cache
    done = f"{batch.completed:,} succeeded, {batch.failed:,} failed"
    _say(f"batchd: {batch.id} {batch.status}: {done}")
    if cache:
        hits = sum(count for (_, result), count in cache.items() if result == "hit")
        asked = sum(cache.values())
        _say(f"  cache: {hits:,} of {asked:,} cacheable requests answered from earlier answers")
    if outcome.output is not None:
        _say(f"  output: {outcome.output}")
    if outcome.errors is not None:
        _say(f"  errors: {outcome.errors}")
    return 0 if batch.status == "completed" else 1


def run(
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="The batch input file: one request per line, as for OpenAI's Batch API, e.g. "
            "batch.jsonl (see `batchd prepare` to make one from a table).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Where the output file goes (the successful responses, one line per request), "
            "e.g. -o results.jsonl.",
            dir_okay=False,
        ),
    ],
    errors: Annotated[
        Path | None,
        typer.Option(
            help="Where the error file goes (the failed requests, with their error codes), "
            "e.g. --errors failed.jsonl. Default: OUTPUT with .errors before its suffix "
            "(results.errors.jsonl). Written only when a request failed.",
            dir_okay=False,
        ),
    ] = None,
    config: ConfigOption = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory for the run's state (the journal of results, the stored input), "
            "e.g. --state-dir ./run-state. Default: .OUTPUT.batchd beside OUTPUT. Kept when "
            "the run is interrupted, so the same command continues it; removed at the end.",
            file_okay=False,
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="The endpoint of every request, e.g. --endpoint /v1/embeddings. Default: the "
            "url of the first line.",
        ),
    ] = None,
    model: ModelOption = None,
    upstream: UpstreamOption = None,
    upstream_model: UpstreamModelOption = None,
    keep_state: Annotated[
        bool,
        typer.Option(help="Keep the state directory after the run ends (for a look at its log)."),
    ] = False,
    progress_interval: Annotated[
        float,
        typer.Option(
            help="Seconds between progress lines when stderr is not a terminal, e.g. "
            "--progress-interval 60. (On a terminal a live bar is drawn instead.)",
            min=0.1,
        ),
    ] = 10.0,
    log_level: Annotated[
        str,
        typer.Option(help="Level of the run's log (STATE_DIR/batchd.log), e.g. --log-level debug."),
    ] = "info",
    log_format: LogFormatOption = None,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache",
            help="Reuse earlier answers: a request answered before by the same model "
            "(embeddings, or a generation with temperature 0), in this run or an earlier one, "
            "is not sent again, e.g. when a batch runs again after a fix of a few lines. The "
            "answers are kept 7 days in --cache-db.",
        ),
    ] = False,
    cache_db: Annotated[
        Path | None,
        typer.Option(
            help="The file that keeps the answers for --cache (implies it), e.g. --cache-db "
            "./answers.sqlite3. Default: batchd's cache directory (~/.cache/batchd/"
            "results.sqlite3 on Linux).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Run a batch file to its end with no server, e.g.
    `batchd run batch.jsonl -o results.jsonl --config batchd.toml`.

    The same engine, models, validation and output format as `batchd serve`. Interrupted
    (Ctrl-C, a crash, kill -9) and started again with the same arguments, it continues where it
    stopped: a request that already has a result is not sent again. Exit status: 0 when the
    batch completed (failed requests are in the error file), 1 when the file failed validation
    (its errors are printed with their line numbers), 2 for a usage or configuration error
    (an INPUT that is not JSONL at all, such as a CSV table, is one: nothing is stored), 130
    when interrupted.
    """
    _check_jsonl(input_path)
    output = output.resolve()
    errors_path = (errors or default_errors_path(output)).resolve()
    state = (state_dir or default_state_dir(output)).resolve()
    overrides = route_overrides(model, upstream, upstream_model)
    try:
        settings = run_settings(config, state, log_level, log_format=log_format, **overrides)
        if cache or cache_db is not None:
            settings = with_cache(settings, cache_db or default_cache_db())
        _log_to(state, settings.log_level.upper(), settings.log_format)
        code = asyncio.run(
            _execute(
                settings,
                input_path.resolve(),
                output,
                errors_path,
                endpoint,
                progress_interval,
                keep_state,
            )
        )
    except KeyboardInterrupt:
        _say(
            f"batchd: interrupted; the results so far are kept in {state}. Run the same command "
            "again to continue."
        )
        raise typer.Exit(INTERRUPTED) from None
    except DataDirLocked:
        fail(f"another `batchd run` is using {state}; wait for it, or pass another --state-dir")
    except BatchdError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    if not keep_state:
        logging.shutdown()
        shutil.rmtree(state, ignore_errors=True)
    raise typer.Exit(code)
