"""``batchd serve``: the Files and Batches API over HTTP (:mod:`batchd.api`, imported when the
command runs)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from batchd.cli.common import (
    ConfigOption,
    LogFormatOption,
    ModelOption,
    UpstreamModelOption,
    UpstreamOption,
    route_overrides,
)
from batchd.config import Settings
from batchd.errors import BatchdError, ConfigError
from batchd.logs import configure_logging, is_loopback

__all__ = ["serve"]


def _preflight(settings: Settings) -> None:
    """Open the store (migrating it) and the storage once before the server starts, so that an
    unreachable database or bucket is one clear line rather than a startup traceback; and refuse
    a non-loopback address without API keys, unless ``insecure``."""
    import asyncio

    from batchd.storage import open_storage
    from batchd.store import SQLStore

    async def stored_keys() -> bool:
        store = SQLStore(settings.resolved_database_url)
        try:
            await store.open()
            await open_storage(settings).open()
            return await store.has_api_keys()
        finally:
            await store.close()

    keys = asyncio.run(stored_keys())
    if settings.insecure or is_loopback(settings.host) or settings.api_keys or keys:
        return
    raise ConfigError(
        f"refusing to serve on {settings.host} with no API keys: anyone who can reach it "
        "could read and run every batch. Create a key (`batchd keys create --project NAME`) "
        "or add [[api_keys]] to the config file; or bind to 127.0.0.1; or pass --insecure "
        "if something in front of batchd authenticates."
    )


def _listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to ``host`` (every address it resolves to, as uvicorn would bind them) and
    ``port``, made before anything else so that a port in use is said at once, before the
    database is migrated and the models are loaded; uvicorn listens on them. A
    :class:`ConfigError` that says what to do when they cannot be bound."""
    address = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            address or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot resolve the host {host!r} ({exc.strerror}): give an address with --host or "
            "BATCHD_HOST, e.g. --host 127.0.0.1"
        ) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, where in dict.fromkeys(infos):  # once per address
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(where)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(_bind_failure(host, port, exc)) from None
    return sockets


def _bind_failure(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another batchd, or another program): "
            "stop it, or choose another port with --port or BATCHD_PORT"
        )
    if exc.errno == errno.EACCES:
        return (
            f"no permission to listen on port {port} of {host} (ports below 1024 need "
            "privileges): choose another port with --port or BATCHD_PORT, e.g. --port 8080"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {host}: it is not an address of this machine; choose another with "
            "--host or BATCHD_HOST, e.g. --host 127.0.0.1"
        )
    return f"cannot listen on port {port} of {host}: {exc.strerror or exc}"


def _log_listening(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        name = sock.getsockname()
        where = f"[{name[0]}]" if sock.family == socket.AF_INET6 else name[0]
        logging.getLogger("batchd.serve").info(
            "listening on http://%s:%d (Press CTRL+C to quit)", where, name[1]
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
    log_format: LogFormatOption = None,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="A log line per HTTP request (client, method, path, status, latency, request "
            "id, project; never keys or bodies), e.g. --access-log on 127.0.0.1. Default: on "
            "unless --host is a loopback address; BATCHD_ACCESS_LOG.",
            show_default=False,
        ),
    ] = None,
    model: ModelOption = None,
    upstream: UpstreamOption = None,
    upstream_model: UpstreamModelOption = None,
    no_engine: Annotated[
        bool,
        typer.Option(
            "--no-engine",
            help="Serve the API only, e.g. several API processes on one PostgreSQL database "
            "(database_url) while `batchd worker` processes run the batches.",
            show_default=False,
        ),
    ] = False,
) -> None:
    """Serve the Files and Batches API, e.g. `batchd serve --port 8080 --data-dir ./data`.

    Point the OpenAI SDK at it with OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="-").
    """
    import uvicorn

    from batchd.api import create_app
    from batchd.lock import DataDirLock

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # (uvicorn logs where it listens only for sockets it binds)
                _log_listening(sockets or [])

    try:
        settings = Settings.load(
            config,
            host=host,
            port=port,
            data_dir=data_dir,
            log_level=log_level,
            log_format=log_format,
            access_log=access_log,
            insecure=insecure or None,
            **route_overrides(model, upstream, upstream_model),
        )
        configure_logging(settings.log_level, settings.log_format)
        if no_engine and not settings.shared:
            raise ConfigError(
                "--no-engine serves the API while `batchd worker` processes run the batches: "
                "they share a database, so set database_url (--config, BATCHD_DATABASE_URL, "
                "e.g. postgresql://batchd@db/batchd)"
            )
        sockets = _listen(settings.host, settings.port)
        lock = None if settings.shared else DataDirLock(settings.data_dir)
        try:
            if lock is not None:
                lock.acquire()
        except BaseException:
            _close(sockets)
            raise
        try:
            _preflight(settings)
        except BaseException:
            if lock is not None:
                lock.release()
            _close(sockets)
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
            application = create_app(settings, lock=lock, env=os.environ, engine=not no_engine)
        except BatchdError as exc:
            typer.echo(f"batchd: {exc}", err=True)
            raise typer.Exit(2) from None
        server = Server(
            uvicorn.Config(
                application,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level.lower(),
                log_config=None,  # configure_logging: uvicorn's records in batchd's format
                access_log=False,  # batchd's own (batchd.api.access), with request id, project
                timeout_graceful_shutdown=10,
                # Strict HTTP/1.1 parsing (httptools, or h11 with a bounded header size): a
                # request with both Content-Length and Transfer-Encoding, two lengths, an
                # unknown coding or folded headers is a 400, never a second request.
                h11_max_incomplete_event_size=64 * 1024,
                server_header=False,
            )
        )
        server.run(sockets=sockets)
    finally:
        _close(sockets)
        if lock is not None:
            lock.release()
    if not server.started:
        raise typer.Exit(1)


def _close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()
