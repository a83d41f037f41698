"""The ``batchd`` app: every command assembled in one place. Each command turns its options into
:class:`~batchd.config.Settings` (options > ``BATCHD_*`` environment > config file > defaults)
and hands them down.

The command modules define their commands as plain functions (and ``keys`` its sub-app) and
import only :mod:`batchd.cli.common` from here; none of them imports this module. What a command
needs that is slow to import (the API, the engine, the models) it imports when it runs, so
``batchd --help`` stays quick.
"""

from __future__ import annotations

from typing import Annotated

import typer

from batchd import __version__
from batchd.cli import client, db, keys, prepare_join, run, serve, webhooks, worker

__all__ = ["app", "main"]

app = typer.Typer(
    name="batchd",
    help="batchd: a self-hosted, OpenAI-compatible Batch API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"batchd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """batchd: a self-hosted, OpenAI-compatible Batch API."""


# The commands, in the order `batchd --help` lists them (the `keys` and `db` groups come last).
for _command in (
    serve.serve,
    worker.worker,
    worker.workers,
    client.submit,
    client.wait,
    client.status,
    client.cancel,
    client.retry,
    client.ls,
    client.models,
    client.download,
    run.run,
    prepare_join.prepare,
    prepare_join.join,
):
    app.command()(_command)
app.add_typer(keys.keys)
app.add_typer(webhooks.webhooks)
app.add_typer(db.db)


def main() -> None:
    app()
