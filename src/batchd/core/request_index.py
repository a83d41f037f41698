"""The request index of a validated input file: where each request's line lies, its
``custom_id`` and model, so that nothing after validation parses the input to find them.

Validation builds it in the pass that checks the file (at upload, or when a batch is created on a
stored file), streamed to storage beside the input blob under :func:`index_key`. The runner reads
request bodies by offset (and skips the requests the journal already has without reading them);
cancel, expiry and finalization take ``custom_id``\\ s from it. Memory while building is a 1 MiB
buffer and the list of model names, whatever the number of requests; reading streams it too.

On disk (little-endian)::

    entry*   offset u64 · length u32 · custom_id length u32 · model u16 · custom_id (UTF-8)
    footer   JSON {"version", "total", "models"} · its length u32 · MAGIC (8 bytes)

``offset``/``length`` are the request line's bytes in the input file, without the line end (and
without the byte-order mark of line 1): ``input[offset:offset + length]`` is the line that was
validated. ``model`` indexes the footer's ``models``. Entries come in request order: the n-th is
request index n (the position among non-blank lines).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import orjson

from batchd.errors import BatchdError

__all__ = [
    "MAGIC",
    "IndexSink",
    "RequestEntry",
    "RequestIndex",
    "RequestIndexError",
    "RequestIndexWriter",
    "index_key",
]

MAGIC = b"BDREQIX1"
VERSION = 1
_ENTRY = struct.Struct("<QIIH")
Entry = tuple[int, int, int, int]
"""An entry's fixed fields: line offset, line length, custom_id length, model number."""
_TAIL = struct.Struct("<I8s")
_FLUSH = 1 << 20  # bytes buffered before a write to the sink
_READ = 1 << 20  # bytes read at a time


def index_key(file_id: str) -> str:
    """The storage key of the request index of input file ``file_id``."""
    return f"{file_id}.requests"


class RequestIndexError(BatchdError):
    """A request index cannot be read (truncated, another format, inconsistent)."""


class IndexSink(Protocol):
    """Where the index's bytes go (a :class:`~batchd.storage.BlobWriter`, a file)."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True, slots=True)
class RequestEntry:
    """One request of the input: its index, where its line lies, its custom_id and model."""

    index: int
    offset: int
    length: int
    custom_id: str
    model: str


class RequestIndexWriter:
    """Builds an index entry by entry (:meth:`add`, in request order), then :meth:`finish`."""

    __slots__ = ("_buffer", "_models", "_sink", "total")

    def __init__(self, sink: IndexSink) -> None:
        self._sink = sink
        self._buffer = bytearray()
        self._models: dict[str, int] = {}
        self.total = 0

    def add(self, offset: int, length: int, custom_id: str, model: str) -> None:
        """The next request: its line at ``offset`` (``length`` bytes), its ids."""
        number = self._models.get(model)
        if number is None:
            number = self._models[model] = len(self._models)
        encoded = custom_id.encode()
        buffer = self._buffer
        buffer += _ENTRY.pack(offset, length, len(encoded), number)
        buffer += encoded
        self.total += 1
        if len(buffer) >= _FLUSH:
            self._sink.write(bytes(buffer))
            buffer.clear()

    def finish(self) -> int:
        """Write what is buffered and the footer; the number of requests."""
        footer = orjson.dumps(
            {"version": VERSION, "total": self.total, "models": list(self._models)}
        )
        self._buffer += footer + _TAIL.pack(len(footer), MAGIC)
        self._sink.write(bytes(self._buffer))
        self._buffer.clear()
        return self.total


class RequestIndex:
    """A stored index, read from a seekable binary reader (blocking: use it off the event loop).

    :meth:`entries` streams the entries in request order, reading 1 MiB at a time.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        end = fh.seek(0, 2)
        if end < _TAIL.size:
            raise RequestIndexError("the request index is truncated")
        fh.seek(end - _TAIL.size)
        footer_length, magic = _TAIL.unpack(fh.read(_TAIL.size))
        if magic != MAGIC or footer_length + _TAIL.size > end:
            raise RequestIndexError("not a request index (bad magic or footer)")
        self._entries_end = end - _TAIL.size - footer_length
        fh.seek(self._entries_end)
        try:
            footer = orjson.loads(fh.read(footer_length))
            version, total, models = footer["version"], footer["total"], footer["models"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise RequestIndexError(f"the request index's footer is damaged: {exc}") from None
        if version != VERSION:
            raise RequestIndexError(f"request index version {version} is not {VERSION}")
        self.total: int = total
        self.models: list[str] = models

    def close(self) -> None:
        self._fh.close()

    def _walk(self, offset: int, index: int) -> Iterator[tuple[int, int, bytes, int, Entry]]:
        """Every entry from byte ``offset`` (that of request ``index``) on, read 1 MiB at a time:
        ``(request, byte offset of its entry, buffer, where the entry starts in the buffer, its
        fixed fields)``; its custom_id follows the fixed fields in the buffer."""
        fh, end = self._fh, self._entries_end
        fh.seek(offset)
        position = offset
        pending = b""
        size = _ENTRY.size
        while position < end:
            chunk = fh.read(min(_READ, end - position))
            if not chunk:
                raise RequestIndexError("the request index is shorter than its footer says")
            base = position - len(pending)
            data = pending + chunk
            position += len(chunk)
            at = 0
            while at + size <= len(data):
                fields: Entry = _ENTRY.unpack_from(data, at)
                if at + size + fields[2] > len(data):
                    break
                yield index, base + at, data, at, fields
                index += 1
                at += size + fields[2]
            pending = data[at:]
            if position >= end and pending:
                raise RequestIndexError("the request index ends inside an entry")

    def entries(
        self, *, start: int = 0, offset: int = 0, stop: int | None = None
    ) -> Iterator[RequestEntry]:
        """The entries in request order: every one, or those of ``[start, stop)`` when the
        entry of request ``start`` lies at byte ``offset`` (from :meth:`offsets`)."""
        models, size = self.models, _ENTRY.size
        last = self.total if stop is None else min(stop, self.total)
        done = start
        for index, _where, data, at, (line_offset, length, id_length, model) in self._walk(
            offset, start
        ):
            if index >= last:
                return
            custom_id = data[at + size : at + size + id_length].decode()
            yield RequestEntry(index, line_offset, length, custom_id, models[model])
            done = index + 1
        if done != last:
            raise RequestIndexError(f"the request index has {done} entries, not {self.total}")

    def offsets(self, step: int) -> Iterator[tuple[int, int]]:
        """``(request, byte offset of its entry)`` of requests 0, ``step``, ``2 * step``…: where
        each range of ``step`` requests starts (see :meth:`entries`)."""
        for index, where, _data, _at, _fields in self._walk(0, 0):
            if index % step == 0:
                yield index, where
