"""The engine's background work on batches: validation, reactions to a cancel, recovery, and
file purging.

All state lives in the store; the manager keeps only the tasks it runs, so a restart (or a crash)
resumes from the store: ``validating`` batches are validated again, batches cancelled while
validating finish cancelling, and the :class:`~batchd.engine.scheduler.Scheduler` claims and
runs (or resumes) everything that passed validation. The service layer tells it of new and
cancelled batches and deleted files (it is the service's
:class:`~batchd.service.EngineHooks`); every status change goes through
:mod:`batchd.core.lifecycle`.
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
from batchd.core import lifecycle
from batchd.core.files import purge_blobs
from batchd.core.request_index import RequestIndexWriter, index_key
from batchd.engine.scheduler import Scheduler
from batchd.engine.shared_scheduler import SharedScheduler
from batchd.engine.throttle import Throttle
from batchd.errors import StorageFault, StoreError, TokenQuotaExceeded
from batchd.metrics import Metrics
from batchd.providers.base import Provider
from batchd.storage import Storage
from batchd.store import BatchRecord, SQLStore, Store
from batchd.store.work import SharedWork
from batchd.validation import (
    ValidationResult,
    max_requests_for,
    validate_stream,
    validation_key,
)

__all__ = ["BatchManager"]

log = logging.getLogger("batchd.engine")

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
        metrics: Metrics | None = None,
    ) -> None:
        self.scheduler: Scheduler
        if settings.shared and isinstance(store, SQLStore):
            shared = SharedScheduler(
                store,
                storage,
                settings,
                providers or {},
                work=SharedWork(store),
                clock=clock,
                metrics=metrics,
            )
            shared.validate = self._validate_claimed
            self.scheduler = shared
        else:
            self.scheduler = Scheduler(
                store, storage, settings, providers or {}, clock=clock, metrics=metrics
            )
        self.metrics = self.scheduler.engine.metrics
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
        self._faults = Throttle(log)  # storage and store faults: once a minute, not every retry

    def now(self) -> int:
        return int(self.clock())

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume what a previous process left unfinished, and start the purger. In shared mode
        the scheduler claims that work instead (any engine may take it)."""
        if not self.shared:
            for batch in await self.store.batches_with_status(["validating"]):
                log.info("batch %s: resuming validation", batch.id)
                self._spawn(self._validate(batch.id), f"validate-{batch.id}")
            for batch in await self.store.batches_with_status(["cancelling"]):
                if batch.in_progress_at is None:  # cancelled while validating; else: scheduler
                    log.info("batch %s: resuming cancellation", batch.id)
                    self._spawn(self._finish_cancel(batch.id), f"cancel-{batch.id}")
        cache = self.scheduler.engine.cache
        if cache is not None:
            await cache.open()
        await self.scheduler.start()
        self._spawn(self._purge_loop(), "purge-files")

    @property
    def shared(self) -> bool:
        """Whether engines share the work through the database (see :mod:`batchd.store.work`)."""
        return isinstance(self.scheduler, SharedScheduler)

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
        cache = self.scheduler.engine.cache
        if cache is not None:  # the answers of the runs just stopped are stored first
            await cache.close()

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

    # -- what the service tells the engine ----------------------------------------------------

    def batch_created(self, batch: BatchRecord) -> None:
        """Validate a new ``validating`` batch in the background (shared mode: claim it)."""
        if self.shared:
            self.scheduler.wake()
            return
        self._spawn(self._validate(batch.id), f"validate-{batch.id}")

    def batch_cancelled(self, batch: BatchRecord) -> None:
        """A batch moved to ``cancelling``: stop its validation, or tell its runner, or end it."""
        flag = self._stop_flags.get(batch.id)
        if flag is not None:
            flag.set()  # the validator stops; _validate then finishes the cancel
        elif batch.in_progress_at is not None or self.shared:
            self.scheduler.cancel(batch.id)  # its runner ends it (shared mode: any engine)
        else:
            self._spawn(self._finish_cancel(batch.id), f"cancel-{batch.id}")

    def files_deleted(self) -> None:
        """Ask the purger to run now."""
        self._purge_wakeup.set()

    # -- validation -------------------------------------------------------------------------

    async def _validate_claimed(self, batch: BatchRecord) -> None:
        """Validate a batch the shared scheduler claimed (it gives the lease back after)."""
        await self._validate(batch.id)

    async def _validate(self, batch_id: str) -> None:
        """Validate a batch and move it on. A failure of the metadata store (a database briefly
        unavailable) or of the storage (a full disk, for the request index) is retried with
        backoff until it passes or the server stops, so that no batch stays ``validating``
        until the next restart; each step may run again."""
        delay = _STORE_RETRY_FIRST
        while True:
            try:
                await self._validate_once(batch_id)
                return
            except (StoreError, StorageFault) as exc:
                self._faults.warning(
                    f"validate {batch_id}",
                    "batch %s: validation waits: %s (retrying every %g s at most)",
                    batch_id,
                    exc,
                    _STORE_RETRY_MAX,
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
            except (StoreError, StorageFault):
                raise  # not the input's fault: retried
            except Exception as exc:
                log.exception("batch %s: validation crashed", batch_id)
                result = _failure(
                    "server_error",
                    f"batchd could not validate the input file ({type(exc).__name__}). Create "
                    "the batch again; if it fails again, report it with the batch id.",
                )
        if result.stopped and self._shutdown.is_set():
            return  # resumed by the next process
        updated = await self._end_validation(batch, result)
        if updated is None:  # cancelled while validating: no request was accepted
            await self._finish_cancel(batch_id)

    async def _end_validation(
        self, batch: BatchRecord, result: ValidationResult
    ) -> BatchRecord | None:
        """Move the batch on from ``validating`` (to ``in_progress``, its estimated tokens
        reserved against the project's enqueued-token limit in the same transaction, or to
        ``failed``); ``None`` when it is no longer validating."""
        if result.stopped:
            return None
        if result.ok:
            assert result.model is not None
            limit = self.settings.limits_for(batch.project).enqueued_token_limit(result.model)
            quota = None
            if limit is not None:
                quota = lifecycle.TokenQuota(result.model, limit, result.estimated_tokens)
            try:
                updated = await lifecycle.transition(
                    self.store,
                    batch.id,
                    "in_progress",
                    expected={"validating"},
                    at=self.now(),
                    quota=quota,
                    model=result.model,
                    total=result.total,
                    enqueued_tokens=result.estimated_tokens,
                )
            except TokenQuotaExceeded as exc:
                assert limit is not None
                result = _failure(
                    "token_limit_exceeded",
                    f"Enqueued token limit reached for {result.model} in project "
                    f"'{batch.project}'. Limit: {limit:,} enqueued tokens; in progress: "
                    f"{exc.queued:,}; this batch: about {result.estimated_tokens:,}. Please try "
                    "again once some in_progress batches have been completed.",
                )
            else:
                if updated is not None:
                    log.info(
                        "batch %s: in_progress (%d requests for %s)",
                        batch.id,
                        result.total,
                        result.model,
                    )
                    self.scheduler.wake()
                return updated
        updated = await lifecycle.transition(
            self.store,
            batch.id,
            "failed",
            expected={"validating"},
            at=self.now(),
            errors=result.errors,
        )
        if updated is not None:
            log.info("batch %s: failed validation (%d errors)", batch.id, result.error_count)
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
            return _failure("invalid_request", reason, param="file_id")
        cached = await self.store.get_file_validation(file.id)
        if cached is not None and cached["key"] == validation_key(self.settings, batch.endpoint):
            log.info("batch %s: input validated while it was uploaded", batch.id)
            return ValidationResult.from_json(cached)
        flag = self._stop_flags.setdefault(batch.id, threading.Event())
        if self._shutdown.is_set():
            flag.set()
        settings, storage = self.settings, self.storage
        models = settings.model_names

        def run() -> ValidationResult:
            """Validate the stored file and write its request index beside it."""
            index_blob = storage.writer()
            try:
                index = RequestIndexWriter(index_blob)
                with storage.open_binary(file.id) as fh:
                    result = validate_stream(
                        fh,
                        endpoint=batch.endpoint,
                        models=models,
                        max_requests=max_requests_for(settings, batch.endpoint),
                        max_errors=settings.max_validation_errors,
                        max_line_bytes=settings.max_request_bytes,
                        should_stop=flag.is_set,
                        index=index,
                    )
                if result.ok:
                    index.finish()
                    index_blob.commit_sync(index_key(file.id))
                return result
            finally:
                index_blob.abort_sync()  # nothing once committed

        started = time.perf_counter()
        try:
            result = await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        finally:
            self._stop_flags.pop(batch.id, None)
        if not result.stopped:
            self.metrics.validated_file("batch", result.total, time.perf_counter() - started)
        return result

    async def _finish_cancel(self, batch_id: str) -> None:
        """End a batch cancelled before validation accepted it: no request ran, no files."""
        updated = await lifecycle.transition(
            self.store, batch_id, "cancelled", expected={"cancelling"}, at=self.now()
        )
        if updated is not None:
            log.info("batch %s: cancelled", batch_id)

    # -- files ------------------------------------------------------------------------------

    async def purge_files(self) -> int:
        """Remove the blobs of deleted and expired files that no active batch still reads."""
        purged = 0
        while True:
            now = self.now()
            due = await self.store.files_to_purge(now=now, limit=100)
            for file in due:
                await purge_blobs(self.storage, file.id)
                await self.store.mark_purged(file.id, now=now)
                purged += 1
            if len(due) < 100:
                break
        if isinstance(self.scheduler, SharedScheduler):  # rows of batches that ended in a crash
            work = self.scheduler.work
            for batch_id in await work.ended_with_rows(limit=20):
                await work.discard(batch_id)
        cache = self.scheduler.engine.cache
        if cache is not None:  # expired answers, and the least recently used over the cap
            await cache.prune()
        return purged

    async def _purge_loop(self) -> None:
        while True:
            try:
                purged = await self.purge_files()
            except (StoreError, StorageFault) as exc:
                self._faults.warning("purge", "purging deleted files waits: %s", exc)
                purged = 0
            if purged:
                log.info("purged %d deleted or expired files", purged)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._purge_wakeup.wait(), self.purge_interval)
            self._purge_wakeup.clear()


def _failure(code: str, message: str, *, param: str | None = None) -> ValidationResult:
    """A validation result that fails the batch with one error about the whole file."""
    result = ValidationResult(error_count=1)
    result.errors.append({"code": code, "message": message, "param": param, "line": None})
    return result
