r"""Running one claimed batch: dispatch, retries, the journal, and how the batch ends.

A :class:`BatchRunner` takes a batch the scheduler claimed and brings it as far as it can:

``in_progress``
    Read the input file in chunks (a worker thread), skip every request the journal already has,
    and send the rest through the model's :class:`~batchd.engine.limits.ModelLimiter` (a slot per
    request group while it is sent; a worker sends its next group while the last one's results
    are made durable, so at most two groups per slot are without a durable result). Failed
    attempts are retried per the :class:`~batchd.engine.retry.RetryStrategy`, never past the
    batch's ``expires_at``. Ends
    ``completed`` when every request has a result, ``cancelled`` when asked, ``expired`` at
    ``expires_at``, or ``stopped`` (shutdown, lost lease: nothing is written, the next claim
    resumes from the journal).
``finalizing`` / ``cancelling`` / ``in_progress`` with a recorded ending
    A crash interrupted the end: finish it again from the journal.

Ending a batch: record the intent and the file ids to publish in the store (a
:class:`~batchd.core.lifecycle.BatchEnding`, so a crash halfway repeats the same ending with the
same ids), write one ``batch_cancelled``/``batch_expired`` entry for every request without a
result (their ``custom_id``\ s from the request index), close the journal, write the output and
error files in input order (:func:`~batchd.engine.finalize.write_results`), publish them
(:func:`~batchd.core.files.publish_output`), move the batch to its terminal status with the
counts and usage, and delete the journal. Every status change goes through
:mod:`batchd.core.lifecycle`.

A fault of the disk (full, read-only) or of the store stops the run without ending the batch: its
``request_counts`` stop, the log says why once a minute, and the scheduler runs it again a few
seconds later, from its journal, once a probe write to the journal's directory succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread

from batchd.config import Settings
from batchd.core import lifecycle
from batchd.core.files import publish_output
from batchd.core.lifecycle import BatchEnding, Outcome
from batchd.engine.finalize import CANCELLED, EXPIRED, write_results
from batchd.engine.inputs import Feed, InputReader, request_ids
from batchd.engine.journal import Journal, JournalEntry, JournalError, Usage
from batchd.engine.limits import Limiters, ModelLimiter
from batchd.engine.retry import RetryStrategy
from batchd.engine.throttle import Throttle
from batchd.errors import StorageFault, StoreError
from batchd.ids import new_file_id, new_request_id
from batchd.providers.base import Provider, ProviderRequest, ProviderResult
from batchd.providers.table import ModelTable
from batchd.storage import BlobInfo, Storage, storage_fault
from batchd.storage.local import probe_writable
from batchd.store import BatchRecord, Store

__all__ = ["BatchRunner", "Engine", "entry_of"]

log = logging.getLogger("batchd.engine")

Ending = Literal["completed", "cancelled", "expired", "stopped"]

# The journal's group commit waits up to this long for more results before its write and fsync.
# Workers do not wait for it (they send their next request meanwhile), so it only trades the
# number of fsyncs against how many answers a crash can lose.
_JOURNAL_DELAY = 0.005
_SHUTDOWN_GRACE = 2.0  # seconds in-flight requests get when the process stops


@dataclass(frozen=True)
class Engine:
    """What every runner of a process shares."""

    store: Store
    storage: Storage
    settings: Settings
    providers: ModelTable
    """By route name or alias."""
    limiters: Limiters
    retry: RetryStrategy
    owner: str
    """This engine's lease-owner name."""
    journal_dir: Path
    faults: Throttle
    """Disk and store faults of the runs, logged once a minute per batch."""
    clock: Callable[[], float] = time.time

    def journal_path(self, batch_id: str) -> Path:
        return self.journal_dir / f"{batch_id}.journal"


def entry_of(request: ProviderRequest, result: ProviderResult) -> JournalEntry:
    """The journal entry of a request's final result.

    An HTTP answer (2xx, or an error status with the upstream's body) is a ``response``; no
    answer (timeout, reset, an unreadable 2xx body) is an ``error`` with batchd's code.
    """
    status = result.status_code
    if result.ok or (status is not None and not 200 <= status < 300 and result.body is not None):
        assert status is not None
        request_id = result.request_id or new_request_id()
        return JournalEntry.from_response(
            request.index, request.custom_id, status, request_id, result.body
        )
    return JournalEntry.from_error(
        request.index,
        request.custom_id,
        result.error_code or "server_error",
        result.error_message or "The request failed without a response.",
    )


class BatchRunner:
    """Runs one claimed batch; build it, ``await run()``; ``request_cancel``/``request_stop``."""

    def __init__(self, engine: Engine, batch: BatchRecord) -> None:
        self.engine = engine
        self.batch = batch
        self._cancel = asyncio.Event()
        self._stop = asyncio.Event()
        self._draining = False
        self._busy = 0  # request groups in flight
        self._deadline: float | None = None  # on the monotonic clock
        self._journal: Journal | None = None  # the journal of the current run, once open

    @property
    def batch_id(self) -> str:
        return self.batch.id

    def request_cancel(self) -> None:
        """The batch was moved to ``cancelling``: stop dispatching and end it ``cancelled``."""
        self._cancel.set()

    def request_stop(self) -> None:
        """The process is stopping (or lost the lease): stop without ending the batch."""
        self._stop.set()

    # -- the run --------------------------------------------------------------------------------

    async def run(self) -> Ending:
        """Run the batch as far as it goes; returns how it ended. A fault of the disk or the
        store raises (:class:`~batchd.errors.StorageFault`, :class:`~batchd.errors.StoreError`)
        after it is logged, without ending the batch: the scheduler runs it again later."""
        subject = f"batch {self.batch.id}"
        faults = self.engine.faults
        try:
            if subject in faults:  # paused by a fault: go on only if a write works again
                await anyio.to_thread.run_sync(self._probe)
                if faults.recovered(subject):
                    log.info("batch %s: the storage works again; resuming", self.batch.id)
            ending = await self._run()
            faults.clear(subject)
            return ending
        except JournalError as exc:
            fault = exc.fault
            if fault is None:
                raise
            self._report(fault)
            raise fault from exc
        except (StorageFault, StoreError) as exc:
            self._report(exc)
            raise

    def _probe(self) -> None:
        """Raise the :class:`~batchd.errors.StorageFault` that still holds, if one does: a small
        write where the journal lives, and one to the blob storage (both thrown away)."""
        probe_writable(self.engine.journal_dir, "writing the result journal")
        self.engine.storage.probe()

    def _report(self, fault: StorageFault | StoreError) -> None:
        counts = self._journal.counts if self._journal is not None else None
        done = counts.done if counts is not None else self.batch.completed + self.batch.failed
        self.engine.faults.warning(
            f"batch {self.batch.id}",
            "batch %s: paused: %s. It resumes by itself once that is fixed; every result so far "
            "is kept (%d of %d at the last count).",
            self.batch.id,
            fault,
            done,
            self.batch.total,
        )

    async def _run(self) -> Ending:
        batch = self.batch
        path = self.engine.journal_path(batch.id)
        try:
            journal = await Journal.open(path, batch.total, max_delay=_JOURNAL_DELAY)
        except OSError as exc:
            raise storage_fault(exc, "opening the result journal") from exc
        self._journal = journal
        try:
            outcome: Outcome | None
            if batch.status == "finalizing":
                outcome = "completed"
            elif batch.status == "cancelling":
                outcome = "cancelled"
            elif batch.ending is not None:
                outcome = batch.ending.outcome
            elif batch.status == "in_progress":
                outcome = await self._execute(journal)
            else:
                outcome = None
            if outcome is None:
                return "stopped"
            return await self._end(journal, outcome)
        finally:
            await journal.close()

    async def _execute(self, journal: Journal) -> Outcome | None:
        """Send the requests until all have results, or a cancel, the deadline or a stop;
        how the batch ends (``None``: stopped, not ended)."""
        batch = self.batch
        if journal.finished:
            return "completed"
        remaining = None if batch.expires_at is None else batch.expires_at - self.engine.clock()
        if remaining is not None and remaining <= 0:
            return "expired"
        if remaining is not None:
            self._deadline = time.monotonic() + remaining
        if journal.counts.done:
            done = journal.counts.done
            log.info("batch %s: resuming, %d of %d done", batch.id, done, batch.total)
        dispatcher = asyncio.create_task(self._dispatch(journal), name=f"dispatch-{batch.id}")
        progress = asyncio.create_task(self._progress(journal), name=f"progress-{batch.id}")
        waiters: list[asyncio.Task[Any]] = [  # whichever ends first stops the dispatch
            asyncio.create_task(self._cancel.wait()),
            asyncio.create_task(self._stop.wait()),
            asyncio.create_task(asyncio.sleep(remaining if remaining is not None else 1e9)),
        ]
        try:
            await asyncio.wait([dispatcher, *waiters], return_when=asyncio.FIRST_COMPLETED)
            if dispatcher.done():
                dispatcher.result()  # a failure of the dispatcher itself propagates
                return "completed"
            outcome: Outcome | None
            if self._cancel.is_set():
                outcome = "cancelled"
            elif self._stop.is_set():
                outcome = None
            else:
                outcome = "expired"
            grace = self.engine.settings.cancel_grace_seconds
            await self._drain(dispatcher, _SHUTDOWN_GRACE if outcome is None else grace)
            return outcome
        finally:
            for task in (progress, *waiters):
                task.cancel()
            await asyncio.gather(progress, *waiters, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._record_progress(journal)

    async def _drain(self, dispatcher: asyncio.Task[None], grace: float) -> None:
        """Stop dispatching, give in-flight requests ``grace`` seconds, cancel the rest."""
        self._draining = True
        if self._busy:
            log.info(
                "batch %s: waiting up to %gs for %d in-flight requests",
                self.batch.id,
                grace,
                self._busy,
            )
        await asyncio.wait([dispatcher], timeout=grace)
        dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)

    # -- dispatch -------------------------------------------------------------------------------

    async def _dispatch(self, journal: Journal) -> None:
        """Send every request without a result: ``max_concurrency`` workers, each taking the
        next request group, holding a model slot while it runs (no task per request)."""
        batch = self.batch
        engine = self.engine
        assert batch.model is not None
        provider = engine.providers.get(batch.model)  # by name or alias
        limiter = None if provider is None else engine.limiters.get(provider.model)
        if provider is None or limiter is None:
            await self._unroutable(journal)
            return
        reader = await anyio.to_thread.run_sync(
            InputReader,
            engine.storage,
            batch.input_file_id,
            journal,
            engine.settings.max_request_bytes,
        )
        try:
            feed = Feed(reader, batch.endpoint, max(1, limiter.limits.group_size))
            try:
                async with asyncio.TaskGroup() as workers:
                    for _ in range(limiter.limits.max_concurrency):
                        workers.create_task(self._work(journal, provider, limiter, feed))
            except BaseExceptionGroup as group:  # a worker failed: its error says why
                raise group.exceptions[0] from None
        finally:
            await anyio.to_thread.run_sync(reader.close)

    async def _work(
        self, journal: Journal, provider: Provider, limiter: ModelLimiter, feed: Feed
    ) -> None:
        """Take groups and send them, one at a time. A group holds a model slot while it is sent
        (retries included); its results are then queued to the journal and the worker goes on
        to the next group while they are made durable, but waits for them before it queues
        the next results: at most one group per worker in flight and one being written."""
        writing: Awaitable[Any] | None = None
        while not self._draining:
            group = await feed.next()
            if group is None:
                break
            async with limiter.slots:  # shared by every batch of the model
                if self._draining:
                    break  # taken but not sent: it ends as batch_cancelled/expired
                self._busy += 1
                try:
                    finals = await self._run_group(provider, limiter, group)
                finally:
                    self._busy -= 1
            if writing is not None:
                await writing
            writing = self._record(journal, group, finals)
        if writing is not None:
            await writing

    @staticmethod
    def _record(
        journal: Journal, group: Sequence[ProviderRequest], finals: Sequence[ProviderResult]
    ) -> Awaitable[Any]:
        """Queue the group's final results to the journal; the awaitable is their durability."""
        if len(group) == 1:
            return journal.submit(entry_of(group[0], finals[0]))
        return asyncio.gather(
            *(journal.submit(entry_of(r, f)) for r, f in zip(group, finals, strict=True))
        )

    async def _unroutable(self, journal: Journal) -> None:
        model = self.batch.model or ""
        message = (
            f"The model '{model}' is no longer in batchd's routing table. "
            f"{self.engine.providers.hint(model)} Then create the batch again."
        )
        await journal.append_unexecuted(self._request_ids(), ("model_not_found", message))

    def _request_ids(self) -> Iterator[tuple[int, str]]:
        """``(index, custom_id)`` of every request, from the request index (read by the
        journal's writer thread)."""
        batch, engine = self.batch, self.engine
        return request_ids(
            engine.storage, batch.input_file_id, batch.total, engine.settings.max_request_bytes
        )

    async def _run_group(
        self, provider: Provider, limiter: ModelLimiter, group: Sequence[ProviderRequest]
    ) -> Sequence[ProviderResult]:
        """Send a group and retry what failed and may be retried: the final results."""
        costs = [limiter.cost(request.body) for request in group]
        results = await self._send(provider, limiter, group, sum(costs), 1)
        if len(group) == 1:  # the common case, without a task per retry
            final = results[0]
            if final.retryable and not final.ok:
                final = await self._retry(provider, limiter, group[0], final, costs[0])
            return [final]
        return await asyncio.gather(
            *(
                self._retry(provider, limiter, request, result, cost)
                for request, result, cost in zip(group, results, costs, strict=True)
            )
        )

    async def _send(
        self,
        provider: Provider,
        limiter: ModelLimiter,
        group: Sequence[ProviderRequest],
        cost: int,
        attempt: int,
    ) -> list[ProviderResult]:
        if not limiter.ready:
            await limiter.before_send(cost)
        upstream_slots = limiter.gate.slots
        if upstream_slots is None:
            results = await provider.execute(group)
        else:
            async with upstream_slots:
                results = await provider.execute(group)
        used = 0
        for result in results:
            if result.status_code == 429:
                pause = result.retry_after
                limiter.gate.pause(
                    pause if pause is not None else self.engine.retry.backoff(attempt)
                )
            if result.ok and cost:
                used += Usage.of_body(result.body).total_tokens
        if cost:
            limiter.after_response(cost, used)
        return results

    async def _retry(
        self,
        provider: Provider,
        limiter: ModelLimiter,
        request: ProviderRequest,
        result: ProviderResult,
        cost: int,
    ) -> ProviderResult:
        attempt = 1
        while not result.ok and result.retryable:
            decision = self.engine.retry.decide(attempt, result, time.monotonic(), self._deadline)
            if not decision.retry:
                break
            await asyncio.sleep(decision.delay)
            attempt += 1
            [result] = await self._send(provider, limiter, [request], cost, attempt)
        return result

    # -- progress and leases --------------------------------------------------------------------

    async def _record_progress(self, journal: Journal) -> None:
        counts = journal.counts
        await self.engine.store.record_progress(
            self.batch.id,
            owner=self.engine.owner,
            completed=counts.completed,
            failed=counts.failed,
            usage=journal.usage.to_json(),
        )

    async def _progress(self, journal: Journal) -> None:
        settings = self.engine.settings
        recorded = journal.counts.done
        logged_at, logged_done = time.monotonic(), recorded
        while True:
            await asyncio.sleep(settings.progress_interval_seconds)
            counts = journal.counts
            if counts.done != recorded:
                try:
                    await self._record_progress(journal)
                except StoreError as exc:  # the counts reach the store at the next try
                    self.engine.faults.warning(
                        f"progress {self.batch.id}",
                        "batch %s: live counts wait for the store: %s",
                        self.batch.id,
                        exc,
                    )
                else:
                    recorded = counts.done
            now = time.monotonic()
            if now - logged_at >= settings.progress_log_seconds:
                rate = (counts.done - logged_done) / (now - logged_at)
                left = counts.total - counts.done
                eta = f", ETA {left / rate:.0f}s" if rate > 0 else ""
                log.info(
                    "batch %s: %d/%d done (%d ok, %d failed), %.1f req/s%s",
                    self.batch.id,
                    counts.done,
                    counts.total,
                    counts.completed,
                    counts.failed,
                    rate,
                    eta,
                )
                logged_at, logged_done = now, counts.done

    # -- ending ---------------------------------------------------------------------------------

    async def _end(self, journal: Journal, ending: Outcome) -> Ending:
        """Record the intent, fill in unexecuted requests, write and publish files, finish."""
        batch = await self._record_ending(ending)
        if batch is None or batch.ending is None:
            return "stopped"  # the batch changed under us (e.g. cancelled meanwhile): re-claimed
        outcome: Outcome = "cancelled" if batch.status == "cancelling" else batch.ending.outcome
        reason = {"cancelled": CANCELLED, "expired": EXPIRED}.get(outcome)
        if reason is not None and not journal.finished:
            filled = await journal.append_unexecuted(self._request_ids(), reason)
            log.info("batch %s: %d requests recorded as %s", batch.id, filled, reason[0])
        await journal.close()
        output, errors = await anyio.to_thread.run_sync(
            self._write_files, journal, batch.total, batch.ending
        )
        output_file = await self._publish(output, f"{batch.id}_output.jsonl")
        error_file = await self._publish(errors, f"{batch.id}_error.jsonl")
        counts = journal.counts
        updated = await lifecycle.transition(
            self.engine.store,
            batch.id,
            outcome,
            expected={batch.status},
            at=int(self.engine.clock()),
            output_file_id=output_file,
            error_file_id=error_file,
            completed=counts.completed,
            failed=counts.failed,
            usage=journal.usage.to_json(),
        )
        if updated is None:
            return "stopped"
        await anyio.to_thread.run_sync(_unlink, journal.path)
        log.info(
            "batch %s: %s (%d ok, %d failed)", batch.id, outcome, counts.completed, counts.failed
        )
        return outcome

    async def _record_ending(self, outcome: Outcome) -> BatchRecord | None:
        """Store the ending and the ids of the files to publish, once; the batch after that."""
        store = self.engine.store
        batch = await store.get_batch(self.batch.id)
        if batch is None:
            return None
        if batch.ending is not None and batch.status in lifecycle.RUNNABLE:
            return batch
        if batch.status == "cancelling":
            outcome = "cancelled"
        ending = BatchEnding(outcome, new_file_id(), new_file_id())
        now = int(self.engine.clock())
        if outcome == "completed":
            updated = await lifecycle.transition(
                store, batch.id, "finalizing", expected={"in_progress"}, at=now, ending=ending
            )
            if updated is not None:
                log.info("batch %s: finalizing (writing the output and error files)", batch.id)
            return updated
        return await lifecycle.record_ending(
            store, batch.id, status=batch.status, ending=ending, at=now
        )

    def _write_files(
        self, journal: Journal, total: int, ending: BatchEnding
    ) -> tuple[BlobInfo | None, BlobInfo | None]:
        storage = self.engine.storage
        with contextlib.ExitStack() as writers:  # each aborted at the end: nothing once committed
            output = storage.writer()
            writers.callback(output.abort_sync)
            errors = storage.writer()
            writers.callback(errors.abort_sync)
            written, failed = write_results(journal.path, total, output, errors, journal.results)
            output_blob = output.commit_sync(ending.output_file_id) if written else None
            # Azure publishes an error file for every batch, empty when no request failed.
            empty_too = self.batch.dialect == "azure"
            error_blob = errors.commit_sync(ending.error_file_id) if failed or empty_too else None
        return output_blob, error_blob

    async def _publish(self, blob: BlobInfo | None, filename: str) -> str | None:
        if blob is None:
            return None
        settings = self.engine.settings
        await publish_output(
            self.engine.store,
            blob,
            self.batch,
            filename=filename,
            now=int(self.engine.clock()),
            default_expiry=settings.output_file_expiry_seconds,
        )
        return blob.key


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
