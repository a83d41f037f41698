"""What an operator watches (the dashboard): batches and files of one project or of every
project, a batch's events, its errors counted by code, and the models with their limits and
what this process has in flight.

A *scope* is a project name, or ``None`` for every project (an admin key). Objects outside the
scope are missing (404), as in the API. State changes go through :class:`BatchService`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from batchd.core.lifecycle import BatchEvent
from batchd.errors import APIError, NotFound
from batchd.ids import is_file_id
from batchd.providers import Provider
from batchd.service.batches import BatchService, find_batch, list_batches
from batchd.service.files import FileService
from batchd.service.pages import Page
from batchd.store import BatchRecord, FileRecord, Store

if TYPE_CHECKING:
    from batchd.engine import BatchManager

__all__ = ["ERROR_LINES_COUNTED", "ErrorCounts", "ModelState", "MonitorService", "error_code"]

ERROR_LINES_COUNTED = 50_000
"""The most error-file lines read to count errors by code (the count says when it stopped)."""


@dataclass(frozen=True, slots=True)
class ErrorCounts:
    """A batch's failed requests by code. ``source``: ``file`` (its error file, once it ended),
    ``partial`` (its error lines durable so far, while it runs), ``none`` (no failed request),
    ``unavailable`` (the partial read was refused for now: ``note`` says why)."""

    counts: dict[str, int] = field(default_factory=dict)
    lines: int = 0
    complete: bool = True
    """Whether every line was read (``False`` past :data:`ERROR_LINES_COUNTED`)."""
    source: str = "none"
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ModelState:
    """One route: its provider, aliases, limits and, in a process with an engine, the requests
    (request groups) it has in flight now."""

    name: str
    provider: str
    aliases: tuple[str, ...]
    max_concurrency: int
    rpm: int | None
    tpm: int | None
    group_size: int
    upstream: str | None
    in_flight: int | None
    """``None``: this process has no engine (``serve --no-engine``)."""
    share: int | None
    """This engine's part of ``max_concurrency`` (less than it when engines share a database)."""
    upstream_paused_for: float | None
    replicas: list[dict[str, object]] | None


def error_code(line: Mapping[str, Any]) -> str:
    """The code an error-file line counts under: ``error.code`` of a request without an answer
    (``request_timeout``, ``batch_cancelled``…), else the upstream's HTTP status with its error
    code or type (``HTTP 500``, ``HTTP 400 injected_fault``)."""
    error = line.get("error")
    if isinstance(error, Mapping):
        return str(error.get("code") or error.get("type") or "error")
    response = line.get("response")
    if not isinstance(response, Mapping):
        return "unknown"
    status = response.get("status_code")
    body = response.get("body")
    detail = body.get("error") if isinstance(body, Mapping) else None
    code = None
    if isinstance(detail, Mapping):
        code = detail.get("code") or detail.get("type")
    return f"HTTP {status} {code}" if code else f"HTTP {status}"


class MonitorService:
    """Read-mostly views for the dashboard over the store and the other services."""

    def __init__(
        self,
        store: Store,
        batches: BatchService,
        files: FileService,
        providers: Mapping[str, Provider],
        manager: BatchManager | None,
        *,
        aliases: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.batches = batches
        self.files = files
        self.providers = providers
        self.manager = manager
        self.aliases = aliases or {}
        self.clock = clock

    def now(self) -> int:
        return int(self.clock())

    # -- batches ----------------------------------------------------------------------------

    async def list_batches(
        self, scope: str | None, *, after: str | None, limit: int
    ) -> Page[BatchRecord]:
        """The scope's batches, newest first, after the batch ``after``."""
        return await list_batches(self.store, scope, after=after, limit=limit)

    async def batch(self, scope: str | None, batch_id: str) -> BatchRecord:
        return await find_batch(self.store, scope, batch_id)

    async def events(self, scope: str | None, batch_id: str) -> list[BatchEvent]:
        """The batch's status changes, oldest first."""
        await self.batch(scope, batch_id)
        return await self.store.events(batch_id=batch_id, limit=1000)

    async def cancel(self, scope: str | None, batch_id: str) -> BatchRecord:
        """Cancel a batch of the scope (as its own project would, through the API)."""
        record = await self.batch(scope, batch_id)
        return await self.batches.cancel(record.project, batch_id)

    async def error_counts(self, batch: BatchRecord) -> ErrorCounts:
        """The batch's failed requests by code: while it runs, from its partial error lines
        (the results durable so far); once it ended, from its error file."""
        if batch.status == "validating" or (batch.failed == 0 and batch.error_file_id is None):
            return ErrorCounts()
        try:
            partial = await self.batches.partial(batch.project, batch.id, "errors")
        except NotFound:
            return ErrorCounts()  # the error file expired or was deleted
        except APIError as exc:  # e.g. too many partial reads at once in shared mode
            return ErrorCounts(source="unavailable", note=exc.message)
        counts: dict[str, int] = {}
        lines = 0
        complete = True
        async with partial:
            rest = b""
            async for chunk in partial.chunks:
                pieces = (rest + chunk).split(b"\n")
                rest = pieces.pop()
                for piece in pieces:
                    if not piece.strip():
                        continue
                    if lines >= ERROR_LINES_COUNTED:
                        complete = False
                        break
                    lines += 1
                    key = _code_of(piece)
                    counts[key] = counts.get(key, 0) + 1
                if not complete:
                    break
            if complete and rest.strip():
                lines += 1
                key = _code_of(rest)
                counts[key] = counts.get(key, 0) + 1
        ordered = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
        return ErrorCounts(ordered, lines, complete, "file" if partial.final else "partial")

    # -- files ------------------------------------------------------------------------------

    async def list_files(self, scope: str | None, *, limit: int) -> Page[FileRecord]:
        """The scope's live files, newest first."""
        records, has_more = await self.store.list_files(
            now=self.now(), purpose=None, after_seq=None, limit=limit, order="desc", project=scope
        )
        return Page(records, has_more)

    async def file_content(
        self, scope: str | None, file_id: str
    ) -> tuple[FileRecord, AsyncIterator[bytes]]:
        record = (
            await self.store.get_file(file_id, now=self.now(), project=scope)
            if is_file_id(file_id)
            else None
        )
        if record is None:
            raise NotFound(f"No such File object: {file_id}")
        return await self.files.content(record.project, file_id)

    # -- models -----------------------------------------------------------------------------

    def models(self) -> list[ModelState]:
        """Every route, its limits and (with an engine) its in-flight requests."""
        limiters = self.manager.scheduler.engine.limiters if self.manager is not None else None
        aliases: dict[str, list[str]] = {}
        for alias, name in self.aliases.items():
            aliases.setdefault(name, []).append(alias)
        states = []
        for name, provider in sorted(self.providers.items()):
            limits = provider.limits()
            limiter = limiters.get(name) if limiters is not None else None
            describe = getattr(provider, "replica_states", None)
            replicas = describe() if callable(describe) else None
            states.append(
                ModelState(
                    name=name,
                    provider=provider.name,
                    aliases=tuple(sorted(aliases.get(name, ()))),
                    max_concurrency=limits.max_concurrency,
                    rpm=limits.rpm,
                    tpm=limits.tpm,
                    group_size=limits.group_size,
                    upstream=limits.upstream,
                    in_flight=limiter.slots.in_use if limiter is not None else None,
                    share=limiter.slots.limit if limiter is not None else None,
                    upstream_paused_for=(
                        round(limiter.gate.paused_for, 2) if limiter is not None else None
                    ),
                    replicas=replicas if replicas and len(replicas) > 1 else None,
                )
            )
        return states


def _code_of(line: bytes) -> str:
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "unreadable line"
    return error_code(parsed) if isinstance(parsed, dict) else "unreadable line"
