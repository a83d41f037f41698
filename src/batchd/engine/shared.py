"""Running batches in shared mode: ranges of requests, their result rows, and ending a batch.

With ``database_url`` set, engines share the work through the database (:mod:`batchd.store.work`):

- a :class:`RangeRunner` runs one claimed range of a batch: it sends the range's requests that
  have no result row (a :class:`~batchd.engine.dispatch.Dispatch`), and its
  :class:`RangeResults` writes their results in groups, each group in one fenced transaction
  (:meth:`~batchd.store.work.SharedWork.write_results`): durable before it counts, refused once
  another engine took the range over. The range is marked done when every request of it has a
  result; a cancel, the deadline or a stop gives it back unfinished;
- the engine that ends the batch (a :class:`~batchd.engine.runner.BatchRunner`, as in one
  process) reads the rows through :class:`StoredResults`: it waits for the ranges still held to
  drain, takes them all over (fencing off late writers), records ``batch_cancelled`` /
  ``batch_expired`` for the requests without a row, and streams the rows in request order into
  the output and error files.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import anyio.to_thread
import orjson

from batchd.core.lifecycle import TERMINAL
from batchd.engine.dispatch import Dispatch, Engine
from batchd.engine.inputs import Span
from batchd.engine.journal import Counts, JournalEntry, Usage, never_ran
from batchd.errors import StoreError
from batchd.storage import BlobWriter
from batchd.store import BatchRecord
from batchd.store.work import LeaseLost, RangeLease, ResultRow, SharedWork

__all__ = ["RangeResults", "RangeRunner", "StoredResults"]

log = logging.getLogger("batchd.engine")

_MAX_DELAY = 0.005  # seconds a result that finds the writer idle waits for others to join it
_MAX_GROUP = 512  # results written in one transaction at most
_STORE_RETRY_FIRST, _STORE_RETRY_MAX = 0.2, 5.0  # backoff of a write the database refused
_FILL_CHUNK = 1000  # requests recorded per transaction by the finalizer


def _row(entry: JournalEntry) -> ResultRow:
    return ResultRow(entry.index, entry.ok, entry.output_line(), entry.tokens)


class RangeResults:
    """The results of one claimed range, written to the database in fenced groups (the
    :class:`~batchd.engine.dispatch.ResultSink` of a :class:`RangeRunner`).

    A write the database refuses (it restarts, the network drops) is retried with backoff until
    it succeeds or the range is taken over: the callers wait meanwhile, and nothing counts until
    it is written.
    """

    def __init__(
        self,
        engine: Engine,
        work: SharedWork,
        lease: RangeLease,
        total: int,
        done: Iterable[int],
        *,
        on_status: Any = None,
    ) -> None:
        self.engine = engine
        self.work = work
        self.lease = lease
        self._total = total
        self._done = set(done)
        self._on_status = on_status
        self._queue: list[tuple[ResultRow, asyncio.Future[bool]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._error: BaseException | None = None
        self._flusher = asyncio.create_task(self._run(), name=f"results {lease.batch_id}")

    @property
    def total(self) -> int:
        return self._total

    @property
    def done(self) -> int:
        """Requests of the range with a durable result."""
        return len(self._done)

    def is_done(self, index: int) -> bool:
        return index in self._done

    def submit(self, entry: JournalEntry) -> asyncio.Future[bool]:
        if self._error is not None:
            raise self._error
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((_row(entry), future))
        self._wakeup.set()
        return future

    def submit_many(self, entries: Sequence[JournalEntry]) -> Awaitable[object]:
        return asyncio.gather(*map(self.submit, entries))

    async def append_unexecuted(
        self, requests: Iterable[tuple[int, str]], reason: tuple[str, str]
    ) -> int:
        """Record ``reason`` for the requests without a result (an unroutable model)."""
        code, message = reason
        ids = iter(requests)
        count = 0
        while chunk := await anyio.to_thread.run_sync(_take, ids, _FILL_CHUNK):
            rows = [
                _row(JournalEntry.from_error(index, custom_id, code, message))
                for index, custom_id in chunk
                if index not in self._done
            ]
            if rows:
                await self._write(rows)
                count += len(rows)
        return count

    async def close(self) -> None:
        """Write what is queued and stop (idempotent)."""
        self._closing = True
        self._wakeup.set()
        await asyncio.gather(self._flusher, return_exceptions=True)

    async def _run(self) -> None:
        """Group commit: what queued while the last write ran is written at once; a result that
        finds the flusher idle waits up to ``_MAX_DELAY`` for others to join it."""
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                if len(self._queue) < _MAX_GROUP and not self._closing:
                    await asyncio.sleep(_MAX_DELAY)  # let more results join the group
                continue
            group, self._queue = self._queue[:_MAX_GROUP], self._queue[_MAX_GROUP:]
            try:
                await self._write([row for row, _future in group])
            except BaseException as exc:
                self._error = exc
                for _, future in group + self._queue:
                    if not future.done():
                        future.set_exception(exc)
                self._queue = []
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            for _, future in group:
                if not future.done():
                    future.set_result(True)

    async def _write(self, rows: Sequence[ResultRow]) -> None:
        engine, delay = self.engine, _STORE_RETRY_FIRST
        while True:
            try:
                status = await self.work.write_results(
                    self.lease,
                    rows,
                    now=engine.clock(),
                    lease_seconds=engine.settings.lease_seconds,
                )
                break
            except StoreError as exc:
                engine.faults.warning(
                    f"results {self.lease.batch_id}",
                    "batch %s: results wait for the database: %s",
                    self.lease.batch_id,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _STORE_RETRY_MAX)
        self._done.update(row.index for row in rows)
        if self._on_status is not None:
            self._on_status(status)


def _take(ids: Iterator[tuple[int, str]], count: int) -> list[tuple[int, str]]:
    return list(itertools.islice(ids, count))


class RangeRunner:
    """Runs one claimed range of a batch; build it, ``await run()``; ``request_cancel`` /
    ``request_stop`` as for a :class:`~batchd.engine.runner.BatchRunner`."""

    def __init__(
        self, engine: Engine, work: SharedWork, batch: BatchRecord, lease: RangeLease
    ) -> None:
        self.engine = engine
        self.work = work
        self.batch = batch
        self.lease = lease
        self._cancel = asyncio.Event()
        self._stop = asyncio.Event()
        self.on_sent_all: Callable[[], None] | None = None
        """Called when every request of the range was taken for sending: the scheduler may
        claim the next range while the last answers come back."""
        self._dispatch: Dispatch | None = None

    @property
    def batch_id(self) -> str:
        return self.batch.id

    @property
    def feeding(self) -> bool:
        """Whether requests of the range are still to be sent (not only awaited)."""
        return self._dispatch is None or not self._dispatch.sent_all

    @property
    def key(self) -> str:
        return f"{self.lease.batch_id}:{self.lease.start}"

    def request_cancel(self) -> None:
        self._cancel.set()

    def request_stop(self) -> None:
        self._stop.set()

    def _status(self, status: str) -> None:
        if status == "cancelling" or status in TERMINAL:
            self._cancel.set()

    async def run(self) -> None:
        """Send the range's requests without a result; mark the range done when all have one,
        give it back otherwise. :class:`~batchd.store.work.LeaseLost` is logged, not raised."""
        lease, engine = self.lease, self.engine
        span = Span(lease.start, lease.stop, lease.index_offset)
        try:
            done = await self.work.done_indices(lease.batch_id, lease.start, lease.stop)
            if len(done) == lease.stop - lease.start:
                await self.work.release_range(lease, done=True)
                return
            batch = self.batch
            remaining = None if batch.expires_at is None else batch.expires_at - engine.clock()
            if remaining is not None and remaining <= 0:
                await self.work.release_range(lease)
                return
            sink = RangeResults(engine, self.work, lease, batch.total, done, on_status=self._status)
            renewer = asyncio.create_task(self._renew(), name=f"lease-{self.key}")
            log.debug("range %s: %d to send", self.key, lease.stop - lease.start - len(done))
            dispatch = self._dispatch = Dispatch(engine, batch, sink, span, done=len(done))
            dispatch.on_sent_all = self.on_sent_all
            try:
                outcome = await dispatch.execute(
                    cancel=self._cancel, stop=self._stop, remaining=remaining
                )
            finally:
                await sink.close()
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)
            finished = outcome == "completed" and sink.done == lease.stop - lease.start
            if await self.work.release_range(lease, done=finished) and finished:
                log.info("batch %s: requests %d-%d done", batch.id, lease.start, lease.stop - 1)
        except LeaseLost as exc:
            log.warning("%s; stopping that range", exc)

    async def _renew(self) -> None:
        """Renew the lease every third of ``lease_seconds`` (writes renew it too); stop when it
        was lost, cancel when the batch was."""
        settings, engine = self.engine.settings, self.engine
        while True:
            await asyncio.sleep(settings.lease_seconds / 3)
            try:
                status = await self.work.renew_range(
                    self.lease, now=engine.clock(), lease_seconds=settings.lease_seconds
                )
            except LeaseLost as exc:
                log.warning("%s; stopping that range", exc)
                self._stop.set()
                return
            except StoreError as exc:
                engine.faults.warning(
                    f"renew {self.key}", "batch %s: renewing a lease waits: %s", self.batch_id, exc
                )
                continue
            self._status(status)


def _never_ran(line: bytes) -> bool:
    """Whether the error line is a request recorded as cancelled or expired before it ran."""
    if b"batch_cancelled" not in line and b"batch_expired" not in line:
        return False  # most error lines: not parsed
    return never_ran(orjson.loads(line))


class StoredResults:
    """A batch's result rows as the engine that ends it sees them (shared mode): the
    :class:`~batchd.engine.runner.ResultLog` of its :class:`~batchd.engine.runner.BatchRunner`.
    Build with :meth:`open`."""

    def __init__(self, engine: Engine, work: SharedWork, batch: BatchRecord) -> None:
        self.engine = engine
        self.work = work
        self.batch = batch
        self._counts = Counts(batch.total, batch.completed, batch.failed, batch.unexecuted)
        self._usage = _usage_of(batch.usage)

    @classmethod
    async def open(cls, engine: Engine, work: SharedWork, batch: BatchRecord) -> StoredResults:
        return cls(engine, work, batch)

    @property
    def total(self) -> int:
        return self.batch.total

    @property
    def counts(self) -> Counts:
        return self._counts

    @property
    def usage(self) -> Usage:
        return self._usage

    @property
    def finished(self) -> bool:
        return self._counts.done >= self.batch.total

    def is_done(self, index: int) -> bool:  # not asked when ending a batch
        raise NotImplementedError

    def submit(self, entry: JournalEntry) -> asyncio.Future[bool]:  # not asked either
        raise NotImplementedError

    def submit_many(self, entries: Sequence[JournalEntry]) -> Awaitable[object]:  # nor this
        raise NotImplementedError

    async def close(self) -> None:
        return None

    async def _settle_ranges(self) -> None:
        """Let the engines still running ranges finish their in-flight requests (they see the
        cancel or the deadline within a second and drain for ``cancel_grace_seconds``), then
        take every range over, so that nothing is written after this."""
        engine = self.engine
        give_up = time.monotonic() + engine.settings.cancel_grace_seconds + 2.0
        while time.monotonic() < give_up:
            if not await self.work.live_ranges(self.batch.id, now=engine.clock()):
                break
            await asyncio.sleep(0.2)
        await self.work.take_ranges(self.batch.id, engine.owner)

    async def append_unexecuted(
        self, requests: Iterable[tuple[int, str]], reason: tuple[str, str]
    ) -> int:
        """Record ``reason`` for every request without a row, after fencing off the ranges."""
        await self._settle_ranges()
        done = bytearray((self.batch.total + 7) // 8)
        async for part in self.work.stream_results(self.batch.id, columns=("idx",)):
            for (index,) in part:
                done[index >> 3] |= 1 << (index & 7)
        code, message = reason
        lease = (self.batch.id, self.engine.owner, self.batch.lease_epoch)
        ids, count = iter(requests), 0
        while chunk := await anyio.to_thread.run_sync(_take, ids, _FILL_CHUNK):
            rows = [
                _row(JournalEntry.from_error(index, custom_id, code, message))
                for index, custom_id in chunk
                if not done[index >> 3] & (1 << (index & 7))
            ]
            if rows:
                await self.work.fill_results(lease, rows)
                count += len(rows)
        return count

    async def write_files(self, output: BlobWriter, errors: BlobWriter) -> tuple[int, int]:
        """Stream the rows in request order into the files; the counts and usage are summed on
        the way (memory: one fetch of rows)."""
        written = failed = unexecuted = 0
        tokens = [0, 0, 0, 0]
        columns = (
            "ok",
            "line",
            "input_tokens",
            "cached_tokens",
            "output_tokens",
            "reasoning_tokens",
        )
        async for part in self.work.stream_results(self.batch.id, columns=columns):
            ok_lines: list[bytes] = []
            error_lines: list[bytes] = []
            for row in part:
                ok, line, *counts = tuple(row)
                if ok:
                    ok_lines.append(line)
                    for k in range(4):
                        tokens[k] += counts[k]
                else:
                    error_lines.append(line)
                    unexecuted += _never_ran(line)
            if ok_lines:
                output.write(b"".join(ok_lines))
                written += len(ok_lines)
            if error_lines:
                errors.write(b"".join(error_lines))
                failed += len(error_lines)
        self._counts = Counts(self.batch.total, written, failed, unexecuted)
        self._usage = Usage(*tokens)
        return written, failed

    async def discard(self) -> None:
        with contextlib.suppress(StoreError):  # rows of an ended batch; removed again later
            await self.work.discard(self.batch.id)


def _usage_of(usage: dict[str, Any] | None) -> Usage:
    if not usage:
        return Usage()
    return Usage(
        int(usage.get("input_tokens", 0)),
        int((usage.get("input_tokens_details") or {}).get("cached_tokens", 0)),
        int(usage.get("output_tokens", 0)),
        int((usage.get("output_tokens_details") or {}).get("reasoning_tokens", 0)),
    )
