"""Reading a running batch's journal from outside its runner: the partial results.

A batch's journal (:mod:`batchd.engine.journal`) is appended to by its runner while the API
reads it. A read takes a snapshot: the journal's file descriptor, opened once (a finalizer that
deletes the file afterwards does not disturb it: the bytes stay readable until it is closed),
and an end offset fixed before anything is counted. The end is what the live journal has synced
(:attr:`LiveJournals.durable_end`, for a journal open in this process), else the file's size (a
journal nobody writes: its complete records are what a reopen would keep). Up to that end, the
records are read as :func:`~batchd.engine.journal.records` reads them (up to the first torn or
malformed line, the first record of an index wins), once to count the lines of the kind asked
for and once to stream them, the second pass stopping where the last line counted ends (a torn
tail, which a reopen cuts off and writes over, is never read), so that the count and the lines
agree. Memory: one bit per request and a 1 MiB block, never the journal.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread

from batchd.blocks import LineBlocks
from batchd.engine.journal import CHUNK, is_ok, records

if TYPE_CHECKING:
    from batchd.engine.journal import Journal

__all__ = ["JournalSnapshot", "LiveJournals", "live_journals", "open_journal_snapshot"]


class LiveJournals:
    """The journals open for writing in this process, by path: what they have synced so far."""

    def __init__(self) -> None:
        self._open: weakref.WeakValueDictionary[str, Journal] = weakref.WeakValueDictionary()

    def add(self, journal: Journal) -> None:
        self._open[os.path.abspath(journal.path)] = journal

    def remove(self, journal: Journal) -> None:
        key = os.path.abspath(journal.path)
        if self._open.get(key) is journal:
            del self._open[key]

    def durable_end(self, path: Path) -> int | None:
        """How many bytes of the journal at ``path`` are synced, if it is open here."""
        journal = self._open.get(os.path.abspath(path))
        return None if journal is None else journal.durable_size


live_journals = LiveJournals()
"""The process's open journals (the runner's :class:`~batchd.engine.finalize.JournalResults`
register themselves while open)."""


def _lines(fd: int, end: int) -> Iterator[bytes]:
    """The lines of the file on ``fd`` up to ``end`` (a last line without its ``\\n`` too: the
    record reader stops there)."""
    offset, rest = 0, b""
    while offset < end:
        block = os.pread(fd, min(CHUNK, end - offset), offset)
        if not block:
            break
        offset += len(block)
        parts = (rest + block).split(b"\n")
        rest = parts.pop()
        for part in parts:
            yield part + b"\n"
    if rest:
        yield rest


def _first_records(fd: int, end: int, total: int, ok: bool) -> Iterator[tuple[int, bytes]]:
    """The output lines of the first record of each index whose kind is ``ok``, each with the
    offset where its record ends."""
    seen = bytearray((total + 7) // 8)
    for offset, length, line, index, record in records(_lines(fd, end)):
        if index >= total:
            return  # not this batch's journal: a reopen refuses it too
        bit = 1 << (index & 7)
        if seen[index >> 3] & bit:
            continue
        seen[index >> 3] |= bit
        if is_ok(record["response"]) == ok:
            yield offset + length, line[line.index(b" ") + 1 :]


@dataclass(slots=True)
class JournalSnapshot:
    """The lines of one kind that a journal held durably at one moment, counted; stream them
    once with :meth:`chunks` (it closes the snapshot), or :meth:`close` it."""

    fd: int
    end: int
    total: int
    ok: bool
    lines: int
    _closed: bool = field(default=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    async def aclose(self) -> None:
        self.close()

    def _blocks(self) -> Generator[bytes, None, None]:
        gathered = LineBlocks()
        for _end, line in _first_records(self.fd, self.end, self.total, self.ok):
            if (block := gathered.add((line,))) is not None:
                yield block
        if (block := gathered.rest()) is not None:
            yield block

    async def chunks(self) -> AsyncIterator[bytes]:
        """The lines, in the journal's order (completion order), in blocks of about 1 MiB."""
        blocks = self._blocks()
        try:
            while True:
                block = await anyio.to_thread.run_sync(next, blocks, None)
                if block is None:
                    return
                yield block
        finally:
            blocks.close()
            self.close()


def _snapshot(path: Path, total: int, ok: bool, durable_end: int | None) -> JournalSnapshot | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        end = size if durable_end is None else min(durable_end, size)
        lines = stop = 0  # the stream stops where the count did: a torn tail may be rewritten
        for record_end, _line in _first_records(fd, end, total, ok):
            lines, stop = lines + 1, record_end
    except BaseException:
        os.close(fd)
        raise
    return JournalSnapshot(fd, stop, total, ok, lines)


async def open_journal_snapshot(path: Path, total: int, *, ok: bool) -> JournalSnapshot | None:
    """A counted snapshot of the journal at ``path`` (a batch of ``total`` requests): its output
    lines (``ok``) or its error lines; ``None`` when there is no journal (not yet started, or
    removed once the batch's files were published)."""
    durable_end = live_journals.durable_end(path)
    return await anyio.to_thread.run_sync(_snapshot, path, total, ok, durable_end)
