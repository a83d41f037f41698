"""The store interface: what the service layer and the engine need from a metadata store.

Every method is one transaction. Writes that a limit guards take the limit with them
(:class:`BatchAdmission`, a :class:`~batchd.core.lifecycle.TokenQuota`, ``max_stored_bytes``) and
check it in the same transaction as the write, under a lock on the project's row, so that the
check stays exact when several processes share one database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from batchd.core.lifecycle import BatchEvent, BatchStatus, StatusChange
from batchd.store.records import ApiKeyRecord, BatchRecord, FileRecord

__all__ = ["BatchAdmission", "Order", "Store"]

Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class BatchAdmission:
    """The project limits a new batch must pass (``None``: no limit): batches not yet terminal,
    and batches created at or after ``since`` (a sliding hour)."""

    max_active: int | None
    max_per_hour: int | None
    since: int

    @property
    def unlimited(self) -> bool:
        return self.max_active is None and self.max_per_hour is None


class Store(Protocol):
    """The metadata store (files, batches, their events, API keys)."""

    async def open(self) -> None:
        """Bring the schema to the newest migration."""

    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    # -- files ----------------------------------------------------------------------------------

    async def create_file(
        self,
        record: FileRecord,
        *,
        validation: dict[str, Any] | None = None,
        max_stored_bytes: int | None = None,
    ) -> None:
        """Insert a file; with ``max_stored_bytes``, only if the project's live files and this
        one fit in it (:class:`~batchd.errors.StorageQuotaExceeded` otherwise)."""

    async def get_file_validation(self, file_id: str) -> dict[str, Any] | None: ...
    async def get_file(
        self, file_id: str, *, now: int, project: str | None = None
    ) -> FileRecord | None: ...
    async def file_cursor(self, file_id: str, *, project: str | None = None) -> int | None: ...
    async def list_files(
        self,
        *,
        now: int,
        purpose: str | None,
        after_seq: int | None,
        limit: int,
        order: Order,
        project: str | None = None,
    ) -> tuple[list[FileRecord], bool]: ...
    async def delete_file(
        self, file_id: str, *, now: int, project: str | None = None
    ) -> FileRecord | None: ...
    async def files_to_purge(self, *, now: int, limit: int) -> list[FileRecord]:
        """Deleted or expired files not yet purged that no active batch reads."""
        ...

    async def mark_purged(self, file_id: str, *, now: int) -> None: ...
    async def stored_bytes(self, project: str, *, now: int) -> int: ...

    # -- batches --------------------------------------------------------------------------------

    async def create_batch(self, record: BatchRecord, *, admission: BatchAdmission | None) -> None:
        """Insert a ``validating`` batch and its creation event, if ``admission`` lets it in
        (:class:`~batchd.errors.BatchLimitReached` otherwise). Use
        :func:`batchd.core.lifecycle.create`."""

    async def get_batch(
        self, batch_id: str, *, project: str | None = None
    ) -> BatchRecord | None: ...
    async def batch_cursor(self, batch_id: str, *, project: str | None = None) -> int | None: ...
    async def list_batches(
        self,
        *,
        after_seq: int | None,
        limit: int,
        project: str | None = None,
        before_seq: int | None = None,
        dialect: str | None = None,
    ) -> tuple[list[BatchRecord], bool]:
        """Batches not deleted, newest first: older than ``after_seq``, or the ``limit`` just
        newer than ``before_seq``; of one ``dialect`` when given. ``(page, has_more)``."""

    async def delete_batch(
        self, batch_id: str, *, now: int, project: str | None = None
    ) -> BatchRecord | None:
        """Mark an ended batch deleted; ``None`` when it is missing, not ended or deleted."""

    async def batches_with_status(self, statuses: Iterable[BatchStatus]) -> list[BatchRecord]: ...
    async def batch_status_counts(self) -> dict[str, int]:
        """How many batches have each status (those with none are left out)."""

    async def apply(self, change: StatusChange) -> BatchRecord | None:
        """Apply a lifecycle change (compare-and-set, the event in the same transaction); the
        batch after it, or ``None`` when the batch is missing or in another status. Use
        :func:`batchd.core.lifecycle.transition`."""

    async def events(
        self, *, after_seq: int = 0, limit: int = 1000, batch_id: str | None = None
    ) -> list[BatchEvent]:
        """The events after ``after_seq``, oldest first (of one batch, when given)."""
        ...

    # -- leases (the engine) --------------------------------------------------------------------

    async def claim_batches(
        self, *, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[BatchRecord]: ...
    async def renew_lease(
        self, batch_id: str, *, owner: str, now: float, lease_seconds: float
    ) -> BatchRecord | None: ...
    async def release_lease(self, batch_id: str, *, owner: str) -> None: ...
    async def release_all_leases(self) -> int: ...
    async def record_progress(
        self, batch_id: str, *, owner: str, completed: int, failed: int, usage: dict[str, Any]
    ) -> None: ...

    # -- API keys -------------------------------------------------------------------------------

    async def create_api_key(self, record: ApiKeyRecord) -> None: ...
    async def find_api_key(self, sha256: str) -> ApiKeyRecord | None: ...
    async def list_api_keys(self) -> list[ApiKeyRecord]: ...
    async def revoke_api_key(self, sha256: str, *, now: int) -> bool: ...
    async def has_api_keys(self) -> bool: ...
