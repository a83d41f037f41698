"""Partial results: what a batch's output or error file holds so far, while it runs.

A read is one snapshot, counted before it is streamed, so that :attr:`PartialResults.lines` is
exactly the number of lines :attr:`PartialResults.chunks` yields. The lines are exactly those of
the final files (the same bytes: ``{"id": "batch_req_…", "custom_id", "response", "error"}``),
and a line, once read, is in the final file unchanged (a request's first durable result is the
one that counts, in the journal and in the rows alike). By status:

``validating`` (and a batch cancelled while validating)
    Nothing ran: no lines.
``in_progress``, ``finalizing``, ``cancelling``
    The results durable so far. One process (the journal): in the journal's order, which is the
    order they became durable (completion order), up to what the journal has synced. Shared mode
    (rows of ``batch_results``): in request order, as the rows carry no insertion order; one
    database snapshot holds the status, the count and the rows.
``completed``, ``expired``, ``cancelled``, ``failed``
    The whole final file (``final``), in request order, so that a client polling partial results
    across the end of the batch gets everything without a second endpoint, and the union of its
    reads is the final files. A file that has expired or was deleted is a 404 that says so.

The race with the end of a batch needs no lock: a journal read holds its file descriptor (the
file may be deleted after the files are published; the bytes stay readable), and a journal that
is gone when the read starts means the batch ended, so the final file is served; a row snapshot
does not see the rows deleted after it began.

Use (a read holds a file descriptor or a database connection until it is read to its end or
closed)::

    async with await services.batches.partial(project, batch_id, "errors") as partial:
        async for chunk in partial.chunks:  # whole lines, about 1 MiB at a time
            ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from batchd.config import Settings
from batchd.core.lifecycle import TERMINAL
from batchd.engine.partial import open_journal_snapshot
from batchd.errors import NotFound, RateLimited, ServiceUnavailable
from batchd.storage import Storage
from batchd.store import BatchRecord, SQLStore, Store
from batchd.store.partial import open_row_snapshot

__all__ = ["MAX_ROW_READERS", "PARTIAL_KINDS", "PartialReader", "PartialResults", "Which"]

Which = Literal["output", "errors"]
PARTIAL_KINDS: tuple[Which, ...] = ("output", "errors")

MAX_ROW_READERS = 4
"""Partial reads of shared-mode batches streaming at once in one process: each holds a
database connection (and its snapshot) until its client has read it all."""


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


@dataclass(slots=True)
class PartialResults:
    """One partial read: the batch as the read saw it, how many lines, and the lines."""

    batch: BatchRecord
    """The batch as of the snapshot (its ``status`` is the one the lines belong to)."""
    which: Which
    lines: int
    """How many lines :attr:`chunks` yields."""
    chunks: AsyncIterator[bytes]
    """The lines (JSONL, each ending in ``\\n``), in blocks of whole lines (about 1 MiB); read
    it once, or :meth:`aclose`."""
    final: bool = False
    """Whether this is the final file's whole content (the batch has ended)."""
    _close: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)

    async def aclose(self) -> None:
        """Release the snapshot without reading (idempotent; reading to the end releases it)."""
        closer = getattr(self.chunks, "aclose", None)
        if closer is not None:
            await closer()
        if self._close is not None:
            close, self._close = self._close, None
            await close()

    async def __aenter__(self) -> PartialResults:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


async def _whole_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` cut after their last ``\n`` (the rest goes with the next one), so that every
    chunk a reader gets holds whole lines, as the journal's and the rows' do."""
    rest = b""
    try:
        async for chunk in chunks:
            cut = chunk.rfind(b"\n") + 1
            if not cut:
                rest += chunk
                continue
            yield rest + chunk[:cut]
            rest = chunk[cut:]
        if rest:
            yield rest
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()


def _empty(batch: BatchRecord, which: Which) -> PartialResults:
    return PartialResults(batch, which, 0, _nothing(), final=batch.status in TERMINAL)


class PartialReader:
    """Partial reads of one process (see the module's docstring)."""

    def __init__(self, store: Store, storage: Storage | None, settings: Settings) -> None:
        self.store = store
        self.storage = storage
        self.settings = settings
        self._row_readers = asyncio.Semaphore(MAX_ROW_READERS)

    def journal_path(self, batch_id: str) -> Path:
        """Where the engine of this process keeps the batch's journal (``engine.journal_path``)."""
        return self.settings.data_dir / "journals" / f"{batch_id}.journal"

    async def read(self, batch: BatchRecord, which: Which) -> PartialResults:
        """The partial ``which`` file of ``batch`` (a record of the caller's project)."""
        if which not in PARTIAL_KINDS:
            raise ValueError(f"which must be one of {PARTIAL_KINDS}, not {which!r}")
        if self.settings.shared:
            return await self._rows(batch, which)
        return await self._journal(batch, which)

    async def _journal(self, batch: BatchRecord, which: Which) -> PartialResults:
        for _attempt in range(2):
            if batch.status in TERMINAL:
                return await self._final(batch, which)
            if batch.status == "validating":
                return _empty(batch, which)
            path = self.journal_path(batch.id)
            snapshot = await open_journal_snapshot(path, batch.total, ok=which == "output")
            if snapshot is not None:
                chunks = snapshot.chunks()
                return PartialResults(batch, which, snapshot.lines, chunks, _close=snapshot.aclose)
            # No journal: the run has not started yet, or the batch ended and its journal was
            # removed after its files were published (the status read before says which).
            again = await self.store.get_batch(batch.id, project=batch.project)
            if again is None:
                raise NotFound(f"No batch found with id '{batch.id}'.")
            if again.status not in TERMINAL:
                return _empty(again, which)
            batch = again
        return await self._final(batch, which)

    async def _rows(self, batch: BatchRecord, which: Which) -> PartialResults:
        if not isinstance(self.store, SQLStore):
            raise ServiceUnavailable("partial results in shared mode need the SQL store")
        if self._row_readers.locked():
            raise RateLimited(
                f"{MAX_ROW_READERS} partial reads are streaming from this server already; retry "
                "after the time in the Retry-After header, or download the files once the batch "
                "has ended.",
                retry_after=1,
            )
        await self._row_readers.acquire()
        try:
            snapshot = await open_row_snapshot(
                self.store, batch.id, project=batch.project, ok=which == "output"
            )
        except BaseException:
            self._row_readers.release()
            raise
        released = False

        async def release() -> None:
            nonlocal released
            if not released:
                released = True
                await snapshot.close()
                self._row_readers.release()

        async def stream() -> AsyncIterator[bytes]:
            try:
                async for block in snapshot.chunks():
                    yield block
            finally:
                await release()

        seen = snapshot.batch
        if seen is None:
            await release()
            raise NotFound(f"No batch found with id '{batch.id}'.")
        if seen.status in TERMINAL or seen.status == "validating":
            await release()
            if seen.status == "validating":
                return _empty(seen, which)
            return await self._final(seen, which)
        return PartialResults(seen, which, snapshot.lines, stream(), _close=release)

    async def _final(self, batch: BatchRecord, which: Which) -> PartialResults:
        """The whole final file of an ended batch."""
        file_id = batch.output_file_id if which == "output" else batch.error_file_id
        if file_id is None:
            return _empty(batch, which)
        lines = batch.completed if which == "output" else batch.failed
        found = await self.store.get_file(file_id, now=int(time.time()), project=batch.project)
        if found is None or self.storage is None or not await self.storage.exists(file_id):
            raise NotFound(
                f"Batch {batch.id} has ended and its {which} file {file_id} has expired or was "
                "deleted: partial results of an ended batch are its final files."
            )
        chunks = _whole_lines(self.storage.read_chunks(file_id))
        return PartialResults(batch, which, lines, chunks, final=True)
