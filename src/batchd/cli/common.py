"""What the ``batchd`` commands share: the ``--config`` option and :func:`fail`. It imports no
command module (each of them imports this one; :mod:`batchd.cli.main` assembles them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

__all__ = ["ConfigOption", "fail"]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="BATCHD_CONFIG",
        help="TOML config file with settings and the [[models]] routing table, "
        "e.g. --config batchd.toml. Also BATCHD_CONFIG.",
        dir_okay=False,
    ),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with ``batchd: message`` on stderr and exit status ``code``."""
    typer.echo(f"batchd: {message}", err=True)
    raise typer.Exit(code)
