"""``batchd serve``: the Files and Batches API over HTTP (:mod:`batchd.api`, imported when the
command runs)."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from batchd.cli.common import ConfigOption
from batchd.config import Settings
from batchd.errors import BatchdError, ConfigError

__all__ = ["serve"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _check_exposure(settings: Settings) -> None:
    """Refuse a non-loopback address without API keys, unless ``insecure``."""
    if settings.insecure or _is_loopback(settings.host) or settings.api_keys:
        return
    import asyncio

    from batchd.store import SQLStore

    async def stored_keys() -> bool:
        store = SQLStore(settings.resolved_database_url)
        await store.open()
        try:
            return await store.has_api_keys()
        finally:
            await store.close()

    if not asyncio.run(stored_keys()):
        raise ConfigError(
            f"refusing to serve on {settings.host} with no API keys: anyone who can reach it "
            "could read and run every batch. Create a key (`batchd keys create --project NAME`) "
            "or add [[api_keys]] to the config file; or bind to 127.0.0.1; or pass --insecure "
            "if something in front of batchd authenticates."
        )


def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Address to bind, e.g. --host 0.0.0.0. Default 127.0.0.1; BATCHD_HOST."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port to listen on, e.g. --port 9000. Default 8080; BATCHD_PORT."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory for the database and file contents, e.g. --data-dir ./batchd-data. "
            "Default: the user data directory (~/.local/share/batchd on Linux); BATCHD_DATA_DIR.",
            file_okay=False,
        ),
    ] = None,
    config: ConfigOption = None,
    log_level: Annotated[
        str | None,
        typer.Option(help="debug, info, warning or error. Default info; BATCHD_LOG_LEVEL."),
    ] = None,
    insecure: Annotated[
        bool | None,
        typer.Option(
            "--insecure",
            help="Allow a non-loopback --host with no API keys, e.g. behind a gateway that "
            "authenticates: anyone who reaches the port can use every file and batch. "
            "BATCHD_INSECURE.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the Files and Batches API, e.g. `batchd serve --port 8080 --data-dir ./data`.

    Point the OpenAI SDK at it with OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="-").
    """
    import uvicorn

    from batchd.api import create_app
    from batchd.lock import DataDirLock

    try:
        settings = Settings.load(
            config,
            host=host,
            port=port,
            data_dir=data_dir,
            log_level=log_level,
            insecure=insecure or None,
        )
        level = settings.log_level.upper()
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
        lock = DataDirLock(settings.data_dir)
        lock.acquire()
        try:
            _check_exposure(settings)
        except BaseException:
            lock.release()
            raise
    except BatchdError as exc:
        typer.echo(f"batchd: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(
            f"batchd: cannot use the data directory {settings.data_dir}: {exc.strerror}. "
            "Pick a writable one with --data-dir or BATCHD_DATA_DIR.",
            err=True,
        )
        raise typer.Exit(2) from None
    try:
        try:
            application = create_app(settings, lock=lock, env=os.environ)
        except BatchdError as exc:
            typer.echo(f"batchd: {exc}", err=True)
            raise typer.Exit(2) from None
        server = uvicorn.Server(
            uvicorn.Config(
                application,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level.lower(),
                access_log=False,
                timeout_graceful_shutdown=10,
                # Strict HTTP/1.1 parsing (httptools, or h11 with a bounded header size): a
                # request with both Content-Length and Transfer-Encoding, two lengths, an
                # unknown coding or folded headers is a 400, never a second request.
                h11_max_incomplete_event_size=64 * 1024,
                server_header=False,
            )
        )
        server.run()
    finally:
        lock.release()
    if not server.started:
        raise typer.Exit(1)
