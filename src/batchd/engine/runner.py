"""Running one claimed batch: dispatch, retries, the journal, and how the batch ends.

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

Ending a batch: record the intent and the file ids to publish in the store (so a crash halfway
repeats the same ending with the same ids), write one ``batch_cancelled``/``batch_expired`` entry
for every request without a result, close the journal, write the output and error files in input
order (:func:`~batchd.engine.finalize.write_results`), publish them, move the batch to its
terminal status with the counts and usage, and delete the journal.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import anyio.to_thread
import orjson

from batchd.config import Settings
from batchd.engine.finalize import CANCELLED, EXPIRED, input_lines, input_requests, write_results
from batchd.engine.journal import Journal, JournalEntry, Usage
from batchd.engine.limits import Limiters, ModelLimiter
from batchd.engine.retry import RetryStrategy
from batchd.ids import new_file_id, new_request_id
from batchd.providers.base import Provider, ProviderRequest, ProviderResult
from batchd.storage import BlobInfo, Storage
from batchd.store import BatchRecord, FileRecord, Store

__all__ = ["BatchRunner", "Engine", "entry_of"]

log = logging.getLogger("batchd.engine")

Ending = Literal["completed", "cancelled", "expired", "stopped"]
Publish = Callable[[BlobInfo, str, BatchRecord], Awaitable[FileRecord]]

_READ_CHUNK = 512  # requests read from the input file per worker-thread call
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
    providers: Mapping[str, Provider]
    limiters: Limiters
    retry: RetryStrategy
    owner: str
    """This engine's lease-owner name."""
    journal_dir: Path
    publish: Publish
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


class _InputReader:
    """The not-yet-done requests of an input file, in chunks (blocking: use in a thread)."""

    def __init__(self, fh: BinaryIO, journal: Journal, max_line_bytes: int) -> None:
        self._fh = fh
        self._lines = (
            (index, raw)
            for index, raw in input_lines(fh, max_line_bytes)
            if not journal.is_done(index)
        )

    def read(self, count: int) -> list[tuple[int, str, dict[str, Any]]]:
        chunk: list[tuple[int, str, dict[str, Any]]] = []
        for index, raw in self._lines:
            line = orjson.loads(raw)
            chunk.append((index, line["custom_id"], line["body"]))
            if len(chunk) >= count:
                break
        return chunk

    def close(self) -> None:
        self._fh.close()


class _Feed:
    """Request groups for the workers, read from the input in chunks when the queue runs dry."""

    def __init__(self, reader: _InputReader, endpoint: str, group_size: int) -> None:
        self._reader = reader
        self._endpoint = endpoint
        self._group_size = group_size
        self._queue: collections.deque[list[ProviderRequest]] = collections.deque()
        self._refill = asyncio.Lock()
        self._exhausted = False

    async def next(self) -> list[ProviderRequest] | None:
        """The next group, or ``None`` when the input has no more requests to send."""
        while not self._queue:
            if self._exhausted:
                return None
            async with self._refill:
                if self._queue or self._exhausted:
                    continue
                chunk = await anyio.to_thread.run_sync(self._reader.read, _READ_CHUNK)
                self._exhausted = not chunk
                size, endpoint = self._group_size, self._endpoint
                for start in range(0, len(chunk), size):
                    self._queue.append(
                        [
                            ProviderRequest(index, custom_id, endpoint, body)
                            for index, custom_id, body in chunk[start : start + size]
                        ]
                    )
        return self._queue.popleft()


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
        """Run the batch as far as it goes; returns how it ended."""
        batch = self.batch
        path = self.engine.journal_path(batch.id)
        journal = await Journal.open(path, batch.total, max_delay=_JOURNAL_DELAY)
        try:
            ending: Ending
            if batch.status == "finalizing":
                ending = "completed"
            elif batch.status == "cancelling":
                ending = "cancelled"
            elif batch.extra.get("ending") in ("expired", "completed"):
                ending = batch.extra["ending"]
            elif batch.status == "in_progress":
                ending = await self._execute(journal)
            else:
                return "stopped"
            if ending == "stopped":
                return ending
            return await self._end(journal, ending)
        finally:
            await journal.close()

    async def _execute(self, journal: Journal) -> Ending:
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
                ending: Ending = "completed"
            else:
                if self._cancel.is_set():
                    ending = "cancelled"
                elif self._stop.is_set():
                    ending = "stopped"
                else:
                    ending = "expired"
                grace = self.engine.settings.cancel_grace_seconds
                await self._drain(dispatcher, _SHUTDOWN_GRACE if ending == "stopped" else grace)
            return ending
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
        provider = engine.providers.get(batch.model)
        limiter = engine.limiters.get(batch.model)
        storage, max_line = engine.storage, engine.settings.max_request_bytes
        fh = await anyio.to_thread.run_sync(storage.open_binary, batch.input_file_id)
        reader = _InputReader(fh, journal, max_line)
        try:
            if provider is None or limiter is None:
                await self._unroutable(journal, fh)
                return
            feed = _Feed(reader, batch.endpoint, max(1, limiter.limits.group_size))
            try:
                async with asyncio.TaskGroup() as workers:
                    for _ in range(limiter.limits.max_concurrency):
                        workers.create_task(self._work(journal, provider, limiter, feed))
            except BaseExceptionGroup as group:  # a worker failed: its error says why
                raise group.exceptions[0] from None
        finally:
            await anyio.to_thread.run_sync(reader.close)

    async def _work(
        self, journal: Journal, provider: Provider, limiter: ModelLimiter, feed: _Feed
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

    async def _unroutable(self, journal: Journal, fh: BinaryIO) -> None:
        message = (
            f"The model '{self.batch.model}' is no longer in batchd's routing table; add it to "
            "[[models]] in the config file and create the batch again."
        )
        max_line = self.engine.settings.max_request_bytes
        await journal.append_unexecuted(input_requests(fh, max_line), ("model_not_found", message))

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
                await self._record_progress(journal)
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

    async def _end(self, journal: Journal, ending: Ending) -> Ending:
        """Record the intent, fill in unexecuted requests, write and publish files, finish."""
        batch = await self._record_ending(ending)
        if batch is None:
            return "stopped"  # the batch changed under us (e.g. cancelled meanwhile): re-claimed
        ending = "cancelled" if batch.status == "cancelling" else batch.extra["ending"]
        reason = {"cancelled": CANCELLED, "expired": EXPIRED}.get(ending)
        if reason is not None and not journal.finished:
            storage, max_line = self.engine.storage, self.engine.settings.max_request_bytes
            fh = await anyio.to_thread.run_sync(storage.open_binary, batch.input_file_id)
            try:
                filled = await journal.append_unexecuted(input_requests(fh, max_line), reason)
            finally:
                await anyio.to_thread.run_sync(fh.close)
            log.info("batch %s: %d requests recorded as %s", batch.id, filled, reason[0])
        await journal.close()
        output_id, error_id = batch.extra["files"]
        output, errors = await anyio.to_thread.run_sync(
            self._write_files, journal, batch.total, output_id, error_id
        )
        output_file = await self._publish(output, f"{batch.id}_output.jsonl")
        error_file = await self._publish(errors, f"{batch.id}_error.jsonl")
        now = int(self.engine.clock())
        counts = journal.counts
        changes: dict[str, Any] = {
            "status": ending,
            f"{ending}_at": now,
            "output_file_id": output_file,
            "error_file_id": error_file,
            "completed": counts.completed,
            "failed": counts.failed,
            "usage": journal.usage.to_json(),
        }
        updated = await self.engine.store.transition(batch.id, [batch.status], **changes)
        if updated is None:
            return "stopped"
        await anyio.to_thread.run_sync(_unlink, journal.path)
        log.info(
            "batch %s: %s (%d ok, %d failed)", batch.id, ending, counts.completed, counts.failed
        )
        return ending

    async def _record_ending(self, ending: Ending) -> BatchRecord | None:
        """Store the ending and the ids of the files to publish, once; the batch after that."""
        store = self.engine.store
        batch = await store.get_batch(self.batch.id)
        if batch is None:
            return None
        if "ending" in batch.extra and batch.status in ("in_progress", "finalizing", "cancelling"):
            return batch
        if batch.status == "cancelling":
            ending = "cancelled"
        extra = {**batch.extra, "ending": ending, "files": [new_file_id(), new_file_id()]}
        if ending == "completed":
            now = int(self.engine.clock())
            updated = await store.transition(
                batch.id, ["in_progress"], status="finalizing", finalizing_at=now, extra=extra
            )
            if updated is not None:
                log.info("batch %s: finalizing (writing the output and error files)", batch.id)
            return updated
        return await store.transition(batch.id, [batch.status], extra=extra)

    def _write_files(
        self, journal: Journal, total: int, output_id: str, error_id: str
    ) -> tuple[BlobInfo | None, BlobInfo | None]:
        storage = self.engine.storage
        output, errors = storage.writer(), storage.writer()
        try:
            written, failed = write_results(journal.path, total, output, errors, journal.results)
            output_blob = output.commit_sync(output_id) if written else None
            error_blob = errors.commit_sync(error_id) if failed else None
        finally:
            for writer in (output, errors):
                with contextlib.suppress(Exception):
                    writer.abort_sync()
        return output_blob, error_blob

    async def _publish(self, blob: BlobInfo | None, filename: str) -> str | None:
        if blob is None:
            return None
        existing = await self.engine.store.get_file(blob.key, now=int(self.engine.clock()))
        if existing is None:
            await self.engine.publish(blob, filename, self.batch)
        return blob.key


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
