"""JSON responses rendered with orjson, and the conversion of records to wire objects."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from batchd.api.deps import Dialect
from batchd.protocol import (
    Batch,
    BatchErrors,
    BatchRequestCounts,
    BatchUsage,
    FileObject,
    ListPage,
)
from batchd.service import Page
from batchd.store import BatchRecord, FileRecord

__all__ = ["JSONResponse", "batch_object", "file_object", "list_page"]


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


#: Validation codes that Azure names otherwise.
_AZURE_CODES = {"invalid_url": "url_mismatch"}


def file_object(record: FileRecord, dialect: Dialect = "openai") -> dict[str, Any]:
    """OpenAI's answers say ``processed`` (a batch on a file that failed validation fails with
    the errors); Azure's say ``error``, with why in ``status_details``."""
    azure = dialect == "azure"
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        expires_at=record.expires_at,
        filename=record.filename,
        purpose=record.purpose,
        status=record.status if azure else "processed",
        status_details=record.status_details if azure else None,
    ).model_dump()


def batch_object(record: BatchRecord, dialect: Dialect = "openai") -> dict[str, Any]:
    errors = record.errors
    if errors and dialect == "azure":
        errors = [{**e, "code": _AZURE_CODES.get(e["code"], e["code"])} for e in errors]
    return Batch(
        id=record.id,
        endpoint=record.endpoint,
        model=record.model,
        errors=BatchErrors.model_validate({"data": errors}) if errors else None,
        input_file_id=record.input_file_id,
        completion_window=record.completion_window,
        status=record.status,
        output_file_id=record.output_file_id,
        error_file_id=record.error_file_id,
        created_at=record.created_at,
        in_progress_at=record.in_progress_at,
        expires_at=record.expires_at,
        finalizing_at=record.finalizing_at,
        completed_at=record.completed_at,
        failed_at=record.failed_at,
        expired_at=record.expired_at,
        cancelling_at=record.cancelling_at,
        cancelled_at=record.cancelled_at,
        request_counts=BatchRequestCounts(
            total=record.total, completed=record.completed, failed=record.failed
        ),
        usage=BatchUsage.model_validate(record.usage) if record.usage else None,
        metadata=record.metadata,
    ).model_dump()


def list_page(data: list[dict[str, Any]], page: Page[Any]) -> dict[str, Any]:
    """A list object of wire objects ``data`` (rendered from ``page``'s records, each with an
    ``id``)."""
    return ListPage(
        data=data,
        first_id=data[0]["id"] if data else None,
        last_id=data[-1]["id"] if data else None,
        has_more=page.has_more,
    ).model_dump()
