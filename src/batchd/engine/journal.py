"""The result journal: one append-only file per batch, every result durable before it counts.

On disk
-------
One record per line, in the order the results became durable (not input order)::

    <index> <output-line>\\n

``<index>`` is the request's 0-based position among the non-blank lines of the input file, in
ASCII digits; ``<output-line>`` is the exact line of the output or error file,
``{"id": "batch_req_…", "custom_id": …, "response": …, "error": …}`` as orjson writes it, so the
finalizer copies its bytes (no parse, no re-serialization) and the ``batch_req_`` id, drawn when
the entry is created, is the same after any number of restarts. JSON escapes every newline inside
strings, so the final ``\\n`` is the one mark that a record is complete.

Durability argument
-------------------
1. :meth:`Journal.append` returns, and the entry is counted, only after the group of lines it
   belongs to was written at the end of the file and ``fdatasync`` (``fsync`` where there is no
   ``fdatasync``) returned success. The file is only ever appended to, so every byte before an
   acknowledged record is durable too. A new journal's directory is synced once, so the file
   itself survives a crash.
2. A crash (``kill -9``, power loss) can leave, after the last synced byte, any part of the
   unsynced writes: a torn last line, or pages of zeros or stale bytes. :meth:`Journal.open`
   reads from the start and stops at the first line that is not a complete, well-formed record;
   everything up to the last sync is intact, so that line lies after it and truncating the file
   there drops only entries that no caller was told about. Their requests are sent again.
   Entries that reached the disk without being acknowledged are kept: their requests ran, so
   they count and are not sent again.
3. One entry per index: :meth:`Journal.append` drops an entry for an index that already has a
   durable one (it returns ``False``), and both :meth:`Journal.open` and :func:`write_results`
   keep the first record of an index and ignore later ones. Validation makes ``custom_id``\\ s
   unique, so none appears twice in the output and error files together.
4. After a failed write or sync the state of the unsynced pages is unknown (the kernel may drop
   them or write them later), so the journal stops: the waiting appends fail, uncounted, and every
   later call raises :class:`JournalError`. Reopening reads whatever the disk holds.

The file is held with an exclusive ``flock`` while open, so a second writer (another process, or
a second :class:`Journal` on the same path) is refused, and :func:`write_results` refuses a
journal that is still open for writing.

Memory: :class:`Journal` keeps one bit per request (the done-bitmap), the counters and a
:class:`~batchd.engine.results.ResultIndex` of where each result's line lies (13 bytes per
request), so that :func:`write_results` copies the lines in input order without parsing the
journal again. Neither holds the journal.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio.to_thread
import orjson

from batchd.engine.results import ResultIndex
from batchd.engine.usage import NO_USAGE, Tokens, Usage, usage_tokens
from batchd.errors import BatchdError, StorageFault
from batchd.ids import new_batch_request_id
from batchd.storage.base import storage_fault
from batchd.storage.local import fsync_dir

__all__ = [
    "CACHE_HEADER",
    "CHUNK",
    "UNEXECUTED",
    "Counts",
    "Journal",
    "JournalEntry",
    "JournalError",
    "Tokens",
    "Usage",
    "is_cached",
    "is_ok",
    "never_ran",
    "out_of_range",
    "records",
    "usage_tokens",
]

log = logging.getLogger("batchd.engine")

CHUNK = 1024 * 1024
_KEYS = ("id", "custom_id", "response", "error")
CACHE_HEADER = "x-batchd-cache"
#: The error codes of requests that never ran (see :data:`batchd.engine.finalize.CANCELLED`).
UNEXECUTED = frozenset({"batch_cancelled", "batch_expired"})


def never_ran(record: dict[str, Any]) -> bool:
    """Whether a result record is a request recorded as cancelled or expired before it ran."""
    error = record.get("error")
    return isinstance(error, dict) and error.get("code") in UNEXECUTED


"""The ``response.headers`` key of an answer from the result cache (value ``hit``)."""
_MAX_INDEX_DIGITS = 18
_IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 16


def _sync_fd(fd: int) -> None:
    """Make a file's data durable, with the size needed to read it back: ``fdatasync``, or
    ``fsync`` where there is none (macOS)."""
    getattr(os, "fdatasync", os.fsync)(fd)


class JournalError(BatchdError):
    """The result journal cannot be used."""

    def __init__(self, message: str | None = None, *, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error
        """The system's error behind it, when the disk refused a write."""

    @property
    def fault(self) -> StorageFault | None:
        """The storage fault behind this error (a full or read-only disk: the journal can be
        opened again once it is gone), or ``None`` when the cause is not the disk."""
        if self.os_error is None:
            return None
        return storage_fault(self.os_error, "writing the result journal")


# -- entries ---------------------------------------------------------------------------------


def is_ok(response: dict[str, Any] | None) -> bool:
    return response is not None and 200 <= response["status_code"] < 300


def _tokens_of(response: dict[str, Any] | None) -> Tokens | None:
    """The tokens a result adds to the batch usage: a 2xx body's, else none. An answer from the
    result cache (:mod:`batchd.engine.cache`, marked in ``response.headers``) reports all its
    input tokens as cached."""
    if response is None or not 200 <= response["status_code"] < 300:
        return None
    tokens = usage_tokens(response.get("body"))
    if tokens is not None and "headers" in response and is_cached(response):
        return (tokens[0], tokens[0], tokens[2], tokens[3])
    return tokens


def is_cached(response: dict[str, Any]) -> bool:
    """Whether ``response`` came from the result cache."""
    headers = response.get("headers")
    return isinstance(headers, dict) and headers.get(CACHE_HEADER) == "hit"


@dataclass(slots=True)
class JournalEntry:
    """The result of one request: an HTTP ``response`` or a non-HTTP ``error``, never both.

    ``response`` is ``{"status_code", "request_id", "body"}`` (plus ``headers`` on an answer
    from the result cache, :mod:`batchd.engine.cache`); ``error`` is ``{"code",
    "message"}`` (``batch_cancelled``, ``batch_expired``, ``request_timeout``…). ``id`` is the
    ``batch_req_…`` id of its output-file line, drawn here so that it is stored with the entry.
    """

    index: int
    custom_id: str
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    id: str = field(default_factory=new_batch_request_id)

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"request index must not be negative: {self.index}")
        if (self.response is None) == (self.error is None):
            raise ValueError("a journal entry has exactly one of response and error")
        if self.response is not None:
            status = self.response.get("status_code")
            if not isinstance(status, int) or isinstance(status, bool):
                raise ValueError("response.status_code must be an int")

    @classmethod
    def from_response(
        cls, index: int, custom_id: str, status_code: int, request_id: str, body: Any
    ) -> JournalEntry:
        """An HTTP response (any status: 2xx goes to the output file, the rest to the errors)."""
        response = {"status_code": status_code, "request_id": request_id, "body": body}
        return cls(index, custom_id, response=response)

    @classmethod
    def from_error(cls, index: int, custom_id: str, code: str, message: str) -> JournalEntry:
        """A request that got no HTTP response."""
        return cls(index, custom_id, error={"code": code, "message": message})

    @property
    def ok(self) -> bool:
        """Whether the request succeeded (HTTP 2xx): its line goes to the output file."""
        return is_ok(self.response)

    @property
    def usage(self) -> Usage:
        """What the entry adds to the batch usage: its body's usage if ok, else nothing."""
        tokens = self.tokens
        return NO_USAGE if tokens is None else Usage(*tokens)

    @property
    def tokens(self) -> Tokens | None:
        """:attr:`usage` as a tuple, ``None`` for nothing (cheaper: one per result)."""
        return _tokens_of(self.response)

    def output_line(self) -> bytes:
        """The line of the output or error file."""
        record = {
            "id": self.id,
            "custom_id": self.custom_id,
            "response": self.response,
            "error": self.error,
        }
        return orjson.dumps(record) + b"\n"

    def journal_line(self) -> bytes:
        """The journal record: the index, a space, the output line."""
        return b"%d " % self.index + self.output_line()

    @classmethod
    def parse(cls, line: bytes) -> JournalEntry:
        """An entry from its journal record; :class:`ValueError` if it is not a complete one."""
        index, record = _decode(line)
        return cls(
            index,
            record["custom_id"],
            response=record["response"],
            error=record["error"],
            id=record["id"],
        )


def _decode(line: bytes) -> tuple[int, dict[str, Any]]:
    """The index and output record of a journal line, or :class:`ValueError` (torn, garbage)."""
    if not line.endswith(b"\n"):
        raise ValueError("torn record: no line end")
    head, sep, rest = line.partition(b" ")
    if not sep or not head.isdigit() or len(head) > _MAX_INDEX_DIGITS:
        raise ValueError("malformed record: no index")
    record = orjson.loads(rest)
    if not isinstance(record, dict) or tuple(record) != _KEYS:
        raise ValueError("malformed record: not an output line")
    response, error = record["response"], record["error"]
    if not isinstance(record["id"], str) or not isinstance(record["custom_id"], str):
        raise ValueError("malformed record: id or custom_id")
    if (response is None) == (error is None):
        raise ValueError("malformed record: response and error")
    if response is not None:
        status = response.get("status_code") if isinstance(response, dict) else None
        if not isinstance(status, int) or isinstance(status, bool):
            raise ValueError("malformed record: status_code")
    elif not isinstance(error, dict):
        raise ValueError("malformed record: error")
    return int(head), record


@dataclass(frozen=True, slots=True)
class Counts:
    """Requests with a durable result: ``completed`` (2xx) and ``failed`` (everything else), of
    which ``unexecuted`` never ran (:data:`UNEXECUTED`: cancelled or expired first)."""

    total: int
    completed: int
    failed: int
    unexecuted: int = 0

    @property
    def done(self) -> int:
        return self.completed + self.failed


# -- the journal -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Replay:
    """What :func:`_replay` rebuilt from an existing journal."""

    done: bytearray
    index: ResultIndex
    completed: int = 0
    failed: int = 0
    unexecuted: int = 0
    tokens: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    duplicates: int = 0
    truncated: int = 0
    end: int = 0
    """The size of the journal once its tail is cut off: where the next record goes."""


@dataclass(slots=True)
class _Append:
    index: int
    ok: bool
    tokens: Tokens | None
    line: bytes
    future: asyncio.Future[bool] | None
    """``None`` for all but the last entry of a :meth:`Journal.submit_many` group."""
    queued_at: float


@dataclass(slots=True)
class _Fill:
    requests: Iterable[tuple[int, str]]
    code: str
    message: str
    future: asyncio.Future[int]


def records(fh: Iterable[bytes]) -> Iterator[tuple[int, int, bytes, int, dict[str, Any]]]:
    """``(offset, length, line, index, record)`` of the well-formed records, up to the first bad
    line (torn tail or garbage), which ends the journal."""
    offset = 0
    for line in fh:
        try:
            index, record = _decode(line)
        except ValueError:
            return
        yield offset, len(line), line, index, record
        offset += len(line)


def out_of_range(path: Path, index: int, total: int) -> JournalError:
    return JournalError(f"journal {path} has request index {index}, but the batch has {total}")


def _replay(fd: int, path: Path, total: int) -> _Replay:
    """Rebuild the state from the journal on ``fd`` and cut a torn or garbled tail off."""
    state = _Replay(done=bytearray((total + 7) // 8), index=ResultIndex(total))
    done = state.done
    end = 0
    with open(os.dup(fd), "rb", buffering=CHUNK) as fh:
        for offset, length, line, index, record in records(fh):
            if index >= total:
                raise out_of_range(path, index, total)
            end = offset + length
            bit = 1 << (index & 7)
            if done[index >> 3] & bit:
                state.duplicates += 1
                continue
            done[index >> 3] |= bit
            response = record["response"]
            ok = is_ok(response)
            state.index.add(index, offset, line, ok)
            if ok:
                state.completed += 1
                _add_tokens(state.tokens, _tokens_of(response))
            else:
                state.failed += 1
                state.unexecuted += never_ran(record)
    state.end = end
    size = os.fstat(fd).st_size
    if end < size:
        state.truncated = size - end
        os.ftruncate(fd, end)
        _sync_fd(fd)
    return state


def _add_tokens(into: list[int], tokens: Tokens | None) -> None:
    if tokens is not None:
        into[0] += tokens[0]
        into[1] += tokens[1]
        into[2] += tokens[2]
        into[3] += tokens[3]


def _open_locked(path: Path) -> int:
    """The journal's file descriptor: appending, exclusively locked, its directory synced."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"the journal {path} is already open for writing") from None
    if created:
        fsync_dir(path.parent)
    return fd


class Journal:
    """The durable results of one batch; build it with :meth:`open`, end it with :meth:`close`.

    ``append`` is group-committed: a single flusher task takes the entries appended meanwhile
    (at most ``max_group``, waiting at most ``max_delay`` seconds after the oldest arrived, less
    once ``max_group`` are queued), writes them with one ``write`` and syncs once, in a worker
    thread, then counts them and wakes their callers. The event loop never blocks on the disk.
    """

    def __init__(
        self,
        path: Path,
        total: int,
        fd: int,
        state: _Replay,
        *,
        max_delay: float,
        max_group: int,
    ) -> None:
        """Use :meth:`open`."""
        self.path = path
        self.total = total
        self.max_delay = max_delay
        self.max_group = max_group
        self._fd = fd
        self._done = state.done
        self._completed = state.completed
        self._failed = state.failed
        self._unexecuted = state.unexecuted
        self._tokens = state.tokens
        self._index = state.index
        self._end = state.end
        self._queue: collections.deque[_Append | _Fill] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._closed = False
        self._error: JournalError | None = None
        self._flusher = asyncio.create_task(self._run(), name=f"journal-flusher {path.name}")

    @classmethod
    async def open(
        cls, path: Path, total: int, *, max_delay: float = 0.02, max_group: int = 1024
    ) -> Self:
        """Open (or create) the journal of a batch of ``total`` requests and rebuild its state.

        A torn or garbled tail left by a crash is cut off (logged); for an index recorded more
        than once, the first record counts.
        """
        if total < 0 or max_group < 1 or max_delay < 0:
            raise ValueError("total, max_group and max_delay must be positive")

        def load() -> tuple[int, _Replay]:
            fd = _open_locked(path)
            try:
                return fd, _replay(fd, path, total)
            except BaseException:
                os.close(fd)
                raise

        fd, state = await anyio.to_thread.run_sync(load)
        if state.truncated:
            log.warning("journal %s: cut off %d bytes of a torn tail", path, state.truncated)
        if state.duplicates:
            log.warning("journal %s: ignored %d duplicate records", path, state.duplicates)
        return cls(path, total, fd, state, max_delay=max_delay, max_group=max_group)

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- state ---------------------------------------------------------------------------------

    def is_done(self, index: int) -> bool:
        """Whether request ``index`` has a durable result."""
        return bool(self._done[index >> 3] & (1 << (index & 7)))

    def pending(self) -> Iterator[int]:
        """The indices without a durable result, ascending (read live from the bitmap)."""
        total = self.total
        for byte_index in range(len(self._done)):
            bits = self._done[byte_index]
            if bits == 0xFF:
                continue
            base = byte_index << 3
            for bit in range(min(8, total - base)):
                if not bits & (1 << bit):
                    yield base + bit

    @property
    def counts(self) -> Counts:
        return Counts(self.total, self._completed, self._failed, self._unexecuted)

    @property
    def usage(self) -> Usage:
        """The summed usage of the successful entries."""
        return Usage(*self._tokens)

    @property
    def results(self) -> ResultIndex:
        """Where each durable entry's output line lies in the file: complete once the journal is
        closed (for :func:`~batchd.engine.finalize.write_results`)."""
        return self._index

    @property
    def durable_size(self) -> int:
        """The bytes of the file that are synced (a reader of the live journal stops there)."""
        return self._end

    @property
    def finished(self) -> bool:
        """Whether every request has a durable result."""
        return self._completed + self._failed == self.total

    @property
    def error(self) -> JournalError | None:
        """Why the journal stopped accepting entries, if it did."""
        return self._error

    # -- writing -------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._failure() from self._error.__cause__
        if self._closing:
            raise JournalError(f"the journal {self.path} is closed")

    def _enqueue(self, item: _Append | _Fill) -> None:
        self._queue.append(item)
        if len(self._queue) == 1 or len(self._queue) >= self.max_group or isinstance(item, _Fill):
            self._wakeup.set()

    async def append(self, entry: JournalEntry) -> bool:
        """Record ``entry``; returns once it is durable and counted.

        Returns ``False`` (and writes nothing) when the index already has a durable entry. Raises
        :class:`JournalError` when the journal failed or is closed. Cancelling the caller does
        not withdraw the entry.
        """
        return await self.submit(entry)

    def submit(self, entry: JournalEntry) -> asyncio.Future[bool]:
        """Queue ``entry`` and return at once: the future is :meth:`append`'s answer.

        For a caller with other work to do while the entry is written (the runner sends its next
        request meanwhile). The entry is written whether or not anyone awaits the future.
        """
        return self.submit_many((entry,))

    def submit_many(self, entries: Sequence[JournalEntry]) -> asyncio.Future[bool]:
        """Queue a group of entries: one future, resolved once all of them are durable (it is
        the last new one's: the flusher writes in queue order); ``False`` when none was new
        (for :meth:`submit`'s answer per entry, submit them one by one). A cancelled waiter
        cancels only the future; the queued entries are still written and counted (the flusher
        never looks at a future's state before that)."""
        self._check_usable()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        now, last = loop.time(), None
        for entry in entries:
            index = entry.index
            if not 0 <= index < self.total:
                raise ValueError(f"request index {index} out of range 0..{self.total - 1}")
            if self.is_done(index):
                continue
            line = entry.journal_line()
            last = _Append(index, entry.ok, _tokens_of(entry.response), line, None, now)
            self._enqueue(last)
        if last is None:
            future.set_result(False)
        else:
            last.future = future  # nothing ran in between: the flusher has not seen it yet
        return future

    async def append_unexecuted(
        self, requests: Iterable[tuple[int, str]], reason: tuple[str, str]
    ) -> int:
        """Record a non-HTTP error for every request in ``requests`` without an entry yet.

        ``requests`` yields ``(index, custom_id)`` (e.g. :func:`input_requests`) and is consumed in
        a worker thread; ``reason`` is ``(code, message)``, e.g. ``finalize.CANCELLED``. Entries
        appended before this call are written first; the new lines are written in 1 MiB chunks
        and synced once. Returns how many were recorded.
        """
        self._check_usable()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        code, message = reason
        self._enqueue(_Fill(requests, code, message, future))
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Write and sync what is queued, stop the flusher and release the file (idempotent)."""
        if self._closed:
            return
        self._closing = True
        self._wakeup.set()
        await asyncio.wait([self._flusher])
        if not self._flusher.cancelled():
            self._flusher.exception()  # retrieved: the waiters got it already
        self._closed = True
        os.close(self._fd)

    # -- the flusher ---------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self._error is None:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                head = self._queue[0]
                if isinstance(head, _Fill):
                    self._queue.popleft()
                    await self._fill(head)
                    continue
                await self._gather(head.queued_at + self.max_delay)
                await self._commit(self._take_group())
        except BaseException as exc:  # cancelled (never closed) or a bug: fail the waiters
            self._fail(exc, [], f"the flusher of the journal {self.path} stopped")
            raise

    async def _gather(self, deadline: float) -> None:
        """Wait for more entries: until ``max_group`` are queued, a fill, close or ``deadline``."""
        loop = asyncio.get_running_loop()
        while not self._closing and len(self._queue) < self.max_group:
            if any(isinstance(item, _Fill) for item in self._queue):
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _take_group(self) -> list[_Append]:
        group: list[_Append] = []
        while self._queue and len(group) < self.max_group:
            head = self._queue[0]
            if not isinstance(head, _Append):
                break
            group.append(head)
            self._queue.popleft()
        return group

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _write_and_sync(self, lines: list[bytes]) -> None:
        """Append ``lines`` with ``writev`` (no joined copy: a group of 512 embeddings is
        2.5 MB) and sync."""
        for start in range(0, len(lines), _IOV_MAX):
            chunk = lines[start : start + _IOV_MAX]
            written = os.writev(self._fd, chunk)
            if written < sum(map(len, chunk)):  # a short write: the rest the plain way
                self._write(b"".join(chunk)[written:])
        _sync_fd(self._fd)

    async def _commit(self, group: list[_Append]) -> None:
        fresh: list[_Append] = []
        stale: list[_Append] = []
        seen: set[int] = set()
        for item in group:
            if self.is_done(item.index) or item.index in seen:
                stale.append(item)
            else:
                seen.add(item.index)
                fresh.append(item)
        if fresh:
            try:
                await anyio.to_thread.run_sync(self._write_and_sync, [item.line for item in fresh])
            except BaseException as exc:
                self._fail(exc, group, f"writing the journal {self.path} failed")
                if not isinstance(exc, Exception):
                    raise
                return
        done, tokens, results, end = self._done, self._tokens, self._index, self._end
        for item in fresh:
            index = item.index
            done[index >> 3] |= 1 << (index & 7)
            results.add(index, end, item.line, item.ok)
            end += len(item.line)
            if item.ok:
                self._completed += 1
                _add_tokens(tokens, item.tokens)
            else:
                self._failed += 1
            if item.future is not None and not item.future.done():
                item.future.set_result(True)
        self._end = end
        for item in stale:
            if item.future is not None and not item.future.done():
                item.future.set_result(False)

    def _fill_sync(self, item: _Fill) -> tuple[bytearray, int]:
        """Write the fill's lines in chunks and sync once; the new bitmap and the line count."""
        done = bytearray(self._done)
        parts: list[bytes] = []
        size = written = 0
        end = self._end
        for index, custom_id in item.requests:
            if not 0 <= index < self.total:
                raise out_of_range(self.path, index, self.total)
            bit = 1 << (index & 7)
            if done[index >> 3] & bit:
                continue
            done[index >> 3] |= bit
            line = JournalEntry.from_error(index, custom_id, item.code, item.message).journal_line()
            parts.append(line)
            self._index.add(index, end, line, False)
            end += len(line)
            size += len(line)
            written += 1
            if size >= CHUNK:
                self._write(b"".join(parts))
                parts.clear()
                size = 0
        if parts:
            self._write(b"".join(parts))
        if written:
            _sync_fd(self._fd)
        self._end = end
        return done, written

    async def _fill(self, item: _Fill) -> None:
        try:
            done, written = await anyio.to_thread.run_sync(self._fill_sync, item)
        except BaseException as exc:
            # Some lines may be on disk, uncounted: the journal cannot go on consistently.
            self._fail(exc, [item], f"writing the journal {self.path} failed")
            if not isinstance(exc, Exception):
                raise
            return
        self._done = done
        self._failed += written
        self._unexecuted += written
        if not item.future.done():
            item.future.set_result(written)

    def _failure(self) -> JournalError:
        assert self._error is not None
        error = JournalError(self._error.message, os_error=self._error.os_error)
        error.__cause__ = self._error.__cause__
        return error

    def _fail(self, exc: BaseException, group: Iterable[_Append | _Fill], what: str) -> None:
        """Stop the journal: fail ``group`` and everything queued."""
        if self._error is None:
            os_error = exc if isinstance(exc, OSError) else None
            self._error = JournalError(f"{what}: {exc!r}", os_error=os_error)
            self._error.__cause__ = exc
            log.error("%s", self._error.message)
        waiting: list[_Append | _Fill] = [*group, *self._queue]
        self._queue.clear()
        for item in waiting:
            if item.future is not None and not item.future.done():
                item.future.set_exception(self._failure())
                item.future.exception()  # retrieved, even if its caller stopped waiting
