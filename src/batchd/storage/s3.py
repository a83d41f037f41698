"""Blob storage in an S3-compatible bucket (AWS S3, MinIO, SeaweedFS…), through obstore.

obstore, the Python binding of Rust's ``object_store``, has a blocking and an async API (batchd
reads blobs and commits batch outputs in worker threads, and serves downloads on the event loop),
multipart uploads, ranged reads, and retries with backoff built in; aiobotocore would need async
everywhere and multipart code of batchd's own.

Blob ``key`` is the object ``<prefix>/<key>``; nothing is under a real key before ``commit``:

- a blob of at most one part (``part_size``, 8 MiB) is kept in memory and PUT under its key by
  ``commit``;
- a larger one is streamed while it is written, with a multipart upload, to a partial object
  ``<prefix>/.partial/<random>``, which ``commit`` copies under its key (the bucket copies it; S3
  has no rename, and the key is known only at ``commit``) before deleting it. An aborted upload
  is aborted in the bucket too; one cut short by a crash leaves an incomplete multipart upload
  that only the bucket's lifecycle rule (``AbortIncompleteMultipartUpload``) removes, and
  ``open`` removes partial objects older than an hour.

Every failure of the bucket becomes a :class:`~batchd.errors.StorageFault`: one that does not
answer (connection refused or timed out, a 5xx after the retries) a
:class:`~batchd.errors.StorageUnreachable`, within seconds (connect timeout 5 s, request timeout
30 s, 3 retries within 10 s); one that refuses (credentials, a missing bucket) a plain
:class:`~batchd.errors.StorageFault` that says so. A missing key is a :class:`FileNotFoundError`,
as in :class:`~batchd.storage.LocalStorage`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import io
import logging
import os
import queue
import re
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO

import anyio
import anyio.to_thread
import obstore
from obstore.exceptions import (
    BaseError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from batchd.errors import ConfigError, StorageFault, StorageUnreachable
from batchd.storage.base import BlobInfo, BlobTooLarge, new_digest

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from obstore import GetOptions
    from obstore.store import ClientConfig, RetryConfig, S3Config
    from typing_extensions import Buffer

__all__ = ["PART_SIZE", "S3Storage", "S3Writer", "parse_s3_url"]

log = logging.getLogger("batchd.storage")

PART_SIZE = 8 * 1024 * 1024  # a multipart upload's part; a smaller blob is one PUT
_PIECE = 1024 * 1024  # small writes are joined into pieces of this size for the upload thread
_QUEUED = 8  # pieces waiting for the upload thread
_CONCURRENCY = 4  # parts in flight per upload
_READ_MIN = 1024 * 1024  # a ranged read after a seek
_READ_MAX = 8 * 1024 * 1024  # the read-ahead of a sequential reader, doubled from _READ_MIN
_DOWNLOAD_RANGE = 8 * 1024 * 1024  # one GET of read_chunks (each well within the timeout)
_PROBE_BYTES = 4096
_PARTIAL = ".partial"
_STALE_PARTIAL = timedelta(hours=1)

# The keys LocalStorage accepts (no "/": a key is one object name under the prefix).
_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_STATUS = re.compile(r"status code: (\d{3})")
_EMPTY = 416  # the answer to a range of an empty object
_FAILURES = (BaseError, OSError)
"""What obstore raises when the bucket fails (a missing key, a FileNotFoundError, is handled
before)."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` as ``(bucket, prefix)``, the prefix without its slashes
    (``""`` for none); a :class:`ValueError` says what is wrong with ``url``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "s3":
        raise ValueError(f"{url!r} is not an s3:// URL; expected s3://bucket or s3://bucket/prefix")
    if "?" in rest or "#" in rest:
        raise ValueError(f"{url!r} has a query or a fragment; expected s3://bucket[/prefix]")
    bucket, _, prefix = rest.partition("/")
    if _BUCKET.fullmatch(bucket) is None:
        raise ValueError(
            f"{bucket!r} (in {url!r}) is not a valid bucket name: 3 to 63 lowercase letters, "
            "digits, dots and hyphens"
        )
    prefix = prefix.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError(f"the prefix of {url!r} has an empty, '.' or '..' segment")
    return bucket, prefix


def _status(exc: BaseException) -> int | None:
    """The HTTP status the store answered, as obstore's message says it."""
    found = _STATUS.search(str(exc))
    return int(found.group(1)) if found is not None else None


def _range(start: int, end: int, etag: str | None) -> GetOptions:
    options: GetOptions = {"range": (start, end)}
    if etag is not None:
        options["if_match"] = etag
    return options


def _cause(exc: BaseException) -> str:
    """The first line of an obstore error (its Rust debug dump follows), without the body of
    the store's answer."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.split(": <?xml", 1)[0]
    return text if len(text) <= 300 else text[:297] + "..."


class _Signal(enum.Enum):
    END = "end"  # commit: complete the upload
    ABORT = "abort"  # abort: abort it


class _Aborted(Exception):
    """Raised in a multipart upload's source, so that obstore aborts the upload."""


class S3Writer:
    """A blob on its way to the bucket: ``write`` (synchronous), then ``commit`` or ``abort``.

    The first ``part_size`` bytes are held in memory; a blob that stays within them is one PUT at
    ``commit``. Past them a thread of the writer's own streams the blob, with a multipart upload,
    to a partial object (parts of ``part_size``, ``max_concurrency`` of them in flight), while
    the caller goes on writing: at most ``_QUEUED`` pieces of 1 MiB wait for it (``write``
    blocks meanwhile), and a failed upload surfaces at the next ``write`` or at ``commit``. With
    ``background=True`` that thread also hashes (a blob held in memory is hashed at ``commit``).
    """

    def __init__(
        self, storage: S3Storage, max_bytes: int | None, *, background: bool, digest: bool = True
    ) -> None:
        self._storage = storage
        self._max = max_bytes
        self._background = background
        self._hash = new_digest(digest)
        self._size = 0
        self._pending: list[bytes] = []  # written, not handed on yet
        self._pending_size = 0
        self._done = False  # committed or aborted
        self._partial = f"{_PARTIAL}/{os.getpid()}-{os.urandom(8).hex()}"
        self._queue: queue.Queue[bytes | _Signal] | None = None
        self._thread: threading.Thread | None = None
        self._abort = threading.Event()
        self._ended = False  # the upload's source saw END or ABORT
        self._error: BaseException | None = None

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("write after commit or abort")
        if self._error is not None:  # the upload failed: say so now, not at commit
            raise self._fault(self._error)
        self._size += len(data)
        if self._max is not None and self._size > self._max:
            raise BlobTooLarge(self._max)
        if not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        if not self._background:
            self._hash.update(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._thread is None:
            if self._pending_size > self._storage.part_size:
                self._start_upload()
        elif self._pending_size >= _PIECE:
            self._hand_on()

    def _fault(self, exc: BaseException) -> BaseException:
        if isinstance(exc, _FAILURES):
            return self._storage.fault(exc, "storing a file")
        return exc

    # -- the upload thread ---------------------------------------------------------------------

    def _start_upload(self) -> None:
        self._queue = queue.Queue(maxsize=_QUEUED)
        self._thread = threading.Thread(target=self._upload, name="blob-upload", daemon=True)
        self._thread.start()
        self._hand_on()

    def _hand_on(self) -> None:
        assert self._queue is not None
        piece = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        self._queue.put(piece)

    def _upload(self) -> None:
        storage = self._storage
        try:
            obstore.put(
                storage.store,
                self._partial,
                self._pieces(),
                use_multipart=True,
                chunk_size=storage.part_size,
                max_concurrency=storage.max_concurrency,
            )
        except _Aborted:
            pass
        except BaseException as exc:  # re-raised by write or commit
            self._error = exc
            assert self._queue is not None
            while not (self._ended or self._abort.is_set()):  # let write and commit go on
                self._ended = isinstance(self._queue.get(), _Signal)

    def _pieces(self) -> Iterator[bytes]:
        """The upload's source: the pieces handed on, until ``commit`` or ``abort``."""
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is _Signal.END:
                self._ended = True
                return
            if item is _Signal.ABORT or self._abort.is_set():
                self._ended = isinstance(item, _Signal)
                raise _Aborted
            assert isinstance(item, bytes)
            if self._background:
                self._hash.update(item)
            yield item

    def _finish_upload(self, signal: _Signal) -> None:
        """Send ``signal`` to the upload thread and wait for it."""
        assert self._queue is not None
        assert self._thread is not None
        if signal is _Signal.ABORT:
            self._abort.set()  # seen before the next piece, should the queue be full
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(signal)
        else:
            self._queue.put(signal)
        self._thread.join()

    def _discard_partial(self) -> None:
        try:
            obstore.delete(self._storage.store, self._partial)
        except _FAILURES as exc:
            log.warning("could not delete the partial upload %s: %s", self._partial, _cause(exc))

    # -- commit, abort -------------------------------------------------------------------------

    def commit_sync(self, key: str) -> BlobInfo:
        if self._done:
            raise RuntimeError("commit after commit or abort")
        path = self._storage.path(key)
        if self._error is not None:
            self.abort_sync()
            raise self._fault(self._error) from self._error
        store = self._storage.store
        if self._thread is None:
            self._done = True
            data = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
            if self._background:
                self._hash.update(data)
            try:
                obstore.put(store, path, data, use_multipart=False)
            except _FAILURES as exc:
                raise self._fault(exc) from exc
        else:
            if self._pending:
                self._hand_on()
            self._finish_upload(_Signal.END)
            self._done = True
            if self._error is not None:
                raise self._fault(self._error) from self._error
            try:
                obstore.copy(store, self._partial, path)
            except _FAILURES as exc:
                raise self._fault(exc) from exc
            finally:
                self._discard_partial()
        return BlobInfo(key=key, size=self._size, sha256=self._hash.hexdigest())

    async def commit(self, key: str) -> BlobInfo:
        return await anyio.to_thread.run_sync(self.commit_sync, key)

    def abort_sync(self) -> None:
        if self._done:
            return
        self._done = True
        self._pending, self._pending_size = [], 0
        if self._thread is not None:
            self._finish_upload(_Signal.ABORT)

    async def abort(self) -> None:
        if self._thread is None:
            self.abort_sync()
            return
        with anyio.CancelScope(shield=True):  # the upload is aborted even if the caller is not
            await anyio.to_thread.run_sync(self.abort_sync)


class _ObjectReader(io.RawIOBase):
    """An object read with ranged GETs, each of its version only (``If-Match`` its ETag): a
    sequential reader's reads grow from ``_READ_MIN`` to ``_READ_MAX`` (the read-ahead is kept
    here), a seek elsewhere starts again from ``_READ_MIN``. ``first``: the object's first
    bytes, read when it was opened."""

    def __init__(
        self, storage: S3Storage, key: str, size: int, etag: str | None, first: Buffer
    ) -> None:
        super().__init__()
        self._storage = storage
        self._key = key
        self._size = size
        self._etag = etag
        self._pos = 0
        self._window = _READ_MIN
        self._cache = memoryview(first)
        self._cache_start = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        target = memoryview(buffer).cast("B")
        want = min(len(target), self._size - self._pos)
        if want <= 0:
            return 0
        at = self._pos - self._cache_start
        if not 0 <= at < len(self._cache):
            self._fetch(want)
            at = 0
        count = min(want, len(self._cache) - at)
        target[:count] = self._cache[at : at + count]
        self._pos += count
        return count

    def _fetch(self, want: int) -> None:
        sequential = self._pos == self._cache_start + len(self._cache)
        self._window = min(self._window * 2, _READ_MAX) if sequential else _READ_MIN
        end = min(self._pos + max(want, self._window), self._size)
        self._cache = memoryview(b"")  # released before the next one arrives
        self._cache = memoryview(self._storage.read_range(self._key, self._pos, end, self._etag))
        self._cache_start = self._pos
        if not self._cache:
            raise StorageFault(f"reading a file failed: {self._key} ended before its size")

    def close(self) -> None:
        self._cache = memoryview(b"")
        super().close()


class S3Storage:
    """Blobs as objects of the bucket of ``url`` (``s3://bucket[/prefix]``), under its prefix.

    Credentials and the region come from the environment as for any AWS client
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` or
    ``AWS_DEFAULT_REGION``) unless given; the endpoint from ``endpoint_url`` or
    ``AWS_ENDPOINT_URL`` (AWS itself when neither is set). Requests are path-style
    (``endpoint/bucket/key``, as MinIO and SeaweedFS want), and plain ``http://`` endpoints are
    allowed.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        max_retries: int = 3,
        part_size: int = PART_SIZE,
        max_concurrency: int = _CONCURRENCY,
    ) -> None:
        try:
            self.bucket, self.prefix = parse_s3_url(url)
        except ValueError as exc:
            raise ConfigError(f"invalid storage URL: {exc}") from exc
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 parts are at least 5 MiB")
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        config: S3Config = {}
        if self.endpoint_url is not None:
            config["endpoint"] = self.endpoint_url
        if region is not None:
            config["region"] = region
        if access_key_id is not None:
            config["access_key_id"] = access_key_id
        if secret_access_key is not None:
            config["secret_access_key"] = secret_access_key
        client: ClientConfig = {
            "allow_http": True,  # only an http:// endpoint uses it
            "connect_timeout": timedelta(seconds=connect_timeout),
            "timeout": timedelta(seconds=request_timeout),
        }
        retry: RetryConfig = {
            "max_retries": max_retries,
            "retry_timeout": timedelta(seconds=10),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2),
                "base": 2,
            },
        }
        try:
            self.store = S3Store(
                self.bucket,
                prefix=self.prefix or None,
                config=config,
                client_options=client,
                retry_config=retry,
            )
        except (BaseError, ValueError) as exc:
            raise ConfigError(f"invalid S3 storage settings for {self.url}: {_cause(exc)}") from exc

    @property
    def where(self) -> str:
        """The bucket and prefix, with the endpoint when it is not AWS's, for messages."""
        return f"{self.url} at {self.endpoint_url}" if self.endpoint_url else self.url

    def fault(self, exc: BaseException, what: str) -> StorageFault:
        """``exc``, raised by obstore while ``what`` (e.g. "storing a file"), as the
        :class:`~batchd.errors.StorageFault` that says why: the bucket does not answer
        (:class:`~batchd.errors.StorageUnreachable`), or refuses."""
        cause = _cause(exc)
        status = _status(exc)
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or status in (401, 403):
            return StorageFault(
                f"{what} failed: the object store {self.where} refused batchd's credentials "
                f"(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or their permissions ({cause})"
            )
        if status is not None and 400 <= status < 500 and status != 429:
            if "NoSuchBucket" in str(exc):
                return StorageFault(f"{what} failed: the bucket of {self.where} does not exist")
            return StorageFault(f"{what} failed: the object store {self.where} refused ({cause})")
        return StorageUnreachable(
            f"{what} failed: the object store {self.where} cannot be reached ({cause})"
        )

    def path(self, key: str) -> str:
        """The object name of ``key`` under the prefix; a :class:`ValueError` for a key that
        :class:`~batchd.storage.LocalStorage` would refuse too."""
        if _KEY.fullmatch(key) is None or key in {".", ".."}:
            raise ValueError(f"invalid blob key: {key!r}")
        return key

    async def open(self) -> None:
        """Check that the bucket answers (and lets batchd list it), and remove the partial
        objects that a crash left more than an hour ago."""
        try:
            listing = await obstore.list_with_delimiter_async(self.store, _PARTIAL)
        except _FAILURES as exc:
            raise self.fault(exc, "opening the file storage") from exc
        stale = datetime.now(UTC) - _STALE_PARTIAL
        leftovers = [meta["path"] for meta in listing["objects"] if meta["last_modified"] < stale]
        if leftovers:
            try:
                await obstore.delete_async(self.store, leftovers)
            except _FAILURES as exc:
                log.warning("could not delete partial uploads in %s: %s", self.where, _cause(exc))

    def writer(
        self, *, max_bytes: int | None = None, background: bool = False, digest: bool = True
    ) -> S3Writer:
        return S3Writer(self, max_bytes, background=background, digest=digest)

    def open_binary(self, key: str) -> BinaryIO:
        """A blocking, seekable reader with a 1 MiB buffer over ranged GETs (see
        :class:`_ObjectReader`); its first MiB is read at once."""
        path = self.path(key)
        first: Buffer = b""
        try:
            try:
                result = obstore.get(self.store, path, options={"range": (0, _READ_MIN)})
                meta, first = result.meta, result.bytes()
            except _FAILURES as exc:
                if _status(exc) != _EMPTY:
                    raise
                meta = obstore.head(self.store, path)  # an empty object has no range
        except _FAILURES as exc:
            raise self._read_fault(path, exc) from exc
        raw = _ObjectReader(self, path, meta["size"], meta["e_tag"], first)
        return io.BufferedReader(raw, buffer_size=_READ_MIN)

    def read_range(self, path: str, start: int, end: int, etag: str | None) -> Buffer:
        """Bytes ``start`` to ``end`` of object ``path`` (of version ``etag``), blocking."""
        try:
            return obstore.get(self.store, path, options=_range(start, end, etag)).bytes()
        except _FAILURES as exc:
            raise self._read_fault(path, exc) from exc

    def _read_fault(self, key: str, exc: BaseException) -> BaseException:
        if isinstance(exc, FileNotFoundError):
            return FileNotFoundError(errno.ENOENT, "No such blob", f"{self.url}/{key}")
        if isinstance(exc, PreconditionError):
            return StorageFault(f"reading a file failed: {key} was replaced while it was read")
        return self.fault(exc, "reading a file")

    async def read_chunks(self, key: str, *, chunk_size: int = _READ_MIN) -> AsyncIterator[bytes]:
        """The blob in ``chunk_size`` chunks, from GETs of 8 MiB (a small blob: one GET)."""
        path = self.path(key)
        step = max(chunk_size, _DOWNLOAD_RANGE // chunk_size * chunk_size)
        try:
            result = await obstore.get_async(self.store, path, options={"range": (0, step)})
            meta, data = result.meta, await result.bytes_async()
        except _FAILURES as exc:
            if _status(exc) != _EMPTY:
                raise self._read_fault(path, exc) from exc
            return  # an empty object has no range
        position = 0
        while True:
            view = memoryview(data)
            if not view:
                raise StorageFault(f"reading a file failed: {key} ended before its size")
            for at in range(0, len(view), chunk_size):
                yield bytes(view[at : at + chunk_size])
            position += len(view)
            if position >= meta["size"]:
                return
            end = min(position + step, meta["size"])
            try:
                result = await obstore.get_async(
                    self.store, path, options=_range(position, end, meta["e_tag"])
                )
                data = await result.bytes_async()
            except _FAILURES as exc:
                raise self._read_fault(path, exc) from exc

    async def delete(self, key: str) -> None:
        try:
            await obstore.delete_async(self.store, self.path(key))
        except FileNotFoundError:
            pass
        except _FAILURES as exc:
            raise self.fault(exc, "deleting a file") from exc

    async def exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self.store, self.path(key))
        except FileNotFoundError:
            return False
        except _FAILURES as exc:
            raise self.fault(exc, "reading a file") from exc
        return True

    def probe(self) -> None:
        path = f"{_PARTIAL}/probe-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            obstore.put(self.store, path, bytes(_PROBE_BYTES), use_multipart=False)
            obstore.delete(self.store, path)
        except _FAILURES as exc:
            raise self.fault(exc, "storing a file") from exc
