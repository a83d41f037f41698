"""Domain records: what the store keeps, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from batchd.core.lifecycle import BatchEnding, BatchStatus
from batchd.protocol import FilePurpose

__all__ = ["ApiKeyRecord", "BatchRecord", "FileRecord"]


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    sha256: str
    expires_at: int | None = None
    status: Literal["processed", "error"] = "processed"
    """``error`` for a batch file whose validation while it was uploaded found errors (Azure
    shows it; OpenAI's answers keep ``processed``, as a batch on it fails with the errors)."""
    deleted_at: int | None = None
    purged_at: int | None = None
    project: str = "default"
    status_details: str | None = None
    """Why the status is ``error``: the count and the first errors."""


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    expires_at: int | None = None
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    usage: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    output_expires_after: int | None = None
    project: str = "default"
    enqueued_tokens: int = 0
    dialect: str = "openai"
    """The API that created the batch: ``openai`` (``/v1``, ``/openai/v1``) or ``azure`` (the
    ``api-version`` routes, whose batches always publish an error file, empty on success)."""
    ending: BatchEnding | None = None
    """How the running batch ends, once decided (see :mod:`batchd.core.lifecycle`)."""
    unexecuted: int = 0
    """Of the ``failed`` requests, those recorded as ``batch_cancelled`` or ``batch_expired``
    (they never ran): set when the batch ends."""
    deleted_at: int | None = None
    """When the batch was deleted (Anthropic's ``DELETE`` of an ended batch): it is hidden from
    every API from then on."""
    lease_epoch: int = 0
    """Raised by every claim of the batch: its holder passes it back with each change, which
    the store refuses once another engine has claimed the batch (fencing)."""


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A key made with ``batchd keys create``: only its SHA-256 is stored."""

    sha256: str
    project: str
    created_at: int
    name: str | None = None
    revoked_at: int | None = None
    admin: bool = False
    """Sees every project in the dashboard (``batchd keys create --admin``)."""
