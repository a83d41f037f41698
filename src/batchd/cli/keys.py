"""``batchd keys create|list|revoke``: API keys kept (hashed) in the store of a data directory.

The commands open the store directly, so they work while ``batchd serve`` runs on the same data
directory; the server sees a new or revoked key within a few seconds. Keys of the configuration
file (``[[api_keys]]``) are not listed or revoked here: edit the file.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from batchd.auth import key_digest
from batchd.cli.common import ConfigOption, DataDirOption, fail, load_settings
from batchd.config import PROJECT_PATTERN
from batchd.errors import BatchdError
from batchd.store import ApiKeyRecord, SQLStore

__all__ = ["keys"]

keys = typer.Typer(
    name="keys",
    help="Create, list and revoke API keys, e.g. `batchd keys create --project team-a`.",
    no_args_is_help=True,
)


def _store(config: Path | None, data_dir: Path | None) -> SQLStore:
    settings = load_settings(config, data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SQLStore(settings.resolved_database_url)


async def _create(store: SQLStore, record: ApiKeyRecord) -> None:
    await store.open()
    try:
        await store.create_api_key(record)
    finally:
        await store.close()


@keys.command()
def create(
    project: Annotated[
        str,
        typer.Option(
            help="The project whose files and batches the key sees, e.g. --project team-a.",
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(help="A name to recognise the key by, e.g. --name ci-nightly."),
    ] = None,
    admin: Annotated[
        bool,
        typer.Option(
            "--admin",
            help="The key also sees every project's batches, files and models in the dashboard "
            "(/dashboard); the API still answers it as a key of --project.",
        ),
    ] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Make a key for a project and print it, once: only its SHA-256 is stored, e.g.
    `batchd keys create --project team-a --name nightly`.

    Clients send it as `Authorization: Bearer <key>` (OPENAI_API_KEY for the SDK) or
    `api-key: <key>`. Once a key exists, every request needs one.
    """
    if not re.fullmatch(PROJECT_PATTERN, project):
        fail(
            f"--project {project!r} is not a valid project name: letters, digits, '_', '.' and "
            "'-', starting with a letter or digit, at most 128"
        )
    key = "bd-" + secrets.token_urlsafe(32)
    now = int(datetime.now().timestamp())
    record = ApiKeyRecord(
        sha256=key_digest(key), project=project, created_at=now, name=name, admin=admin
    )
    try:
        asyncio.run(_create(_store(config, data_dir), record))
    except BatchdError as exc:
        fail(str(exc))
    typer.echo(key)
    role = " (admin: the dashboard shows it every project)" if admin else ""
    typer.echo(
        f"batchd: key for project {project!r}{role} created; it is shown only this once.",
        err=True,
    )


async def _list(store: SQLStore) -> list[ApiKeyRecord]:
    await store.open()
    try:
        return await store.list_api_keys()
    finally:
        await store.close()


def _when(timestamp: int | None) -> str:
    return "" if timestamp is None else datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


@keys.command("list")
def list_keys(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """List the keys made with `batchd keys create` (their digests, never the keys), e.g.
    `batchd keys list --data-dir ./batchd-data`."""
    try:
        records = asyncio.run(_list(_store(config, data_dir)))
    except BatchdError as exc:
        fail(str(exc))
    if not records:
        typer.echo("no keys (make one with `batchd keys create --project NAME`)", err=True)
        return
    typer.echo(f"{'sha256':<14}{'project':<20}{'name':<20}{'admin':<7}{'created':<18}revoked")
    for r in records:
        typer.echo(
            f"{r.sha256[:12]:<14}{r.project:<20}{r.name or '':<20}{'yes' if r.admin else '':<7}"
            f"{_when(r.created_at):<18}{_when(r.revoked_at)}"
        )


async def _revoke(store: SQLStore, which: str, now: int) -> ApiKeyRecord:
    await store.open()
    try:
        records = await store.list_api_keys()
        digest = key_digest(which)
        matches = [
            r
            for r in records
            if r.sha256 == digest
            or r.name == which
            or (len(which) >= 8 and r.sha256.startswith(which.lower()))
        ]
        if not matches:
            raise BatchdError(f"no key matches {which!r}; `batchd keys list` shows them")
        if len(matches) > 1:
            raise BatchdError(
                f"{len(matches)} keys match {which!r}; give more of the sha256, or the key"
            )
        [record] = matches
        if not await store.revoke_api_key(record.sha256, now=now):
            raise BatchdError(f"the key {record.sha256[:12]} is already revoked")
        return record
    finally:
        await store.close()


@keys.command()
def revoke(
    key: Annotated[
        str,
        typer.Argument(
            help="The key itself, its name, or the start of its sha256 (8 characters or more, "
            "as `batchd keys list` shows), e.g. 3f9a1c0b77e2.",
        ),
    ],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a key: requests with it get 401 within a few seconds, e.g.
    `batchd keys revoke ci-nightly`."""
    try:
        record = asyncio.run(
            _revoke(_store(config, data_dir), key, int(datetime.now().timestamp()))
        )
    except BatchdError as exc:
        fail(str(exc))
    typer.echo(f"revoked {record.sha256[:12]} (project {record.project!r})", err=True)
