"""``batchd db upgrade``: bring the metadata store to the newest migration, explicitly.

Every process that opens the store migrates it anyway (on PostgreSQL one at a time, under an
advisory lock); this command does it ahead of a deployment, e.g. before the API and worker
processes of a scaled-out installation start, and says which revision the database is at.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from batchd.cli.common import ConfigOption, fail
from batchd.config import Settings
from batchd.errors import BatchdError

__all__ = ["db"]

db = typer.Typer(
    name="db",
    help="The metadata store, e.g. `batchd db upgrade` before starting several processes.",
    no_args_is_help=True,
)


async def _upgrade(url: str) -> tuple[str, str | None]:
    from batchd.store import SQLStore

    store = SQLStore(url)
    try:
        await store.open()
        return store.safe_url, await store.schema_revision()
    finally:
        await store.close()


@db.command()
def upgrade(
    config: ConfigOption = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="The data directory whose SQLite store to upgrade when no database_url is set, "
            "e.g. --data-dir ./batchd-data. Default: as for `batchd serve`.",
            file_okay=False,
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="The store to upgrade, e.g. --database-url postgresql://batchd@db/batchd. "
            "Default: BATCHD_DATABASE_URL, the config file's database_url, or the data "
            "directory's SQLite file.",
        ),
    ] = None,
) -> None:
    """Apply every migration the store lacks, e.g. `batchd db upgrade --database-url
    postgresql://batchd@db/batchd`; prints the store and its revision. Safe to run while other
    batchd processes start or run on the same store."""
    try:
        settings = Settings.load(config, data_dir=data_dir, database_url=database_url)
        if settings.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        where, revision = asyncio.run(_upgrade(settings.resolved_database_url))
    except BatchdError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot use the data directory: {exc.strerror or exc}")
    typer.echo(f"{where}: at revision {revision}")
