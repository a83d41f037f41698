"""Files made from blobs, in one place: an upload, the input of a local run and a batch's output
and error files all become File records here.

A new file's bytes go through an :class:`Ingest`: written to storage (hashed and counted on the
way) and, for ``purpose=batch``, validated for the endpoint of its first request and indexed
(:mod:`batchd.core.request_index`) in the same pass, so that creating a batch on it reads it
again only when the validation no longer applies. :func:`add_file` then records the committed
blob as a File row of its project (the project's stored-bytes limit checked in the same
transaction); :func:`publish_output` records a blob the engine wrote, once however often a crash
makes it run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from batchd.config import Settings
from batchd.core.request_index import RequestIndexWriter, index_key
from batchd.metrics import Metrics
from batchd.protocol import FilePurpose
from batchd.storage import BlobInfo, BlobWriter, Storage
from batchd.store import BatchRecord, FileRecord, Store
from batchd.validation import UploadValidator, validation_key

__all__ = ["Ingest", "Ingested", "add_file", "publish_output", "purge_blobs"]

log = logging.getLogger("batchd")


@dataclass(frozen=True, slots=True)
class Ingested:
    """A committed blob and, for a batch file, its validation (``None`` when the file did not
    name a batch endpoint in its first line: validated when a batch is created on it)."""

    blob: BlobInfo
    validation: dict[str, Any] | None


class Ingest:
    """The bytes of a new file on their way to storage: :meth:`write` them as they come, then
    :meth:`commit` (or :meth:`abort`). ``validate``: check and index them as a batch file.

    ``background``: the blob is hashed and written in a thread of its own, overlapping the
    validation (see :class:`~batchd.storage.BlobWriter`).
    """

    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        *,
        max_bytes: int,
        validate: bool,
        background: bool = True,
        metrics: Metrics | None = None,
        hashed: bool = False,
    ) -> None:
        self.settings = settings
        self.hasher = hashlib.sha256() if hashed else None
        """With ``hashed``: the SHA-256 of the bytes written so far (known before the commit)."""
        self._metrics = metrics
        self._validating = 0.0  # seconds spent validating, for the metrics
        self._storage = storage
        self._writer: BlobWriter = storage.writer(max_bytes=max_bytes, background=background)
        self._index_blob: BlobWriter | None = None
        self._index: RequestIndexWriter | None = None
        self._validator: UploadValidator | None = None
        if validate:
            try:
                self._index_blob = storage.writer(background=background)
            except BaseException:
                self._writer.abort_sync()
                raise
            self._index = RequestIndexWriter(self._index_blob)
            self._validator = UploadValidator.for_settings(settings, self._index)

    @property
    def size(self) -> int:
        return self._writer.size

    def write(self, data: bytes) -> None:
        """Append ``data`` (raises :class:`~batchd.storage.BlobTooLarge` past the limit, and a
        :class:`~batchd.errors.StorageFault` as soon as the disk refuses the bytes)."""
        self._writer.write(data)
        if self.hasher is not None:
            self.hasher.update(data)
        if self._validator is not None:
            started = time.perf_counter()
            self._validator.feed(data)
            self._validating += time.perf_counter() - started

    async def commit(self, file_id: str) -> Ingested:
        """Make the blob durable under ``file_id`` (and its request index, when it validated)."""
        validation = None
        indexed = False
        if self._validator is not None:
            started = time.perf_counter()
            finished = self._validator.finish()
            if finished is not None:
                endpoint, result = finished
                if self._metrics is not None:
                    seconds = self._validating + time.perf_counter() - started
                    self._metrics.validated_file("upload", result.total, seconds)
                validation = result.to_json(validation_key(self.settings, endpoint))
                indexed = result.ok
        if not indexed:
            await self._abort_index()
        try:
            blob = await self._writer.commit(file_id)
        except BaseException:
            await self._abort_index()
            raise
        if indexed and self._index is not None and self._index_blob is not None:
            try:
                self._index.finish()
                await self._index_blob.commit(index_key(file_id))
            except BaseException:
                await self._abort_index()
                await self._storage.delete(file_id)
                raise
        return Ingested(blob, validation)

    async def abort(self) -> None:
        """Throw the partial blob (and index) away."""
        await self._writer.abort()
        await self._abort_index()

    async def _abort_index(self) -> None:
        if self._index_blob is not None:
            blob, self._index_blob = self._index_blob, None
            with contextlib.suppress(Exception):
                await blob.abort()


async def add_file(
    store: Store,
    storage: Storage,
    ingested: Ingested,
    *,
    filename: str,
    purpose: FilePurpose,
    project: str,
    now: int,
    expires_after: int | None,
    max_stored_bytes: int | None = None,
) -> FileRecord:
    """Record a committed blob as a file of ``project``; on any failure (the project's
    ``max_stored_bytes`` included, checked in the same transaction) the blob is deleted, so no
    stored bytes outlive a file that was never listed."""
    blob = ingested.blob
    record = _record(blob, filename, purpose, project, now, expires_after)
    details = _validation_errors(ingested.validation)
    if details is not None:
        record = dataclasses.replace(record, status="error", status_details=details)
    try:
        await store.create_file(
            record, validation=ingested.validation, max_stored_bytes=max_stored_bytes
        )
    except BaseException:
        with contextlib.suppress(Exception):
            await purge_blobs(storage, blob.key)
        raise
    return record


async def publish_output(
    store: Store,
    blob: BlobInfo,
    batch: BatchRecord,
    *,
    filename: str,
    now: int,
    default_expiry: int | None,
) -> FileRecord:
    """Record a blob the engine wrote as a ``batch_output`` file of ``batch``'s project
    (idempotent: a finalization repeated after a crash finds the row it made)."""
    existing = await store.get_file(blob.key, now=now)
    if existing is not None:
        return existing
    seconds = batch.output_expires_after or default_expiry
    record = _record(blob, filename, "batch_output", batch.project, now, seconds)
    await store.create_file(record)
    return record


_ERRORS_IN_DETAILS = 3


def _validation_errors(validation: dict[str, Any] | None) -> str | None:
    """What a failed upload validation found, in a sentence: the count and the first errors."""
    if validation is None or not validation.get("error_count"):
        return None
    errors = validation.get("errors") or []
    first = "; ".join(
        (f"line {e['line']}: " if e.get("line") else "") + f"{e.get('message')} ({e.get('code')})"
        for e in errors[:_ERRORS_IN_DETAILS]
    )
    count = validation["error_count"]
    return (
        f"Validation found {count} error{'s' if count != 1 else ''}: {first}. A batch on this "
        "file fails with all of them (in its errors); fix the file and upload it again."
    )


def _record(
    blob: BlobInfo,
    filename: str,
    purpose: FilePurpose,
    project: str,
    now: int,
    expires_after: int | None,
) -> FileRecord:
    return FileRecord(
        id=blob.key,
        bytes=blob.size,
        created_at=now,
        expires_at=now + expires_after if expires_after else None,
        filename=filename,
        purpose=purpose,
        sha256=blob.sha256,
        project=project,
    )


async def purge_blobs(storage: Storage, file_id: str) -> None:
    """Delete a file's blob and what batchd keeps beside it (the request index)."""
    await storage.delete(file_id)
    await storage.delete(index_key(file_id))
