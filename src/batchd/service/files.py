"""Files: upload (the project's size and stored-bytes limits), get, list, delete, content."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from batchd.config import Settings
from batchd.core.files import Ingest, add_file
from batchd.errors import (
    APIError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    StorageQuotaExceeded,
)
from batchd.ids import is_file_id, new_file_id
from batchd.metrics import Metrics
from batchd.protocol import UPLOAD_PURPOSES, FilePurpose
from batchd.service.batches import EngineHooks
from batchd.service.pages import Page, resolve_cursor
from batchd.storage import Storage
from batchd.store import FileRecord, Order, Store

__all__ = ["FileService", "UploadCap", "too_large"]

_PURPOSES: dict[str, FilePurpose] = {purpose: purpose for purpose in UPLOAD_PURPOSES}


def too_large(limit: int, purpose: str | None) -> PayloadTooLarge:
    what = f"files with purpose '{purpose}'" if purpose else "uploaded files"
    size = f"{limit} bytes" if limit < 1024 * 1024 else f"{limit / (1024 * 1024):g} MiB"
    return PayloadTooLarge(
        f"The file is too large: {what} may be at most {size}. Split it into smaller files.",
        param="file",
        code="file_too_large",
    )


def _storage_full(limit: int, used: int) -> InvalidRequest:
    return InvalidRequest(
        f"This project's file storage is full: it may keep {limit:,} bytes of files and holds "
        f"{used:,}. Delete files it no longer needs (batch inputs and outputs count too), then "
        "upload again.",
        param="file",
        code="storage_quota_exceeded",
    )


@dataclass(frozen=True, slots=True)
class UploadCap:
    """A project's bound on the file of an upload, below the server's own: ``limit`` bytes;
    ``error`` is raised past it (``None``: the usual "file too large")."""

    limit: int
    error: APIError | None = None


async def _found(file_id: str, lookup: Callable[[], Awaitable[FileRecord | None]]) -> FileRecord:
    """What ``lookup`` finds of a well-formed ``file_id``, or a 404."""
    record = await lookup() if is_file_id(file_id) else None
    if record is None:
        raise NotFound(f"No such File object: {file_id}", param="id")
    return record


class FileService:
    """Every operation on files that a dialect or the command line offers."""

    def __init__(
        self,
        store: Store,
        storage: Storage,
        settings: Settings,
        engine: EngineHooks,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.metrics = metrics

    def now(self) -> int:
        return int(self.clock())

    async def upload_cap(self, project: str) -> UploadCap | None:
        """The project's bound on an upload: its ``max_upload_bytes``, or what is left of its
        ``max_stored_bytes`` when that is less (checked again, exactly, when the file is
        recorded)."""
        limits = self.settings.limits_for(project)
        cap = None if limits.max_upload_bytes is None else UploadCap(limits.max_upload_bytes)
        if limits.max_stored_bytes is not None:
            used = await self.store.stored_bytes(project, now=self.now())
            room = max(0, limits.max_stored_bytes - used)
            if cap is None or room < cap.limit:
                cap = UploadCap(room, _storage_full(limits.max_stored_bytes, used))
        return cap

    def ingest(
        self,
        purpose: str | None,
        cap: UploadCap | None,
        *,
        hashed: bool = False,
        limit: int | None = None,
    ) -> Ingest:
        """Where the bytes of a new file go while they arrive: stored, and validated and indexed
        when ``purpose`` is ``batch``. ``purpose`` may be unknown (``None``) while the file
        streams in, when the client sent it after the file. ``hashed``: their SHA-256 is known
        before the commit (:attr:`Ingest.hasher`). ``limit``: the file's size limit instead of
        the purpose's (a file batchd writes itself)."""
        if limit is None:
            limit = self.settings.max_file_bytes(purpose)
        if cap is not None:
            limit = min(limit, cap.limit)
        return Ingest(
            self.storage,
            self.settings,
            max_bytes=limit,
            validate=purpose == "batch",
            metrics=self.metrics,
            hashed=hashed,
        )

    async def create(
        self,
        project: str,
        ingest: Ingest,
        *,
        filename: str,
        purpose: str,
        expires_after: int | None = None,
        keep: bool = False,
        limit: int | None = None,
    ) -> FileRecord:
        """Commit ``ingest`` as a new file of ``project`` (the ingest is aborted on any error).
        ``expires_after``: seconds; ``None`` takes the default of the purpose, unless ``keep``.
        ``limit``: as for :meth:`ingest`."""
        try:
            checked = self._check_upload(ingest, filename, purpose, limit)
        except BaseException:
            await ingest.abort()
            raise
        if expires_after is None and checked == "batch" and not keep:
            expires_after = self.settings.batch_file_expiry_seconds
        ingested = await ingest.commit(new_file_id())
        limits = self.settings.limits_for(project)
        try:
            return await add_file(
                self.store,
                self.storage,
                ingested,
                filename=filename,
                purpose=checked,
                project=project,
                now=self.now(),
                expires_after=expires_after,
                max_stored_bytes=limits.max_stored_bytes,
            )
        except StorageQuotaExceeded as exc:
            assert limits.max_stored_bytes is not None
            raise _storage_full(limits.max_stored_bytes, exc.used) from None

    @staticmethod
    def check_purpose(purpose: str) -> FilePurpose:
        """``purpose`` if a client may upload a file for it (400 ``invalid_value`` if not)."""
        checked = _PURPOSES.get(purpose)
        if checked is None:
            supported = ", ".join(f"'{p}'" for p in UPLOAD_PURPOSES)
            raise InvalidRequest(
                f"Invalid value for 'purpose': {purpose!r}. Supported values are: {supported}.",
                param="purpose",
                code="invalid_value",
            )
        return checked

    def _check_upload(
        self, ingest: Ingest, filename: str, purpose: str, limit: int | None
    ) -> FilePurpose:
        checked = self.check_purpose(purpose)
        if limit is None:
            limit = self.settings.max_file_bytes(checked)
        if ingest.size > limit:
            raise too_large(limit, checked)
        if (
            checked == "batch"
            and self.settings.require_jsonl_extension
            and not filename.endswith(".jsonl")
        ):
            raise InvalidRequest("Invalid file format for Batch API. Must be .jsonl")
        return checked

    async def get(self, project: str, file_id: str) -> FileRecord:
        return await _found(
            file_id, lambda: self.store.get_file(file_id, now=self.now(), project=project)
        )

    async def list(
        self,
        project: str,
        *,
        purpose: str | None,
        after: str | None,
        limit: int,
        order: Order,
    ) -> Page[FileRecord]:
        after_seq = await resolve_cursor(
            after,
            kind="file",
            well_formed=is_file_id,
            lookup=lambda file_id: self.store.file_cursor(file_id, project=project),
        )
        records, has_more = await self.store.list_files(
            now=self.now(),
            purpose=purpose,
            after_seq=after_seq,
            limit=limit,
            order=order,
            project=project,
        )
        return Page(records, has_more)

    async def delete(self, project: str, file_id: str) -> FileRecord:
        record = await _found(
            file_id, lambda: self.store.delete_file(file_id, now=self.now(), project=project)
        )
        self.engine.files_deleted()
        return record

    async def content(self, project: str, file_id: str) -> tuple[FileRecord, AsyncIterator[bytes]]:
        """The file and its bytes, streamed (1 MiB chunks)."""
        record = await self.get(project, file_id)
        if not await self.storage.exists(record.id):
            raise APIError(
                f"The content of file {record.id} is missing from this server's storage; upload "
                "the file again.",
                code="file_content_missing",
            )
        return record, self.storage.read_chunks(record.id)
