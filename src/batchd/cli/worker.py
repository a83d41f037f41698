"""``batchd worker`` (an engine without the HTTP API) and ``batchd workers`` (the live ones).

Scaled out, batchd runs stateless API processes (``batchd serve --no-engine``) and any number of
workers on one PostgreSQL database (``database_url``) and, across machines, one S3-compatible
bucket (``storage_url``). A worker validates batches, runs ranges of their requests and ends
them, each claimed with a fenced lease (:mod:`batchd.store.work`); SIGTERM or Ctrl+C gives every
lease back at once, a worker that dies has its work taken over after ``lease_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
from batchd.config import Settings
from batchd.errors import BatchdError, ConfigError
from batchd.logs import configure_logging

if TYPE_CHECKING:
    from batchd.runtime import Services

__all__ = ["worker", "workers"]

log = logging.getLogger("batchd")

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        help="Directory for local data when no storage_url is set, e.g. --data-dir ./data. "
        "Default: as for `batchd serve`; BATCHD_DATA_DIR.",
        file_okay=False,
    ),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        help="The shared database, e.g. --database-url postgresql://batchd@db/batchd. "
        "Default: BATCHD_DATABASE_URL or the config file's database_url.",
    ),
]


def _shared_settings(settings: Settings) -> Settings:
    if not settings.shared:
        fail(
            "a worker shares the work of a database with other processes: set database_url "
            "(--database-url, BATCHD_DATABASE_URL, e.g. postgresql://batchd@db/batchd). For one "
            "process, `batchd serve` runs the API and the engine together."
        )
    return settings


def worker(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
    log_level: Annotated[
        str | None,
        typer.Option(help="debug, info, warning or error. Default info; BATCHD_LOG_LEVEL."),
    ] = None,
    log_format: LogFormatOption = None,
    model: ModelOption = None,
    upstream: UpstreamOption = None,
    upstream_model: UpstreamModelOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve this worker's Prometheus metrics at http://HOST:PORT/metrics, e.g. "
            "--metrics-port 9464 (off by default).",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            help="The address of --metrics-port, e.g. --metrics-host 0.0.0.0 (then set "
            "metrics_token, BATCHD_METRICS_TOKEN: scrapes send 'Authorization: Bearer TOKEN').",
        ),
    ] = "127.0.0.1",
) -> None:
    """Run batches from the shared database, without the HTTP API, e.g. `batchd worker
    --database-url postgresql://batchd@db/batchd`. Run as many as you like, on any machine that
    reaches the database and the bucket; stop one with SIGTERM or Ctrl+C."""
    try:
        settings = Settings.load(
            config,
            data_dir=data_dir,
            database_url=database_url,
            log_level=log_level,
            log_format=log_format,
            **route_overrides(model, upstream, upstream_model),
        )
    except BatchdError as exc:
        fail(str(exc))
    settings = _shared_settings(settings)
    if metrics_port is not None:
        from batchd.metrics import metrics_access

        refused = metrics_access(settings.metrics_token, metrics_host, None)
        if refused is not None and refused[0] == 403:
            fail(
                f"--metrics-host {metrics_host} is not a loopback address: set metrics_token "
                "(BATCHD_METRICS_TOKEN, 16 characters at least) so that only scrapes with "
                "'Authorization: Bearer <metrics_token>' read the metrics, or use "
                "--metrics-host 127.0.0.1"
            )
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(_work(settings, metrics_host, metrics_port))
    except BatchdError as exc:
        fail(str(exc))


async def _work(settings: Settings, metrics_host: str, metrics_port: int | None) -> None:
    from batchd.providers import build_providers
    from batchd.runtime import open_services

    providers = build_providers(settings, os.environ)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_services(settings, providers) as services:
        assert services.manager is not None
        owner = services.manager.scheduler.engine.owner
        server = None
        if metrics_port is not None:
            server = await _metrics_server(services, metrics_host, metrics_port)
        log.info("batchd worker %s ready", owner)
        await stop.wait()
        if server is not None:
            server.close()
        log.info("batchd worker %s stopping: giving its work back", owner)


async def _metrics_server(services: Services, host: str, port: int) -> asyncio.Server:
    """Serve the worker's metrics (see :func:`batchd.metrics.serve_metrics`)."""
    from batchd.metrics import serve_metrics

    try:
        server = await serve_metrics(
            services.metrics,
            services.store.batch_status_counts,
            host=host,
            port=port,
            token=services.settings.metrics_token,
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot serve the metrics on {host}:{port} ({exc.strerror or exc}): choose "
            "another --metrics-port or --metrics-host"
        ) from None
    for sock in server.sockets:
        name = sock.getsockname()
        log.info("metrics at http://%s:%d/metrics", host, name[1])
    return server


async def _live(settings: Settings) -> list[tuple[str, float, float, dict[str, Any]]]:
    from batchd.store import SQLStore
    from batchd.store.work import SharedWork

    store = SQLStore(settings.resolved_database_url)
    try:
        await store.open()
        found = await SharedWork(store).live_workers(now=time.time(), ttl=settings.lease_seconds)
        return [(w.name, w.started_at, w.heartbeat_at, w.info) for w in found]
    finally:
        await store.close()


def workers(
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """List the live engines of the shared database and what each runs, e.g. `batchd workers
    --database-url postgresql://batchd@db/batchd`."""
    try:
        settings = _shared_settings(Settings.load(config, database_url=database_url))
        live = asyncio.run(_live(settings))
    except BatchdError as exc:
        fail(str(exc))
    if not live:
        typer.echo("no live workers")
        return
    now = time.time()
    for name, started, beat, info in live:
        work: dict[str, list[str]] = {
            kind: list(info.get(kind) or []) for kind in ("ranges", "ending", "validating")
        }
        counts = "  ".join(f"{kind} {len(items)}" for kind, items in work.items())
        typer.echo(f"{name}  up {now - started:.0f}s  heartbeat {now - beat:.1f}s ago  {counts}")
        for kind, items in work.items():
            for item in items:
                typer.echo(f"    {kind}: {item}")
