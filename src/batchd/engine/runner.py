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
from typing import Literal, Protocol

import anyio.to_thread

from batchd.core import lifecycle
from batchd.core.files import publish_output
from batchd.core.lifecycle import BatchEnding, Outcome
from batchd.engine.dispatch import Dispatch, Engine, ResultSink, entry_of, route_of
from batchd.engine.finalize import CANCELLED, EXPIRED, JournalResults
from batchd.engine.journal import Counts, JournalError, Usage
from batchd.engine.shared import StoredResults
from batchd.errors import StorageFault, StoreError
from batchd.ids import new_file_id
from batchd.storage import BlobInfo, BlobWriter, storage_fault
from batchd.storage.local import probe_writable
from batchd.store import BatchRecord

__all__ = ["BatchRunner", "Engine", "ResultLog", "entry_of"]

log = logging.getLogger("batchd.engine")

Ending = Literal["completed", "cancelled", "expired", "stopped"]

# How long the journal's group commit waits for more results before its write and fdatasync: not
# at all. A commit starts when the flusher is idle and what arrives meanwhile forms the next
# group; waiting 5 ms (as before issue 18) capped a route of group size 1 at ~2 groups per worker
# per 5 ms (workers wait for their last results to be durable before they queue the next), and an
# fdatasync costs ~0.2 ms on an SSD.
_JOURNAL_DELAY = 0.0


class ResultLog(ResultSink, Protocol):
    """A batch's durable results as the runner ends it: its journal (one process), or its
    result rows in the database (shared mode, :class:`batchd.engine.shared.StoredResults`)."""

    @property
    def counts(self) -> Counts: ...

    @property
    def usage(self) -> Usage: ...

    @property
    def finished(self) -> bool: ...

    async def close(self) -> None: ...

    async def write_files(self, output: BlobWriter, errors: BlobWriter) -> tuple[int, int]:
        """Write every result in request order to ``output`` (2xx) or ``errors``; the number
        of lines each got. :attr:`counts` and :attr:`usage` are exact afterwards."""
        ...

    async def discard(self) -> None:
        """Remove the results (the batch's files hold them now)."""


class BatchRunner:
    """Runs one claimed batch; build it, ``await run()``; ``request_cancel``/``request_stop``."""

    def __init__(self, engine: Engine, batch: BatchRecord) -> None:
        self.engine = engine
        self.batch = batch
        self._cancel = asyncio.Event()
        self._stop = asyncio.Event()
        self._journal: ResultLog | None = None  # the results of the current run, once open
        self._lease = (engine.owner, batch.lease_epoch)  # fences every change of the batch

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
        if self.engine.shared is None:
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

    async def _open_results(self) -> ResultLog:
        batch, shared = self.batch, self.engine.shared
        if shared is not None:
            return await StoredResults.open(self.engine, shared, batch)
        path = self.engine.journal_path(batch.id)
        try:
            return await JournalResults.open(path, batch.total, max_delay=_JOURNAL_DELAY)
        except OSError as exc:
            raise storage_fault(exc, "opening the result journal") from exc

    async def _run(self) -> Ending:
        batch = self.batch
        journal = await self._open_results()
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

    async def _execute(self, journal: ResultLog) -> Outcome | None:
        """Send the requests until all have results, or a cancel, the deadline or a stop;
        how the batch ends (``None``: stopped, not ended)."""
        batch = self.batch
        if journal.finished:
            return "completed"
        remaining = None if batch.expires_at is None else batch.expires_at - self.engine.clock()
        if remaining is not None and remaining <= 0:
            return "expired"
        if self.engine.shared is not None:
            return None  # shared mode: ranges run the requests (batchd.engine.shared)
        if journal.counts.done:
            done = journal.counts.done
            log.info("batch %s: resuming, %d of %d done", batch.id, done, batch.total)
        self._dispatch = Dispatch(self.engine, batch, journal, done=journal.counts.done)
        progress = asyncio.create_task(self._progress(journal), name=f"progress-{batch.id}")
        try:
            return await self._dispatch.execute(
                cancel=self._cancel, stop=self._stop, remaining=remaining
            )
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._record_progress(journal)

    # -- progress and leases --------------------------------------------------------------------

    async def _record_progress(self, journal: ResultLog) -> None:
        counts = journal.counts
        await self.engine.store.record_progress(
            self.batch.id,
            owner=self.engine.owner,
            completed=counts.completed,
            failed=counts.failed,
            usage=journal.usage.to_json(),
        )

    async def _progress(self, journal: ResultLog) -> None:
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

    async def _end(self, journal: ResultLog, ending: Outcome) -> Ending:
        """Record the intent, fill in unexecuted requests, write and publish files, finish."""
        batch = await self._record_ending(ending)
        if batch is None or batch.ending is None:
            return "stopped"  # the batch changed under us (e.g. cancelled meanwhile): re-claimed
        outcome: Outcome = "cancelled" if batch.status == "cancelling" else batch.ending.outcome
        reason = {"cancelled": CANCELLED, "expired": EXPIRED}.get(outcome)
        if reason is not None and not journal.finished:
            filled = await journal.append_unexecuted(
                Dispatch(self.engine, batch, journal).request_ids(), reason
            )
            log.info("batch %s: %d requests recorded as %s", batch.id, filled, reason[0])
            metrics = self.engine.metrics.requests_for(route_of(self.engine, batch), batch.project)
            metrics.add_failed(reason[0], filled)
        await journal.close()
        output, errors = await self._write_files(journal, batch.ending)
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
            unexecuted=counts.unexecuted,
            usage=journal.usage.to_json(),
            lease=self._lease,
        )
        if updated is None:
            return "stopped"
        await journal.discard()
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
                store,
                batch.id,
                "finalizing",
                expected={"in_progress"},
                at=now,
                ending=ending,
                lease=self._lease,
            )
            if updated is not None:
                log.info("batch %s: finalizing (writing the output and error files)", batch.id)
            return updated
        return await lifecycle.record_ending(
            store, batch.id, status=batch.status, ending=ending, at=now, lease=self._lease
        )

    async def _write_files(
        self, journal: ResultLog, ending: BatchEnding
    ) -> tuple[BlobInfo | None, BlobInfo | None]:
        storage = self.engine.storage
        # Each file is hashed and written by a thread of its own, while the journal's lines are
        # read and gathered (from the event loop in shared mode, else a worker thread).
        # (no hash: nothing reads an output file's)
        output = storage.writer(background=True, digest=False)
        errors = storage.writer(background=True, digest=False)
        try:  # each aborted at the end: nothing once committed
            written, failed = await journal.write_files(output, errors)
            output_blob = await output.commit(ending.output_file_id) if written else None
            # Azure publishes an error file for every batch, empty when no request failed.
            empty_too = self.batch.dialect == "azure"
            error_blob = await errors.commit(ending.error_file_id) if failed or empty_too else None
        finally:
            await output.abort()
            await errors.abort()
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
