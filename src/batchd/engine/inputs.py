"""The requests of a running batch, read from its input file by the request index.

The index (:mod:`batchd.core.request_index`) says where each request's line lies and its
``custom_id``: the runner reads only the lines of requests without a durable result (a resumed
batch skips the rest without reading them), several neighbouring lines with one read, and parses
each once for its body; cancel and expiry take the ``custom_id``\\ s of the unexecuted requests
from the index alone. An input file without an index (validated by an earlier batchd, or whose
index was lost) is indexed once, on first use. Blocking code: run it in a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import anyio.to_thread
import orjson

from batchd.core.request_index import (
    RequestEntry,
    RequestIndex,
    RequestIndexError,
    RequestIndexWriter,
    index_key,
)
from batchd.providers.base import ProviderRequest
from batchd.storage import Storage
from batchd.validation import index_stream

__all__ = [
    "Done",
    "Feed",
    "InputReader",
    "Item",
    "Span",
    "open_index",
    "plan_ranges",
    "request_ids",
]

log = logging.getLogger("batchd.engine")

Item = tuple[int, str, dict[str, Any]]
"""A request read: ``(index, custom_id, body)``."""

_READ_CHUNK = 512  # requests read from the input file per worker-thread call
_SPAN = 4 << 20  # the most bytes one read covers
_GAP = 64 << 10  # done requests between two pending ones read through rather than skipped


@dataclass(frozen=True, slots=True)
class Span:
    """Requests ``[start, stop)`` of a batch, the first one's entry at byte ``index_offset`` of
    the request index (a claimed range, in shared mode)."""

    start: int
    stop: int
    index_offset: int


class Done(Protocol):
    """Which requests have a durable result (a journal, a range's result rows)."""

    @property
    def total(self) -> int: ...

    def is_done(self, index: int) -> bool: ...


def _entries(index: RequestIndex, span: Span | None) -> Iterator[RequestEntry]:
    if span is None:
        return index.entries()
    return index.entries(start=span.start, offset=span.index_offset, stop=span.stop)


def _build_index(storage: Storage, file_id: str, max_line_bytes: int) -> None:
    writer = storage.writer()
    try:
        with storage.open_binary(file_id) as fh:
            total = index_stream(fh, RequestIndexWriter(writer), max_line_bytes=max_line_bytes)
        writer.commit_sync(index_key(file_id))
    finally:
        writer.abort_sync()  # nothing once committed
    log.info("input file %s: request index built (%d requests)", file_id, total)


def open_index(storage: Storage, file_id: str, total: int, max_line_bytes: int) -> RequestIndex:
    """The request index of input file ``file_id`` (of ``total`` requests), built first when it
    is missing or does not match the file."""
    for attempt in range(2):
        try:
            fh = storage.open_binary(index_key(file_id))
        except FileNotFoundError:
            fh = None
        if fh is not None:
            try:
                index = RequestIndex(fh)
            except RequestIndexError as exc:
                fh.close()
                log.warning("input file %s: %s; indexing it again", file_id, exc)
            else:
                if index.total == total:
                    return index
                index.close()
                log.warning(
                    "input file %s: its request index has %d requests, the batch %d; indexing "
                    "it again",
                    file_id,
                    index.total,
                    total,
                )
        if attempt == 0:
            _build_index(storage, file_id, max_line_bytes)
    raise RequestIndexError(f"input file {file_id} does not have the {total} requests of its batch")


class InputReader:
    """The requests of a batch (of ``span``) without a durable result, in request order,
    ``count`` at a time (:meth:`read`), with their bodies parsed."""

    def __init__(
        self,
        storage: Storage,
        file_id: str,
        journal: Done,
        max_line_bytes: int,
        span: Span | None = None,
    ):
        self._index = open_index(storage, file_id, journal.total, max_line_bytes)
        try:
            self._fh: BinaryIO = storage.open_binary(file_id)
        except BaseException:
            self._index.close()
            raise
        self._pending = (
            entry for entry in _entries(self._index, span) if not journal.is_done(entry.index)
        )

    def read(self, count: int) -> list[Item]:
        """The next ``count`` requests (fewer at the end): ``(index, custom_id, body)``."""
        entries: list[RequestEntry] = []
        for entry in self._pending:
            entries.append(entry)
            if len(entries) >= count:
                break
        requests: list[Item] = []
        start = 0
        while start < len(entries):
            first = entries[start]
            stop, end = start + 1, first.offset + first.length
            while stop < len(entries):
                after = entries[stop]
                if after.offset - end > _GAP or after.offset + after.length - first.offset > _SPAN:
                    break
                end = after.offset + after.length
                stop += 1
            self._fh.seek(first.offset)
            span = memoryview(self._fh.read(end - first.offset))
            for entry in entries[start:stop]:
                at = entry.offset - first.offset
                line = span[at : at + entry.length]
                if len(line) != entry.length:
                    raise RequestIndexError(f"the input file is shorter than request {entry.index}")
                requests.append((entry.index, entry.custom_id, orjson.loads(line)["body"]))
            start = stop
        return requests

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._fh.close()
        self._index.close()


def request_ids(
    storage: Storage, file_id: str, total: int, max_line_bytes: int, span: Span | None = None
) -> Iterator[tuple[int, str]]:
    """``(index, custom_id)`` of every request of the input file (of ``span``), from its index
    alone."""
    index = open_index(storage, file_id, total, max_line_bytes)
    try:
        for entry in _entries(index, span):
            yield entry.index, entry.custom_id
    finally:
        index.close()


class Feed:
    """Request groups for the workers, read from the input in chunks when the queue runs dry.

    ``screen``, when given, sees each chunk read and returns the requests of it to send (the
    result cache answers the others, :mod:`batchd.engine.cache`); :meth:`put_back` queues
    requests to send after all."""

    def __init__(
        self,
        reader: InputReader,
        endpoint: str,
        group_size: int,
        screen: Callable[[list[Item]], Awaitable[list[Item]]] | None = None,
    ) -> None:
        self._reader = reader
        self._endpoint = endpoint
        self._group_size = group_size
        self._screen = screen
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
                if self._screen is not None and chunk:
                    chunk = await self._screen(chunk)
                self.put_back(chunk)
        return self._queue.popleft()

    def put_back(self, requests: list[Item]) -> None:
        """Queue ``requests`` to be sent, in groups."""
        size, endpoint = self._group_size, self._endpoint
        for start in range(0, len(requests), size):
            self._queue.append(
                [
                    ProviderRequest(index, custom_id, endpoint, body)
                    for index, custom_id, body in requests[start : start + size]
                ]
            )


def plan_ranges(
    storage: Storage, file_id: str, total: int, max_line_bytes: int, size: int
) -> list[Span]:
    """The batch's requests cut into ranges of ``size`` (shared mode), each with where its
    first entry lies in the request index."""
    index = open_index(storage, file_id, total, max_line_bytes)
    try:
        return [
            Span(start, min(start + size, total), offset) for start, offset in index.offsets(size)
        ]
    finally:
        index.close()
