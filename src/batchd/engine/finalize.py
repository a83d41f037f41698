"""Writing output and error files (blocking code, run in a worker thread)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import anyio.to_thread

from batchd.engine.journal import CHUNK, Journal, JournalError, is_ok, out_of_range, records
from batchd.engine.partial import live_journals
from batchd.engine.results import LineSink, ResultIndex

__all__ = ["CANCELLED", "EXPIRED", "JournalResults", "LineSink", "write_results"]

CANCELLED = ("batch_cancelled", "The batch was cancelled before this request executed.")
EXPIRED = (
    "batch_expired",
    "This request could not be executed before the completion window expired.",
)


def write_results(
    journal_path: Path,
    total: int,
    output_writer: LineSink,
    error_writer: LineSink,
    results: ResultIndex | None = None,
) -> tuple[int, int]:
    """Write the output file (2xx entries) and the error file (the rest) in input order.

    Blocking: run it in a worker thread, on a closed journal. ``results`` is the journal's
    :attr:`~batchd.engine.journal.Journal.results`; without it, a first pass reads the journal
    to build one (13 bytes per request). Then each line is read with one ``pread`` in index
    order and written in 1 MiB chunks: memory is the index, the longest line and the two chunks,
    never the journal. Indices without a record are skipped (cancel and expiry record them
    first). Returns the number of lines written to each file.
    """
    fd = os.open(journal_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalError(f"the journal {journal_path} is still open for writing") from None
        if results is None:
            results = ResultIndex(total)
            with open(os.dup(fd), "rb", buffering=CHUNK) as fh:
                for offset, _length, line, index, record in records(fh):
                    if index >= total:
                        raise out_of_range(journal_path, index, total)
                    results.add(index, offset, line, is_ok(record["response"]))
        try:
            return results.copy(fd, output_writer, error_writer)
        except OSError as exc:
            raise JournalError(f"the journal {journal_path} changed: {exc}") from exc
    finally:
        os.close(fd)


class JournalResults(Journal):
    """A journal as the runner's result log: it writes the batch's files and is removed once
    they are published."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        live_journals.add(self)  # its synced end bounds what partial reads see

    async def close(self) -> None:
        await super().close()
        live_journals.remove(self)

    async def write_files(self, output: LineSink, errors: LineSink) -> tuple[int, int]:
        """:func:`write_results` of this (closed) journal, in a worker thread."""
        return await anyio.to_thread.run_sync(
            write_results, self.path, self.total, output, errors, self.results
        )

    async def discard(self) -> None:
        await anyio.to_thread.run_sync(lambda: self.path.unlink(missing_ok=True))
