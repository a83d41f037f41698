"""``/v1/files``: upload, list, retrieve, delete, content."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse

from batchd.api.deps import ProjectDep, Services, ServicesDep
from batchd.api.openapi import answers
from batchd.api.params import (
    EXPIRY_SECONDS_SCHEMA,
    check_expiry_seconds,
    parse_choice,
    parse_cursor,
    parse_integer,
    parse_limit,
)
from batchd.api.responses import JSONResponse, file_object
from batchd.api.upload import UploadCap, parse_upload, too_large
from batchd.errors import APIError, InvalidRequest, NotFound
from batchd.ids import is_file_id, new_file_id
from batchd.protocol import UPLOAD_PURPOSES, FileDeleted, FileList, FileObject, ListPage
from batchd.store import FileRecord
from batchd.validation import validation_key

__all__ = ["router"]

router = APIRouter(prefix="/v1/files", tags=["files"])


def _not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="id")


async def _live_file(svc: Services, file_id: str, project: str) -> FileRecord:
    if not is_file_id(file_id):
        raise _not_found(file_id)
    record = await svc.store.get_file(file_id, now=svc.now(), project=project)
    if record is None:
        raise _not_found(file_id)
    return record


def _expiry_seconds(fields: dict[str, str]) -> int | None:
    """``expires_after[anchor]``/``[seconds]``, or the dotted ``expires_after.seconds`` form."""
    anchor = fields.get("expires_after[anchor]", fields.get("expires_after.anchor"))
    seconds = fields.get("expires_after[seconds]", fields.get("expires_after.seconds"))
    if anchor is None and seconds is None:
        return None
    if anchor is None:
        raise InvalidRequest(
            "Missing required parameter: 'expires_after.anchor'.",
            param="expires_after.anchor",
            code="missing_required_parameter",
        )
    if anchor != "created_at":
        raise InvalidRequest(
            f"Invalid value for 'expires_after.anchor': {anchor!r}. Supported values are: "
            "'created_at'.",
            param="expires_after.anchor",
            code="invalid_value",
        )
    if seconds is None:
        raise InvalidRequest(
            "Missing required parameter: 'expires_after.seconds'.",
            param="expires_after.seconds",
            code="missing_required_parameter",
        )
    value = parse_integer(seconds)
    if value is None:
        raise InvalidRequest(
            f"Invalid type for 'expires_after.seconds': expected an integer, got {seconds!r}.",
            param="expires_after.seconds",
            code="invalid_type",
        )
    return check_expiry_seconds(value, param="expires_after.seconds")


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": EXPIRY_SECONDS_SCHEMA,
                    },
                }
            }
        },
    }
}

_CONTENT = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


async def _upload_cap(svc: Services, project: str) -> UploadCap | None:
    """The project's bound on an upload: its ``max_upload_bytes``, or what is left of its
    ``max_stored_bytes`` when that is less."""
    limits = svc.settings.limits_for(project)
    cap = None if limits.max_upload_bytes is None else UploadCap(limits.max_upload_bytes)
    if limits.max_stored_bytes is not None:
        used = await svc.store.stored_bytes(project, now=svc.now())
        room = max(0, limits.max_stored_bytes - used)
        if cap is None or room < cap.limit:
            cap = UploadCap(
                room,
                InvalidRequest(
                    f"This project's file storage is full: it may keep {limits.max_stored_bytes:,}"
                    f" bytes of files and holds {used:,}. Delete files it no longer needs "
                    "(batch inputs and outputs count too), then upload again.",
                    param="file",
                    code="storage_quota_exceeded",
                ),
            )
    return cap


@router.post(
    "",
    summary="Upload a file",
    openapi_extra=_UPLOAD_BODY,
    responses=answers(FileObject, 400, 413),
)
async def create_file(request: Request, svc: ServicesDep, project: ProjectDep) -> Response:
    settings = svc.settings
    upload = await parse_upload(request, svc.storage, settings, await _upload_cap(svc, project))
    writer = upload.writer
    try:
        purpose = upload.fields.get("purpose")
        if purpose is None:
            raise InvalidRequest(
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if purpose not in UPLOAD_PURPOSES:
            supported = ", ".join(f"'{p}'" for p in UPLOAD_PURPOSES)
            raise InvalidRequest(
                f"Invalid value for 'purpose': {purpose!r}. Supported values are: {supported}.",
                param="purpose",
                code="invalid_value",
            )
        if writer is None or upload.filename is None:
            raise InvalidRequest(
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        seconds = _expiry_seconds(upload.fields)
        limit = settings.max_file_bytes(purpose)
        if writer.size > limit:
            raise too_large(limit, purpose)
        if (
            purpose == "batch"
            and settings.require_jsonl_extension
            and not upload.filename.endswith(".jsonl")
        ):
            raise InvalidRequest("Invalid file format for Batch API. Must be .jsonl")
    except BaseException:
        if writer is not None:
            await writer.abort()
        raise
    if seconds is None and purpose == "batch":
        seconds = settings.batch_file_expiry_seconds
    validation = None
    if upload.validator is not None and purpose == "batch":
        finished = upload.validator.finish()
        if finished is not None:
            endpoint, result = finished
            validation = result.to_json(validation_key(settings, endpoint))
    file_id = new_file_id()
    blob = await writer.commit(file_id)
    now = svc.now()
    record = FileRecord(
        id=file_id,
        bytes=blob.size,
        created_at=now,
        expires_at=now + seconds if seconds else None,
        filename=upload.filename,
        purpose=purpose,
        sha256=blob.sha256,
        project=project,
    )
    try:
        await svc.store.create_file(record, validation=validation)
    except BaseException:
        await svc.storage.delete(file_id)
        raise
    return JSONResponse(file_object(record))


@router.get("", summary="List files", responses=answers(FileList, 400))
async def list_files(
    svc: ServicesDep,
    project: ProjectDep,
    after: Annotated[str | None, Query()] = None,
    limit: Annotated[str | None, Query(description="1 to 10000, default 10000")] = None,
    order: Annotated[str | None, Query(description="asc or desc (default)")] = None,
    purpose: Annotated[str | None, Query()] = None,
) -> Response:
    size = parse_limit(limit, default=10_000, maximum=10_000)
    direction = parse_choice(order, name="order", choices=("asc", "desc"), default="desc")
    after_seq = await parse_cursor(
        after,
        kind="file",
        well_formed=is_file_id,
        lookup=lambda file_id: svc.store.file_cursor(file_id, project=project),
    )
    records, has_more = await svc.store.list_files(
        now=svc.now(),
        purpose=purpose,
        after_seq=after_seq,
        limit=size,
        order="asc" if direction == "asc" else "desc",
        project=project,
    )
    data = [file_object(r) for r in records]
    page = ListPage(
        data=data,
        first_id=records[0].id if records else None,
        last_id=records[-1].id if records else None,
        has_more=has_more,
    )
    return JSONResponse(page.model_dump())


@router.get("/{file_id}", summary="Retrieve a file", responses=answers(FileObject, 404))
async def retrieve_file(file_id: str, svc: ServicesDep, project: ProjectDep) -> Response:
    return JSONResponse(file_object(await _live_file(svc, file_id, project)))


@router.delete("/{file_id}", summary="Delete a file", responses=answers(FileDeleted, 404))
async def delete_file(file_id: str, svc: ServicesDep, project: ProjectDep) -> Response:
    if not is_file_id(file_id):
        raise _not_found(file_id)
    record = await svc.store.delete_file(file_id, now=svc.now(), project=project)
    if record is None:
        raise _not_found(file_id)
    svc.manager.purge_soon()
    return JSONResponse(FileDeleted(id=file_id, deleted=True).model_dump())


@router.get(
    "/{file_id}/content",
    summary="Retrieve a file's content",
    responses=answers(None, 404, 500, ok_content=_CONTENT),
)
async def file_content(file_id: str, svc: ServicesDep, project: ProjectDep) -> Response:
    record = await _live_file(svc, file_id, project)
    if not await svc.storage.exists(record.id):
        raise APIError(
            f"The content of file {record.id} is missing from this server's storage; upload the "
            "file again.",
            code="file_content_missing",
        )
    return StreamingResponse(
        svc.storage.read_chunks(record.id),
        media_type="application/octet-stream",
        headers={
            "content-length": str(record.bytes),
            "content-disposition": f'attachment; filename="{_header_safe(record.filename)}"',
            "x-content-type-options": "nosniff",
            "cache-control": "no-store",
        },
    )


def _header_safe(filename: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
