"""The batch lifecycle: validation, cancellation, recovery and file purging.

All state lives in the store; the manager keeps only the tasks it runs, so a restart (or a crash)
resumes from the store: ``validating`` batches are validated again, batches cancelled while
validating finish cancelling, and the :class:`~batchd.engine.scheduler.Scheduler` claims and
runs (or resumes) everything that passed validation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import anyio.to_thread

from batchd.config import Settings
from batchd.engine.scheduler import Scheduler
from batchd.errors import Conflict, NotFound, StoreError
from batchd.providers.base import Provider
from batchd.storage import BlobInfo, Storage
from batchd.store import BatchRecord, FileRecord, Store
from batchd.validation import ValidationResult, validate_stream, validation_key

__all__ = ["ACTIVE_STATUSES", "BatchManager"]

log = logging.getLogger("batchd.engine")

ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
# Batches whose estimated tokens count against their project's enqueued-token limit.
_ENQUEUED_STATUSES = ("in_progress", "finalizing", "cancelling")
_CANCELLABLE = ("validating", "in_progress", "finalizing")
# Seconds before validation runs again after a store failure: doubled each time, up to the max.
_STORE_RETRY_FIRST, _STORE_RETRY_MAX = 0.5, 30.0


class BatchManager:
    """Runs the background work of batches. Build it, ``await start()``, ``await stop()``."""

    def __init__(
        self,
        store: Store,
        storage: Storage,
        settings: Settings,
        providers: Mapping[str, Provider] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        purge_interval: float = 60.0,
    ) -> None:
        self.scheduler = Scheduler(
            store, storage, settings, providers or {}, self.publish, clock=clock
        )
        self.store = store
        self.storage = storage
        self.settings = settings
        self.clock = clock
        self.purge_interval = purge_interval
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop_flags: dict[str, threading.Event] = {}
        self._shutdown = threading.Event()
        self._purge_wakeup = asyncio.Event()
        self._validation_slots = asyncio.Semaphore(2)
        self._quota_lock = asyncio.Lock()  # enqueued-token checks and reservations, one at a time
        #: Batch creations, one at a time: a project's batch limits are checked and the new batch
        #: stored under it, so that requests at the same moment cannot all pass the check.
        self.admission = asyncio.Lock()

    def now(self) -> int:
        return int(self.clock())

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume what a previous process left unfinished, and start the purger."""
        for batch in await self.store.batches_with_status(["validating"]):
            log.info("batch %s: resuming validation", batch.id)
            self._spawn(self._validate(batch.id), f"validate-{batch.id}")
        for batch in await self.store.batches_with_status(["cancelling"]):
            if batch.in_progress_at is None:  # cancelled while validating; others: the scheduler
                log.info("batch %s: resuming cancellation", batch.id)
                self._spawn(self._finish_cancel(batch.id), f"cancel-{batch.id}")
        await self.scheduler.start()
        self._spawn(self._purge_loop(), "purge-files")

    async def stop(self) -> None:
        """Stop background work; unfinished batches stay as they are in the store."""
        self._shutdown.set()
        await self.scheduler.stop()
        for flag in self._stop_flags.values():
            flag.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(self._guard(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s failed", name)

    # -- batches ----------------------------------------------------------------------------

    async def submit(self, batch: BatchRecord) -> None:
        """Store a new ``validating`` batch and validate it in the background."""
        await self.store.create_batch(batch)
        log.info("batch %s: created (validating %s)", batch.id, batch.input_file_id)
        self._spawn(self._validate(batch.id), f"validate-{batch.id}")

    async def cancel(self, batch_id: str) -> BatchRecord:
        """Move a batch to ``cancelling`` (or leave it ``cancelling``/``cancelled``)."""
        now = self.now()
        updated = await self.store.transition(
            batch_id, _CANCELLABLE, status="cancelling", cancelling_at=now
        )
        if updated is not None:
            log.info("batch %s: cancelling", batch_id)
            flag = self._stop_flags.get(batch_id)
            if flag is not None:
                flag.set()  # the validator stops; _validate then finishes the cancel
            elif updated.in_progress_at is not None:
                self.scheduler.cancel(batch_id)  # its runner ends it
            else:
                self._spawn(self._finish_cancel(batch_id), f"cancel-{batch_id}")
            return updated
        batch = await self.store.get_batch(batch_id)
        if batch is None:
            raise NotFound(f"No batch found with id '{batch_id}'.")
        if batch.status in ("cancelling", "cancelled"):
            return batch
        raise Conflict(f"Cannot cancel a batch with status '{batch.status}'.")

    async def _validate(self, batch_id: str) -> None:
        """Validate a batch and move it on. A failure of the metadata store (a database briefly
        unavailable) is retried with backoff until it passes or the server stops, so that no
        batch stays ``validating`` until the next restart; each step may run again."""
        delay = _STORE_RETRY_FIRST
        while True:
            try:
                await self._validate_once(batch_id)
                return
            except StoreError as exc:
                log.warning(
                    "batch %s: the metadata store failed during validation (%s); retrying in %g s",
                    batch_id,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _STORE_RETRY_MAX)

    async def _validate_once(self, batch_id: str) -> None:
        async with self._validation_slots:
            batch = await self.store.get_batch(batch_id)
            if batch is None or batch.status != "validating":
                if batch is not None and batch.status == "cancelling":
                    await self._finish_cancel(batch_id)
                return
            try:
                result = await self._run_validation(batch)
            except StoreError:
                raise  # not the input's fault: retried
            except Exception as exc:
                log.exception("batch %s: validation crashed", batch_id)
                result = ValidationResult(error_count=1)
                result.errors.append(
                    {
                        "code": "server_error",
                        "message": f"batchd could not validate the input file "
                        f"({type(exc).__name__}). Create the batch again; if it fails again, "
                        "report it with the batch id.",
                        "param": None,
                        "line": None,
                    }
                )
        if result.stopped and self._shutdown.is_set():
            return  # resumed by the next process
        async with self._quota_lock:  # the check and the reservation, together
            if result.ok:
                result = await self._check_token_quota(batch, result)
            updated = await self._end_validation(batch_id, result)
        if updated is None:  # cancelled while validating: no request was accepted
            await self._finish_cancel(batch_id)

    async def _check_token_quota(
        self, batch: BatchRecord, result: ValidationResult
    ) -> ValidationResult:
        """``result``, or a ``token_limit_exceeded`` failure when the batch's estimated tokens
        would take its project past its enqueued-token limit for the model."""
        assert result.model is not None
        limit = self.settings.limits_for(batch.project).enqueued_token_limit(result.model)
        if limit is None:
            return result
        queued = await self.store.enqueued_tokens(
            batch.project, result.model, statuses=_ENQUEUED_STATUSES
        )
        if queued + result.estimated_tokens <= limit:
            return result
        refused = ValidationResult(error_count=1)
        refused.errors.append(
            {
                "code": "token_limit_exceeded",
                "message": f"Enqueued token limit reached for {result.model} in project "
                f"'{batch.project}'. Limit: {limit:,} enqueued tokens; in progress: {queued:,}; "
                f"this batch: about {result.estimated_tokens:,}. Please try again once some "
                "in_progress batches have been completed.",
                "param": None,
                "line": None,
            }
        )
        return refused

    async def _end_validation(self, batch_id: str, result: ValidationResult) -> BatchRecord | None:
        """Move the batch on from ``validating``; ``None`` when it is no longer validating."""
        now = self.now()
        if result.stopped:
            return None
        if result.ok:
            updated = await self.store.transition(
                batch_id,
                ["validating"],
                status="in_progress",
                in_progress_at=now,
                model=result.model,
                total=result.total,
                enqueued_tokens=result.estimated_tokens,
            )
            if updated is not None:
                log.info(
                    "batch %s: in_progress (%d requests for %s)",
                    batch_id,
                    result.total,
                    result.model,
                )
                self.scheduler.wake()
        else:
            updated = await self.store.transition(
                batch_id, ["validating"], status="failed", failed_at=now, errors=result.errors
            )
            if updated is not None:
                log.info("batch %s: failed validation (%d errors)", batch_id, result.error_count)
        return updated

    async def _run_validation(self, batch: BatchRecord) -> ValidationResult:
        # Another project's file is as absent as a missing one.
        file = await self.store.get_file(batch.input_file_id, now=self.now(), project=batch.project)
        if file is None or file.purpose != "batch":
            reason = (
                f"Cannot find file {batch.input_file_id}; upload it with purpose 'batch' first."
                if file is None
                else f"File {file.id} has purpose '{file.purpose}'; a batch needs a file "
                "uploaded with purpose 'batch'."
            )
            result = ValidationResult(error_count=1)
            result.errors.append(
                {"code": "invalid_request", "message": reason, "param": "file_id", "line": None}
            )
            return result
        cached = await self.store.get_file_validation(file.id)
        if cached is not None and cached["key"] == validation_key(self.settings, batch.endpoint):
            log.info("batch %s: input validated while it was uploaded", batch.id)
            return ValidationResult.from_json(cached)
        flag = self._stop_flags.setdefault(batch.id, threading.Event())
        if self._shutdown.is_set():
            flag.set()
        settings = self.settings
        models = frozenset(route.name for route in settings.models)

        def run() -> ValidationResult:
            with self.storage.open_binary(file.id) as fh:
                return validate_stream(
                    fh,
                    endpoint=batch.endpoint,
                    models=models,
                    max_requests=settings.max_requests_per_batch,
                    max_errors=settings.max_validation_errors,
                    max_line_bytes=settings.max_request_bytes,
                    should_stop=flag.is_set,
                )

        try:
            return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        finally:
            self._stop_flags.pop(batch.id, None)

    async def _finish_cancel(self, batch_id: str) -> None:
        """End a batch cancelled before validation accepted it: no request ran, no files."""
        updated = await self.store.transition(
            batch_id, ["cancelling"], status="cancelled", cancelled_at=self.now()
        )
        if updated is not None:
            log.info("batch %s: cancelled", batch_id)

    async def publish(self, blob: BlobInfo, filename: str, batch: BatchRecord) -> FileRecord:
        """Record a blob written by the engine as a ``batch_output`` file of ``batch``'s
        project."""
        now = self.now()
        seconds = batch.output_expires_after or self.settings.output_file_expiry_seconds
        record = FileRecord(
            id=blob.key,
            bytes=blob.size,
            created_at=now,
            expires_at=now + seconds if seconds else None,
            filename=filename,
            purpose="batch_output",
            sha256=blob.sha256,
            project=batch.project,
        )
        await self.store.create_file(record)
        return record

    # -- files ------------------------------------------------------------------------------

    def purge_soon(self) -> None:
        """Ask the purger to run now (after a delete)."""
        self._purge_wakeup.set()

    async def purge_files(self) -> int:
        """Remove the blobs of deleted and expired files that no active batch still reads."""
        purged = 0
        while True:
            now = self.now()
            batch = await self.store.files_to_purge(
                now=now, active_statuses=ACTIVE_STATUSES, limit=100
            )
            for file in batch:
                await self.storage.delete(file.id)
                await self.store.mark_purged(file.id, now=now)
                purged += 1
            if len(batch) < 100:
                return purged

    async def _purge_loop(self) -> None:
        while True:
            purged = await self.purge_files()
            if purged:
                log.info("purged %d deleted or expired files", purged)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._purge_wakeup.wait(), self.purge_interval)
            self._purge_wakeup.clear()
