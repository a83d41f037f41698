"""Anthropic's Message Batches: a second dialect over the same batches, files and engine.

A Message Batch is a batchd batch of ``/v1/messages`` lines with dialect ``anthropic`` and a
``msgbatch_`` id. Its inline ``requests`` are stream-parsed (:mod:`batchd.service.message_requests`)
into a stored input file (validated and indexed as it is written, like an upload); the engine runs
it like any batch (each line through the route's provider, or its Messages bridge); its output
and error files are read back as Anthropic's results (:mod:`batchd.service.message_results`).

What Anthropic's API says and where it comes from:

- ``processing_status``: ``in_progress`` (validating, in progress, finalizing), ``canceling``,
  ``ended`` (any terminal status);
- ``request_counts``: ``succeeded`` and ``errored`` are the batch's completed and failed requests,
  live while it runs (Anthropic's stay 0 until the end; the sum is the total either way);
  ``canceled`` and ``expired`` are its failed requests that never ran
  (:attr:`~batchd.store.BatchRecord.unexecuted`), once it has ended;
- results are kept 29 days after creation (``archived_at``); the input file lives as long.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import orjson

from batchd.config import Settings
from batchd.core import lifecycle
from batchd.errors import InvalidRequest, NotFound, PayloadTooLarge
from batchd.ids import is_batch_id, new_message_batch_id
from batchd.protocol import MESSAGES_ENDPOINT, rfc3339
from batchd.service.batches import BatchService, NewBatch
from batchd.service.files import FileService
from batchd.service.message_requests import InlineRequests
from batchd.service.message_results import ResultLines, errored_line, result_line
from batchd.service.pages import Page, resolve_cursor
from batchd.storage import BlobTooLarge
from batchd.store import BatchRecord

__all__ = [
    "ARCHIVE_SECONDS",
    "DIALECT",
    "MessageBatchService",
    "StoredRequests",
    "message_batch_object",
    "too_large",
]

log = logging.getLogger("batchd")

DIALECT = "anthropic"
#: How long a Message Batch's results are kept after it was created (Anthropic: 29 days).
ARCHIVE_SECONDS = 29 * 24 * 3600
#: The body is parsed in pieces of about this size, each in a worker thread.
_PIECE = 1024 * 1024

_STATUS = {
    "validating": "in_progress",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
    "cancelling": "canceling",
}


def _rfc3339(epoch: int | None) -> str | None:
    return None if epoch is None else rfc3339(epoch)


def _ended_at(batch: BatchRecord) -> int | None:
    return {
        "completed": batch.completed_at,
        "failed": batch.failed_at,
        "expired": batch.expired_at,
        "cancelled": batch.cancelled_at,
    }.get(batch.status)


def archived_at(batch: BatchRecord) -> int:
    """When the batch's results stop being available."""
    return batch.created_at + ARCHIVE_SECONDS


def _request_counts(batch: BatchRecord) -> dict[str, int]:
    ended = batch.status in lifecycle.TERMINAL
    if not ended:
        done = batch.completed + batch.failed
        return {
            "processing": max(batch.total - done, 0),
            "succeeded": batch.completed,
            "errored": batch.failed,
            "canceled": 0,
            "expired": 0,
        }
    if batch.status == "failed":  # refused as a whole: every request errored
        errored, unexecuted = max(batch.total - batch.completed, 0), 0
    else:
        errored, unexecuted = batch.failed - batch.unexecuted, batch.unexecuted
    return {
        "processing": 0,
        "succeeded": batch.completed,
        "errored": errored,
        "canceled": unexecuted if batch.status == "cancelled" else 0,
        "expired": unexecuted if batch.status == "expired" else 0,
    }


def message_batch_object(batch: BatchRecord, base_url: str, *, now: int) -> dict[str, Any]:
    """The batch as Anthropic's ``MessageBatch``; ``base_url`` (``http://host:port``) makes its
    absolute ``results_url``."""
    ended = batch.status in lifecycle.TERMINAL
    archived = archived_at(batch)
    results_url = None
    if ended and now < archived:
        results_url = f"{base_url.rstrip('/')}/v1/messages/batches/{batch.id}/results"
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": "ended" if ended else _STATUS.get(batch.status, "in_progress"),
        "request_counts": _request_counts(batch),
        "ended_at": _rfc3339(_ended_at(batch)),
        "created_at": _rfc3339(batch.created_at),
        "expires_at": _rfc3339(batch.expires_at),
        "archived_at": _rfc3339(archived) if now >= archived else None,
        "cancel_initiated_at": _rfc3339(batch.cancelling_at),
        "results_url": results_url,
    }


def _request_path(error: dict[str, Any]) -> str:
    """Where a validation error of the stored file lies, in the create body's terms."""
    line, param = error.get("line"), error.get("param")
    where = "requests" if line is None else f"requests.{int(line) - 1}"
    if isinstance(param, str) and param:
        if param.startswith("body."):
            param = "params." + param.removeprefix("body.")
        elif param == "body":
            param = "params"
        where = f"{where}.{param}"
    return where


@dataclass(frozen=True, slots=True)
class StoredRequests:
    """A Message Batch's requests, stored as its input file, before the batch is created."""

    file_id: str
    batch_id: str
    count: int
    digest: str | None
    """The SHA-256 of the stored lines, when asked for."""


class MessageBatchService:
    """Every operation of Anthropic's Message Batches API, over :class:`BatchService`."""

    def __init__(self, batches: BatchService, files: FileService, settings: Settings) -> None:
        self.batches = batches
        self.files = files
        self.settings = settings

    def now(self) -> int:
        return self.batches.now()

    async def create(self, project: str, body: AsyncIterator[bytes]) -> BatchRecord:
        """A new batch of the inline requests streamed in ``body`` (``{"requests": [...]}``):
        :meth:`store`, then :meth:`create_stored`."""
        return await self.create_stored(project, await self.store(project, body))

    async def store(
        self, project: str, body: AsyncIterator[bytes], *, hashed: bool = False
    ) -> StoredRequests:
        """The requests streamed in ``body``, parsed in pieces off the event loop into a
        stored, validated input file; 400 for a bad request, 404 for an unknown model, 413 past
        ``message_batch_max_bytes`` or the project's file limits. The body is read to its end
        whatever happens, so that the client gets the answer. ``hashed``: with the SHA-256 of
        the stored lines (an ``Idempotency-Key``'s digest)."""
        try:
            return await self._store_requests(project, body, hashed)
        except BaseException:
            await _drain(body, self.settings.message_batch_max_bytes)
            raise

    async def create_stored(self, project: str, stored: StoredRequests) -> BatchRecord:
        """The batch of ``stored`` (the project's batch limits apply), or its file deleted and
        the refusal raised."""
        try:
            await self._check_validation(stored.file_id)
            batch = await self.batches.create(
                project,
                NewBatch(
                    input_file_id=stored.file_id,
                    endpoint=MESSAGES_ENDPOINT,
                    output_expires_after=ARCHIVE_SECONDS,
                    dialect=DIALECT,
                    batch_id=stored.batch_id,
                    total=stored.count,
                ),
            )
        except BaseException:
            await self.discard(project, stored)
            raise
        log.info("message batch %s: %d requests in %s", batch.id, stored.count, stored.file_id)
        return batch

    async def discard(self, project: str, stored: StoredRequests) -> None:
        """Delete the input file of requests that will not be a batch."""
        await self.files.delete(project, stored.file_id)

    async def _store_requests(
        self, project: str, body: AsyncIterator[bytes], hashed: bool
    ) -> StoredRequests:
        settings = self.settings
        parser = InlineRequests(max_requests=settings.message_batch_max_requests)
        cap = await self.files.upload_cap(project)
        # A line adds about 40 bytes to its request ("method", "url", the newline).
        limit = settings.message_batch_max_bytes + 64 * settings.message_batch_max_requests
        ingest = self.files.ingest("batch", cap, limit=limit, hashed=hashed)
        batch_id = new_message_batch_id()
        checked_model = False

        def step(piece: bytes, last: bool) -> None:
            lines = parser.feed(piece)
            if last:
                lines += parser.finish()
            if lines:
                ingest.write(lines)

        try:
            received, pending = 0, bytearray()
            async for chunk in body:
                received += len(chunk)
                if received > settings.message_batch_max_bytes:
                    raise too_large(settings.message_batch_max_bytes)
                pending += chunk
                if len(pending) >= _PIECE:
                    await anyio.to_thread.run_sync(step, bytes(pending), False)
                    pending.clear()
                    if not checked_model and parser.model is not None:
                        self._check_model(parser.model)
                        checked_model = True
            await anyio.to_thread.run_sync(step, bytes(pending), True)
            if parser.model is not None and not checked_model:
                self._check_model(parser.model)
        except BlobTooLarge as exc:
            await ingest.abort()
            if cap is not None and cap.error is not None and exc.limit == cap.limit:
                raise cap.error from None
            raise too_large(settings.message_batch_max_bytes) from None
        except BaseException:
            await ingest.abort()
            raise
        record = await self.files.create(
            project,
            ingest,
            filename=f"{batch_id}_requests.jsonl",
            purpose="batch",
            expires_after=ARCHIVE_SECONDS,
            limit=limit,
        )
        digest = None if ingest.hasher is None else ingest.hasher.hexdigest()
        return StoredRequests(record.id, batch_id, parser.count, digest)

    def _check_model(self, model: str) -> None:
        """The 404 of an unknown model as soon as the first request is parsed, not after a
        body of up to 256 MB (the stored file's validation would find it too, at the end)."""
        names = self.settings.model_names
        if model not in names:
            raise NotFound(
                f"requests.0.params.model: the model '{model}' is not served here. "
                f"{names.hint(model)}",
                param="requests.0.params.model",
            )

    async def _check_validation(self, file_id: str) -> None:
        """400 with the first problem the stored file's validation found (the parser checks
        the shape; this covers the rest of batchd's batch checks)."""
        found = await self.files.store.get_file_validation(file_id)
        if found is None:
            raise InvalidRequest("The requests could not be validated; send them again.")
        errors = found.get("errors") or []
        if found.get("error_count", 0) and errors:
            first = errors[0]
            where = _request_path(first)
            if first.get("code") == "model_not_found":
                raise NotFound(f"{where}: {first.get('message')}", param=where)
            raise InvalidRequest(f"{where}: {first.get('message')}", param=where)

    async def get(self, project: str, batch_id: str) -> BatchRecord:
        """The project's Message Batch ``batch_id`` (a batch of another dialect is not one)."""
        batch = await self.batches.get(project, batch_id)
        if batch.dialect != DIALECT:
            raise NotFound(f"No message batch found with id '{batch_id}'.")
        return batch

    async def list(
        self, project: str, *, before_id: str | None, after_id: str | None, limit: int
    ) -> Page[BatchRecord]:
        """The project's Message Batches, newest first: after ``after_id`` (older), or the
        page just before ``before_id`` (newer); one of them at most (:func:`one_cursor`)."""
        store = self.batches.store

        async def cursor(value: str | None, param: str) -> int | None:
            return await resolve_cursor(
                value,
                kind="message batch",
                well_formed=is_batch_id,
                lookup=lambda batch_id: store.batch_cursor(batch_id, project=project),
                param=param,
            )

        records, has_more = await store.list_batches(
            after_seq=await cursor(after_id, "after_id"),
            before_seq=await cursor(before_id, "before_id"),
            limit=limit,
            project=project,
            dialect=DIALECT,
        )
        return Page(records, has_more)

    async def cancel(self, project: str, batch_id: str) -> BatchRecord:
        await self.get(project, batch_id)
        return await self.batches.cancel(project, batch_id)

    async def delete(self, project: str, batch_id: str) -> BatchRecord:
        await self.get(project, batch_id)
        return await self.batches.delete(project, batch_id)

    async def results(self, project: str, batch_id: str) -> AsyncIterator[bytes]:
        """The batch's results as Anthropic's JSONL, streamed: every request of the output
        file, then of the error file (or, for a batch refused as a whole, every request of its
        input as ``errored``). 400 before the batch has ended, 404 once archived."""
        batch = await self.get(project, batch_id)
        if batch.status not in lifecycle.TERMINAL:
            raise InvalidRequest(
                f"Message batch {batch_id} is still {_STATUS.get(batch.status, 'in_progress')}: "
                "its results are ready once its processing_status is 'ended'."
            )
        if self.now() >= archived_at(batch):
            raise NotFound(
                f"The results of message batch {batch_id} were archived at "
                f"{_rfc3339(archived_at(batch))} (they are kept 29 days)."
            )
        if batch.status == "failed":
            _, chunks = await self.files.content(project, batch.input_file_id)
            return _converted([chunks], _refused(_refusal(batch)))
        sources = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id is not None:
                sources.append((await self.files.content(project, file_id))[1])
        return _converted(sources)


def _refusal(batch: BatchRecord) -> str:
    errors = batch.errors or []
    message = errors[0].get("message") if errors else None
    return f"The batch was refused before any request ran: {message or 'validation failed'}"


async def _converted(
    sources: list[AsyncIterator[bytes]], convert: Callable[[bytes], bytes] = result_line
) -> AsyncIterator[bytes]:
    """Every line of ``sources`` (streamed files) converted, each chunk in a worker thread."""
    for chunks in sources:
        lines = ResultLines(convert)
        async for chunk in chunks:
            converted = await anyio.to_thread.run_sync(lines.feed, chunk)
            if converted:
                yield converted
        if tail := lines.finish():
            yield tail


def _refused(message: str) -> Callable[[bytes], bytes]:
    """An input line as an ``errored`` result with ``message``."""

    def convert(line: bytes) -> bytes:
        return errored_line(orjson.loads(line)["custom_id"], message)

    return convert


async def _drain(body: AsyncIterator[bytes], limit: int) -> None:
    """Read what is left of a refused body (up to twice ``limit``), so that the client, still
    sending, reads the error instead of a broken connection."""
    left = 2 * limit
    try:
        async for chunk in body:
            left -= len(chunk)
            if left < 0:
                return
    except Exception:
        return


def too_large(limit: int) -> PayloadTooLarge:
    """The 413 of a Message Batch over ``message_batch_max_bytes``."""
    return PayloadTooLarge(
        f"The message batch is larger than this server accepts ({limit:,} bytes; setting "
        "message_batch_max_bytes). Split the requests into several batches.",
        code="request_too_large",
    )
