"""Blob storage in a local directory."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread

from batchd.storage.base import BlobInfo, BlobTooLarge, new_digest, storage_fault

__all__ = ["PROBE_BYTES", "LocalStorage", "LocalWriter", "fsync_dir", "probe_writable"]

_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")
CHUNK = 1024 * 1024
_QUEUED = 16


PROBE_BYTES = 256 * 1024  # written and removed to tell that a storage fault is gone


def probe_writable(directory: Path, what: str) -> None:
    """Write, sync and remove a small file in ``directory``; raises the
    :class:`~batchd.errors.StorageFault` that says why it cannot (full, read-only) while
    ``what`` (e.g. "writing the result journal")."""
    path = directory / f".probe-{os.getpid()}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(bytes(PROBE_BYTES))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise storage_fault(exc, what) from exc


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalWriter:
    """Writes to ``tmp/`` while hashing; ``commit`` fsyncs and renames into ``blobs/``.

    With ``background=True`` a thread of its own hashes and writes (both release the GIL) while
    the caller goes on, e.g. validating the same bytes; at most ``_QUEUED`` chunks wait for it,
    and a disk error surfaces at ``commit``.
    """

    def __init__(
        self, storage: LocalStorage, max_bytes: int | None, *, background: bool, digest: bool = True
    ) -> None:
        self._storage = storage
        self._max = max_bytes
        self._tmp = storage.tmp_dir / f"{os.getpid()}-{os.urandom(8).hex()}.part"
        try:
            self._fh: BinaryIO | None = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            raise storage_fault(exc, "storing a file") from exc
        self._hash = new_digest(digest)
        self._size = 0
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if background:
            self._queue = queue.Queue(maxsize=_QUEUED)
            self._thread = threading.Thread(target=self._drain, name="blob-writer", daemon=True)
            self._thread.start()

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if self._fh is None:
            raise RuntimeError("write after commit or abort")
        if self._error is not None:  # the writer thread failed: say so now, not at commit
            raise self._fault(self._error)
        self._size += len(data)
        if self._max is not None and self._size > self._max:
            raise BlobTooLarge(self._max)
        if self._queue is not None:
            self._queue.put(data)
        else:
            try:
                self._store(data)
            except OSError as exc:
                raise self._fault(exc) from exc

    @staticmethod
    def _fault(exc: BaseException) -> BaseException:
        return storage_fault(exc, "storing a file") if isinstance(exc, OSError) else exc

    def _store(self, data: bytes) -> None:
        assert self._fh is not None
        self._hash.update(data)
        self._fh.write(data)

    def _drain(self) -> None:
        assert self._queue is not None
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._store(data)
                except BaseException as exc:  # re-raised by commit
                    self._error = exc

    def _stop(self) -> None:
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = self._thread = None

    def commit_sync(self, key: str) -> BlobInfo:
        if self._fh is None:
            raise RuntimeError("commit after commit or abort")
        self._stop()
        if self._error is not None:
            self.abort_sync()
            raise self._fault(self._error) from self._error
        fh, self._fh = self._fh, None
        try:
            try:
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fh.close()
            os.replace(self._tmp, self._storage.path(key))
            fsync_dir(self._storage.blob_dir)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise storage_fault(exc, "storing a file") from exc
        return BlobInfo(key=key, size=self._size, sha256=self._hash.hexdigest())

    async def commit(self, key: str) -> BlobInfo:
        return await anyio.to_thread.run_sync(self.commit_sync, key)

    def abort_sync(self) -> None:
        self._stop()
        if self._fh is not None:
            fh, self._fh = self._fh, None
            with contextlib.suppress(OSError):  # a full disk fails the flush of close()
                fh.close()
        self._tmp.unlink(missing_ok=True)

    async def abort(self) -> None:
        self.abort_sync()


class LocalStorage:
    """Blobs as files under ``root/blobs``; partial writes under ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.tmp_dir = root / "tmp"

    async def open(self) -> None:
        """Create the directories and remove partial writes left by a crash."""
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.glob("*.part"):
            leftover.unlink(missing_ok=True)

    def path(self, key: str) -> Path:
        if _KEY.fullmatch(key) is None or key in {".", ".."}:
            raise ValueError(f"invalid blob key: {key!r}")
        return self.blob_dir / key

    def writer(
        self, *, max_bytes: int | None = None, background: bool = False, digest: bool = True
    ) -> LocalWriter:
        return LocalWriter(self, max_bytes, background=background, digest=digest)

    def open_binary(self, key: str) -> BinaryIO:
        # A 1 MiB buffer instead of the default 8 KiB: line-by-line readers (validation) then
        # refill it once per ~500 lines instead of splitting lines across many small reads.
        return open(self.path(key), "rb", buffering=CHUNK)

    async def read_chunks(self, key: str, *, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        fh = await anyio.to_thread.run_sync(self.open_binary, key)
        try:
            while chunk := await anyio.to_thread.run_sync(fh.read, chunk_size):
                yield chunk
        finally:
            fh.close()

    async def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def probe(self) -> None:
        probe_writable(self.tmp_dir, "storing a file")
