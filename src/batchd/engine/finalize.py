"""Writing output and error files (blocking code, run in a worker thread)."""

from __future__ import annotations

import fcntl
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import orjson

from batchd.engine.journal import CHUNK, JournalError, is_ok, out_of_range, records
from batchd.validation import LineTooLong, iter_lines

__all__ = [
    "CANCELLED",
    "EXPIRED",
    "LineSink",
    "input_lines",
    "input_requests",
    "write_results",
]

CANCELLED = ("batch_cancelled", "The batch was cancelled before this request executed.")
EXPIRED = (
    "batch_expired",
    "This request could not be executed before the completion window expired.",
)


def input_lines(fh: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes]]:
    """``(index, raw line)`` of every request of a validated input file, in order.

    The index is the position among non-blank lines, as everywhere in the engine.
    """
    index = 0
    for lineno, raw in iter_lines(fh, max_line_bytes):
        if isinstance(raw, LineTooLong):
            raise JournalError(f"input line {lineno} is longer than {max_line_bytes} bytes")
        if not raw.strip():
            continue
        yield index, raw
        index += 1


def input_requests(fh: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    """``(index, custom_id)`` of every request of a validated input file, in order."""
    for index, raw in input_lines(fh, max_line_bytes):
        yield index, orjson.loads(raw)["custom_id"]


class LineSink(Protocol):
    """Where :func:`write_results` writes (a :class:`~batchd.storage.BlobWriter`, a file)."""

    def write(self, data: bytes, /) -> object: ...


_ABSENT, _OUTPUT, _ERROR = 0, 1, 2


def write_results(
    journal_path: Path, total: int, output_writer: LineSink, error_writer: LineSink
) -> tuple[int, int]:
    """Write the output file (2xx entries) and the error file (the rest) in input order.

    Blocking: run it in a worker thread, on a closed journal. Two passes: the first reads the
    journal sequentially and keeps, per index, where its first record's output line starts
    (``array('q')``), its length (``array('I')``) and its file (a ``bytearray``): 13 bytes per
    request, 13 MB for 1,000,000; the second reads each line with one ``pread`` in index order and
    writes it in 1 MiB chunks. Memory is that plus the longest line and the two chunks, never the
    journal. Indices without a record are skipped (cancel and expiry record them first). Returns
    the number of lines written to each file.
    """
    offsets = array("q", [0]) * total
    lengths = array("I", [0]) * total
    kinds = bytearray(total)
    fd = os.open(journal_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalError(f"the journal {journal_path} is still open for writing") from None
        with open(os.dup(fd), "rb", buffering=CHUNK) as fh:
            for offset, length, line, index, record in records(fh):
                if index >= total:
                    raise out_of_range(journal_path, index, total)
                if kinds[index] != _ABSENT:
                    continue
                start = line.index(b" ") + 1
                offsets[index] = offset + start
                lengths[index] = length - start
                kinds[index] = _OUTPUT if is_ok(record["response"]) else _ERROR
        return _copy_lines(fd, offsets, lengths, kinds, output_writer, error_writer)
    finally:
        os.close(fd)


def _copy_lines(
    fd: int,
    offsets: array[int],
    lengths: array[int],
    kinds: bytearray,
    output_writer: LineSink,
    error_writer: LineSink,
) -> tuple[int, int]:
    sinks = {_OUTPUT: output_writer, _ERROR: error_writer}
    parts: dict[int, list[bytes]] = {_OUTPUT: [], _ERROR: []}
    sizes = {_OUTPUT: 0, _ERROR: 0}
    counts = {_OUTPUT: 0, _ERROR: 0}
    for index, kind in enumerate(kinds):
        if kind == _ABSENT:
            continue
        line = os.pread(fd, lengths[index], offsets[index])
        if len(line) != lengths[index]:
            raise JournalError("the journal changed while its results were written")
        parts[kind].append(line)
        sizes[kind] += len(line)
        counts[kind] += 1
        if sizes[kind] >= CHUNK:
            sinks[kind].write(b"".join(parts[kind]))
            parts[kind].clear()
            sizes[kind] = 0
    for kind, pending in parts.items():
        if pending:
            sinks[kind].write(b"".join(pending))
    return counts[_OUTPUT], counts[_ERROR]
