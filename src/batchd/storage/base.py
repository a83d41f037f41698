"""The storage interface."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from batchd.errors import StorageFault, StorageFull, StorageReadOnly

__all__ = [
    "BlobInfo",
    "BlobTooLarge",
    "BlobWriter",
    "Storage",
    "new_digest",
    "storage_fault",
]

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def storage_fault(exc: OSError, what: str) -> StorageFault:
    """``exc`` (raised while ``what``, e.g. "writing the result journal") as the
    :class:`~batchd.errors.StorageFault` that names its cause: full, read-only, or failing."""
    cause = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return StorageFull(f"{what} failed: no space left ({cause})")
    if exc.errno in _READ_ONLY:
        return StorageReadOnly(f"{what} failed: the storage is read-only ({cause})")
    return StorageFault(f"{what} failed: {cause}")


class BlobTooLarge(Exception):
    """A write went past the writer's size limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"blob larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int
    sha256: str


class BlobWriter(Protocol):
    """A blob being written: ``write`` (cheap, synchronous), then ``commit`` or ``abort``."""

    @property
    def size(self) -> int: ...

    def write(self, data: bytes) -> None:
        """Append ``data``; raises :class:`BlobTooLarge` past the limit, and a
        :class:`~batchd.errors.StorageFault` once the disk refused a write."""

    async def commit(self, key: str) -> BlobInfo:
        """Make the blob durable under ``key`` (:class:`~batchd.errors.StorageFault` if the
        disk refuses it; the partial blob is then gone)."""
        ...

    def commit_sync(self, key: str) -> BlobInfo:
        """:meth:`commit` for callers already off the event loop."""
        ...

    async def abort(self) -> None:
        """Throw the partial blob away."""

    def abort_sync(self) -> None:
        """:meth:`abort` for callers already off the event loop."""


class Storage(Protocol):
    async def open(self) -> None: ...

    def writer(
        self, *, max_bytes: int | None = None, background: bool = False, digest: bool = True
    ) -> BlobWriter:
        """A new blob; ``background=True`` hashes and writes in a thread of the writer's own;
        ``digest=False`` leaves the hash out (``BlobInfo.sha256`` is empty: for output files,
        whose hash nothing reads, 0.3-0.7 s per 500 MB saved)."""
        ...

    def read_chunks(self, key: str, *, chunk_size: int = ...) -> AsyncIterator[bytes]: ...

    def open_binary(self, key: str) -> BinaryIO:
        """A blocking binary reader; use it off the event loop."""
        ...

    async def delete(self, key: str) -> None: ...

    async def exists(self, key: str) -> bool: ...

    def probe(self) -> None:
        """Raise the :class:`~batchd.errors.StorageFault` that keeps a small write from
        succeeding now, if one does (blocking: use it off the event loop)."""


class _NoDigest:
    """A hash that is not computed (``writer(digest=False)``)."""

    def update(self, data: bytes, /) -> None:
        return None

    def hexdigest(self) -> str:
        return ""


def new_digest(enabled: bool) -> Any:
    """What a writer hashes its bytes with: SHA-256, or nothing."""
    return hashlib.sha256() if enabled else _NoDigest()
