"""Batches: create (with the project's batch limits admitted in the store), get, list, cancel."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from batchd.config import Settings
from batchd.core import lifecycle
from batchd.core.priority import check_priority
from batchd.errors import BatchLimitReached, Conflict, InvalidRequest, NotFound, RateLimited
from batchd.ids import is_batch_id, new_batch_id
from batchd.protocol import BATCH_ENDPOINTS
from batchd.service.pages import Page, resolve_cursor
from batchd.service.partial import PartialReader, PartialResults, Which
from batchd.storage import Storage
from batchd.store import BatchAdmission, BatchRecord, Store
from batchd.validation import normalize_url

__all__ = [
    "COMPLETION_WINDOWS",
    "MAX_METADATA_KEY",
    "MAX_METADATA_PAIRS",
    "MAX_METADATA_VALUE",
    "BatchService",
    "EngineHooks",
    "NewBatch",
    "find_batch",
    "list_batches",
]

log = logging.getLogger("batchd")

COMPLETION_WINDOWS = ("24h",)
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


@dataclass(frozen=True, slots=True)
class NewBatch:
    """A batch to create, as any dialect asks for it."""

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    output_expires_after: int | None = None
    """Seconds the output and error files live (``None``: the server's default)."""
    deadline: bool = True
    """Whether the batch expires after its completion window (``batchd run``: no deadline)."""
    dialect: str = "openai"
    """The API asking (``openai``, ``azure`` or ``anthropic``; see :attr:`BatchRecord.dialect`)."""
    batch_id: str | None = None
    """The id to give the batch (``None``: a new ``batch_`` id)."""
    total: int = 0
    """How many requests the batch has, when known before validation counts them."""


class EngineHooks(Protocol):
    """What the service tells the engine (a :class:`~batchd.engine.BatchManager`)."""

    def batch_created(self, batch: BatchRecord) -> None:
        """A ``validating`` batch was stored: validate it."""

    def batch_cancelled(self, batch: BatchRecord) -> None:
        """A batch moved to ``cancelling``: stop its validation or its run."""

    def files_deleted(self) -> None:
        """Files were deleted: their blobs may be purged."""


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequest(
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{MAX_METADATA_PAIRS} properties, but got an object with {len(metadata)} properties "
            "instead.",
            param="metadata",
            code="object_above_max_size",
        )
    for key, item in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequest(
                f"Invalid 'metadata': key {key[:20]!r}... is longer than {MAX_METADATA_KEY} "
                "characters.",
                param="metadata",
                code="string_above_max_length",
            )
        if len(item) > MAX_METADATA_VALUE:
            raise InvalidRequest(
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length {MAX_METADATA_VALUE}, but got a string with length {len(item)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )


def _check_new(new: NewBatch) -> None:
    if normalize_url(new.endpoint) not in BATCH_ENDPOINTS:
        supported = ", ".join(f"'{e}'" for e in BATCH_ENDPOINTS)
        raise InvalidRequest(
            f"Invalid value: '{new.endpoint}'. Supported values are: {supported}.",
            param="endpoint",
            code="invalid_value",
        )
    if new.completion_window not in COMPLETION_WINDOWS:
        raise InvalidRequest(
            f"Invalid value for 'completion_window': '{new.completion_window}'. Supported values "
            "are: '24h'.",
            param="completion_window",
            code="invalid_value",
        )
    _check_metadata(new.metadata)
    problem = check_priority(new.metadata)
    if problem is not None:
        raise InvalidRequest(problem, param="metadata", code="invalid_value")


def _refusal(exc: BatchLimitReached, now: int) -> RateLimited:
    if exc.which == "max_active_batches":
        return RateLimited(
            f"Too many active batches: this project may have at most {exc.limit} batches "
            "validating or in progress at once. Wait for one to finish, or cancel one.",
            retry_after=60,
        )
    oldest = exc.oldest or now
    return RateLimited(
        f"Rate limit reached for batch creation: this project may create at most {exc.limit} "
        "batches per hour. Try again after the time in the Retry-After header.",
        retry_after=oldest + 3600 - now,
    )


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.")


async def find_batch(store: Store, scope: str | None, batch_id: str) -> BatchRecord:
    """The batch ``batch_id`` of ``scope`` (a project, or ``None``: any project), else
    :class:`NotFound`."""
    record = await store.get_batch(batch_id, project=scope) if is_batch_id(batch_id) else None
    if record is None or record.deleted_at is not None:
        raise _not_found(batch_id)
    return record


async def list_batches(
    store: Store, scope: str | None, *, after: str | None, limit: int
) -> Page[BatchRecord]:
    """The batches of ``scope`` (a project, or ``None``: every project), newest first, after the
    batch ``after`` (a cursor)."""
    after_seq = await resolve_cursor(
        after,
        kind="batch",
        well_formed=is_batch_id,
        lookup=lambda batch_id: store.batch_cursor(batch_id, project=scope),
    )
    records, has_more = await store.list_batches(after_seq=after_seq, limit=limit, project=scope)
    return Page(records, has_more)


class BatchService:
    """Every operation on batches that a dialect or the command line offers."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        engine: EngineHooks,
        *,
        clock: Callable[[], float] = time.time,
        storage: Storage | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.partials = PartialReader(store, storage, settings)
        """Partial results (``storage``: where an ended batch's files are read)."""

    def now(self) -> int:
        return int(self.clock())

    async def create(self, project: str, new: NewBatch) -> BatchRecord:
        """Store a new ``validating`` batch of ``project`` (validated in the background), or
        refuse it: 400 for a bad request, 429 when the project's batch limits are reached."""
        _check_new(new)
        now = self.now()
        record = BatchRecord(
            id=new.batch_id or new_batch_id(),
            endpoint=new.endpoint,
            input_file_id=new.input_file_id,
            completion_window=new.completion_window,
            status="validating",
            created_at=now,
            expires_at=now + self.settings.completion_window_seconds if new.deadline else None,
            metadata=new.metadata,
            output_expires_after=new.output_expires_after,
            project=project,
            dialect=new.dialect,
            total=new.total,
        )
        limits = self.settings.limits_for(project)
        admission = BatchAdmission(
            max_active=limits.max_active_batches,
            max_per_hour=limits.max_batches_per_hour,
            since=now - 3600,
        )
        try:
            await lifecycle.create(self.store, record, admission=admission)
        except BatchLimitReached as exc:
            raise _refusal(exc, now) from None
        log.info("batch %s: created (validating %s)", record.id, record.input_file_id)
        self.engine.batch_created(record)
        return record

    async def get(self, project: str, batch_id: str) -> BatchRecord:
        return await find_batch(self.store, project, batch_id)

    async def list(self, project: str, *, after: str | None, limit: int) -> Page[BatchRecord]:
        """The project's batches, newest first, after the batch ``after`` (a cursor)."""
        return await list_batches(self.store, project, after=after, limit=limit)

    async def partial(self, project: str, batch_id: str, which: Which) -> PartialResults:
        """The results of the batch durable so far (``which``: its ``output`` or ``errors``
        lines), counted and streamed from one snapshot; see :mod:`batchd.service.partial`."""
        return await self.partials.read(await self.get(project, batch_id), which)

    async def cancel(self, project: str, batch_id: str) -> BatchRecord:
        """Move the batch to ``cancelling`` (a batch already cancelling or cancelled is
        returned as it is; any other terminal one is a 409)."""
        await self.get(project, batch_id)
        updated = await lifecycle.transition(
            self.store, batch_id, "cancelling", expected=lifecycle.CANCELLABLE, at=self.now()
        )
        if updated is not None:
            log.info("batch %s: cancelling", batch_id)
            self.engine.batch_cancelled(updated)
            return updated
        batch = await self.get(project, batch_id)
        if batch.status in ("cancelling", "cancelled"):
            return batch
        raise Conflict(f"Cannot cancel a batch with status '{batch.status}'.")

    async def delete(self, project: str, batch_id: str) -> BatchRecord:
        """Delete the ended batch (hidden from then on) and its files; 400 while it runs."""
        batch = await self.get(project, batch_id)
        deleted = await self.store.delete_batch(batch_id, now=self.now(), project=project)
        if deleted is None:
            if batch.status not in lifecycle.TERMINAL:
                raise InvalidRequest(
                    f"Batch {batch_id} cannot be deleted while it is {batch.status}: only "
                    "ended batches can be; cancel it first, then delete it once it has ended."
                )
            raise _not_found(batch_id)  # deleted meanwhile
        gone = 0
        for file_id in (deleted.input_file_id, deleted.output_file_id, deleted.error_file_id):
            if file_id is not None:
                gone += (
                    await self.store.delete_file(file_id, now=self.now(), project=project)
                    is not None
                )
        if gone:
            self.engine.files_deleted()
        log.info("batch %s: deleted (and %d files)", batch_id, gone)
        return deleted
