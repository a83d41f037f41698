"""``batchd webhooks add|list|remove|deliveries|replay``: webhook endpoints and their deliveries,
in the store of a data directory (or of ``database_url``).

The commands open the store directly, as ``batchd keys`` does, so they work while servers run
on it: a running process sees a new endpoint at the next event, and a replay within a second.
Endpoints of the configuration file (``[[webhooks]]``) are listed, not removed: edit the file.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from batchd.cli.common import ConfigOption, DataDirOption, fail, load_settings
from batchd.config import PROJECT_PATTERN, Settings
from batchd.errors import BatchdError
from batchd.store import SQLStore
from batchd.store.webhooks import DeliveryRecord, EndpointRecord, EndpointRef, WebhookStore
from batchd.webhooks import guard, signing
from batchd.webhooks.settings import EVENT_TYPES

__all__ = ["webhooks"]

webhooks = typer.Typer(
    name="webhooks",
    help="Webhook endpoints of projects and their deliveries, e.g. `batchd webhooks add "
    "--project team-a https://hooks.example.com/batchd`.",
    no_args_is_help=True,
)

T = TypeVar("T")


def _settings(config: Path | None, data_dir: Path | None) -> Settings:
    settings = load_settings(config, data_dir)
    if not settings.shared:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _run(settings: Settings, work: Callable[[WebhookStore], Awaitable[T]]) -> T:
    async def run() -> T:
        store = SQLStore(settings.resolved_database_url)
        await store.open()
        try:
            return await work(WebhookStore(store))
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except BatchdError as exc:
        fail(str(exc))


def _refs(settings: Settings) -> list[EndpointRef]:
    return [
        EndpointRef(w.id, w.project, None if w.events is None else frozenset(w.events))
        for w in settings.webhooks
    ]


def _events(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    events = tuple(dict.fromkeys(e.strip() for v in values for e in v.split(",") if e.strip()))
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown or not events:
        fail(f"--events {', '.join(unknown) or '(none)'}: the events are {', '.join(EVENT_TYPES)}")
    return events


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@webhooks.command()
def add(
    url: Annotated[
        str,
        typer.Argument(help="Where to POST the events, e.g. https://hooks.example.com/batchd."),
    ],
    project: Annotated[
        str,
        typer.Option(help="The project whose batches' events are sent, e.g. --project team-a."),
    ],
    events: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these events (repeat, or separate with commas), e.g. --events "
            "batch.completed,batch.failed. Default: all of " + ", ".join(EVENT_TYPES) + ".",
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            help="The signing secret (whsec_ and base64), when the receiver already has one. "
            "Default: a new one, printed once.",
        ),
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Send a project's batch events to URL, signed as Standard Webhooks: prints the endpoint's
    id and its secret (shown only this once), e.g. `batchd webhooks add --project team-a
    https://hooks.example.com/batchd`."""
    if not re.fullmatch(PROJECT_PATTERN, project):
        fail(
            f"--project {project!r} is not a valid project name: letters, digits, '_', '.' and "
            "'-', starting with a letter or digit, at most 128"
        )
    wanted = _events(events)
    if secret is not None:
        problem = signing.secret_problem(secret)
        if problem is not None:
            fail(f"--secret: {problem}")
    settings = _settings(config, data_dir)
    target = guard.resolve_sync(url, guard.parse_networks(settings.webhook_allow_networks))
    if isinstance(target, str):
        fail(f"cannot send webhooks to {url}: {target}")
    record = EndpointRecord(
        id=f"whep_{secrets.token_hex(12)}",
        project=project,
        url=url,
        secret=secret or signing.new_secret(),
        events=wanted,
        created_at=int(time.time()),
    )
    _run(settings, lambda hooks: hooks.add_endpoint(record))
    typer.echo(f"{record.id} {record.secret}")
    typer.echo(
        f"batchd: endpoint {record.id} added for project {project!r}; verify the signatures with "
        "its secret, shown only this once (the second word above).",
        err=True,
    )


@webhooks.command("list")
def list_endpoints(
    project: Annotated[
        str | None, typer.Option(help="Only this project's endpoints, e.g. --project team-a.")
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """List the endpoints: those added with `batchd webhooks add` and those of the config file
    (never their secrets), e.g. `batchd webhooks list --project team-a`."""
    settings = _settings(config, data_dir)
    stored = _run(settings, lambda hooks: hooks.endpoints(project=project))
    rows = [(e.id, e.project, ",".join(e.events or ("all",)), "store", e.url) for e in stored]
    rows += [
        (w.id, w.project, ",".join(w.events or ("all",)), "config", w.url)
        for w in settings.webhooks
        if project is None or w.project == project
    ]
    if not rows:
        typer.echo(
            "no webhook endpoints (add one with `batchd webhooks add --project NAME URL`)",
            err=True,
        )
        return
    typer.echo(f"{'id':<30}{'project':<20}{'events':<18}{'from':<8}url")
    for endpoint_id, proj, wanted, source, url in rows:
        typer.echo(f"{endpoint_id:<30}{proj:<20}{wanted:<18}{source:<8}{url}")


@webhooks.command()
def remove(
    endpoint_id: Annotated[
        str, typer.Argument(help="The endpoint's id, as `batchd webhooks list` shows it.")
    ],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Stop sending to an endpoint; its deliveries not yet made fail, e.g. `batchd webhooks
    remove whep_0123456789abcdef01234567`."""
    settings = _settings(config, data_dir)
    if any(w.id == endpoint_id for w in settings.webhooks):
        fail(f"{endpoint_id} is a [[webhooks]] entry of the config file: remove it there")
    removed = _run(settings, lambda hooks: hooks.remove_endpoint(endpoint_id, now=time.time()))
    if removed is None:
        fail(f"no webhook endpoint {endpoint_id!r}; `batchd webhooks list` shows them")
    typer.echo(f"removed {removed.id} ({removed.url}, project {removed.project!r})", err=True)


def _last(d: DeliveryRecord) -> str:
    """The last attempt's outcome: its error (which names the HTTP status, if any), or the
    status of a delivered one."""
    if d.last_attempt_at is None:
        return "-"
    return d.last_error or f"HTTP {d.last_status}"


@webhooks.command()
def deliveries(
    batch: Annotated[
        str | None, typer.Option(help="Only this batch's deliveries, e.g. --batch batch_abc.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 50,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Show deliveries, newest first: status, attempts, the last answer or error, the next
    attempt, e.g. `batchd webhooks deliveries --batch batch_abc`."""
    settings = _settings(config, data_dir)
    found = _run(settings, lambda hooks: hooks.deliveries(batch_id=batch, limit=limit))
    if not found:
        typer.echo("no deliveries" + (f" of batch {batch}" if batch else ""), err=True)
        return
    typer.echo(
        f"{'id':<30}{'batch':<40}{'event':<17}{'endpoint':<30}{'status':<11}{'tries':<6}"
        f"{'next attempt':<21}{'delivered':<21}last"
    )
    for d in found:
        typer.echo(
            f"{d.id:<30}{d.batch_id:<40}{d.event_type:<17}{d.endpoint_id:<30}{d.status:<11}"
            f"{d.attempts:<6}{_when(d.next_attempt_at):<21}{_when(d.delivered_at):<21}{_last(d)}"
        )


@webhooks.command()
def replay(
    delivery_id: Annotated[
        str | None,
        typer.Argument(help="A delivery's id (msg_…), as `batchd webhooks deliveries` shows."),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option(
            help="Every delivery of this batch instead (to the endpoints there are now), e.g. "
            "--batch batch_abc."
        ),
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Send deliveries again, with the same webhook-id and a fresh schedule of attempts, e.g.
    `batchd webhooks replay msg_0123…` or `batchd webhooks replay --batch batch_abc`."""
    if (delivery_id is None) == (batch is None):
        fail("give a delivery id (msg_…) or --batch BATCH_ID, one of them")
    settings = _settings(config, data_dir)

    async def work(hooks: WebhookStore) -> int:
        now = time.time()
        if batch is not None:
            await hooks.fan_out_batch(batch, _refs(settings), now=now)
            return await hooks.replay(now=now, batch_id=batch)
        assert delivery_id is not None
        return await hooks.replay(now=now, delivery_ids=[delivery_id])

    count = _run(settings, work)
    if not count:
        if batch is not None:
            fail(
                f"batch {batch} has no deliveries: it has not ended, or no endpoint of its "
                "project wants its event (`batchd webhooks list`)"
            )
        fail(f"no delivery {delivery_id!r}; `batchd webhooks deliveries` shows them")
    typer.echo(f"{count} deliver{'y' if count == 1 else 'ies'} to send again", err=True)
