"""Wire models: the JSON objects of the OpenAI Files and Batch APIs, field for field.

Every optional field of the official schema is always serialised (``null`` where empty), because
some clients read keys without ``.get``. The status enums are ``Literal`` types.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from batchd.core.lifecycle import BatchStatus

__all__ = [
    "BATCH_ENDPOINTS",
    "MESSAGES_ENDPOINT",
    "UPLOAD_PURPOSES",
    "AnthropicErrorDetail",
    "AnthropicErrorResponse",
    "Batch",
    "BatchError",
    "BatchErrors",
    "BatchList",
    "BatchRequestCounts",
    "BatchStatus",
    "BatchUsage",
    "DeletedMessageBatch",
    "ErrorDetail",
    "ErrorResponse",
    "FileDeleted",
    "FileList",
    "FileObject",
    "FilePurpose",
    "InputTokensDetails",
    "ListPage",
    "MessageBatch",
    "MessageBatchList",
    "MessageBatchRequestCounts",
    "Model",
    "ModelList",
    "OutputTokensDetails",
    "rfc3339",
]

# The one definition of the statuses (and their groups) is the lifecycle's.
FilePurpose = Literal[
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
    "evals",
]
# What a client may upload; the *_output purposes are written by batchd itself.
UPLOAD_PURPOSES: tuple[FilePurpose, ...] = (
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
)

# The endpoints a batch may target on this server, with the request-body fields each one requires.
#: Anthropic's Messages API: served synchronously, and as lines of batches.
MESSAGES_ENDPOINT = "/v1/messages"

BATCH_ENDPOINTS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("messages",),
    "/v1/completions": ("prompt",),
    "/v1/embeddings": ("input",),
    "/v1/responses": ("input",),
    "/v1/moderations": ("input",),
    MESSAGES_ENDPOINT: ("max_tokens", "messages"),  # Anthropic's Messages (batchd extension)
}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileObject(_Wire):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: FilePurpose
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None


class FileDeleted(_Wire):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchError(_Wire):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(_Wire):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(_Wire):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(_Wire):
    cached_tokens: int = 0


class OutputTokensDetails(_Wire):
    reasoning_tokens: int = 0


class BatchUsage(_Wire):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int = 0


class Batch(_Wire):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    usage: BatchUsage | None
    metadata: dict[str, str] | None


class ListPage(_Wire):
    """A cursor page: ``first_id``/``last_id`` are ``null`` on an empty page."""

    object: Literal["list"] = "list"
    data: list[Any]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileList(ListPage):
    data: list[FileObject]


class BatchList(ListPage):
    data: list[Batch]


class Model(_Wire):
    """A model of the routing table, as ``GET /v1/models`` lists it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    shutdown_date: str | None = None


class ModelList(_Wire):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(_Wire):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Wire):
    """The OpenAI error envelope of every 4xx and 5xx answer."""

    error: ErrorDetail


class AnthropicErrorDetail(_Wire):
    type: str
    message: str


class AnthropicErrorResponse(_Wire):
    """Anthropic's error envelope: every 4xx and 5xx answer of ``/v1/messages…``."""

    type: Literal["error"]
    error: AnthropicErrorDetail
    request_id: str | None = None


def rfc3339(epoch: int) -> str:
    """A Unix time as Anthropic's APIs write times: RFC 3339 in UTC, ``Z``."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class MessageBatchRequestCounts(_Wire):
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class MessageBatch(_Wire):
    """Anthropic's Message Batch (``/v1/messages/batches``); times are RFC 3339 strings."""

    id: str
    type: Literal["message_batch"]
    processing_status: Literal["in_progress", "canceling", "ended"]
    request_counts: MessageBatchRequestCounts
    ended_at: str | None
    created_at: str
    expires_at: str | None
    archived_at: str | None
    cancel_initiated_at: str | None
    results_url: str | None


class MessageBatchList(_Wire):
    data: list[MessageBatch]
    has_more: bool
    first_id: str | None
    last_id: str | None


class DeletedMessageBatch(_Wire):
    id: str
    type: Literal["message_batch_deleted"]
