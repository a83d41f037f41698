"""``/files``: upload, list, retrieve, delete, content (under ``/v1`` and Azure's prefixes)."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse

from batchd.api.deps import DialectDep, ProjectDep, ServicesDep
from batchd.api.idempotent import idempotency_key, once_streamed
from batchd.api.openapi import answers
from batchd.api.params import (
    EXPIRY_SECONDS_SCHEMA,
    check_expiry_seconds,
    parse_choice,
    parse_integer,
    parse_limit,
)
from batchd.api.responses import JSONResponse, file_object, list_page
from batchd.api.upload import parse_upload
from batchd.core.files import Ingest
from batchd.errors import InvalidRequest
from batchd.protocol import UPLOAD_PURPOSES, FileDeleted, FileList, FileObject
from batchd.runtime import Services
from batchd.service.idempotency import digest_of
from batchd.store.records import FileRecord

__all__ = ["router"]

router = APIRouter(prefix="/files", tags=["files"])


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


@router.post(
    "",
    summary="Upload a file",
    openapi_extra=_UPLOAD_BODY,
    responses=answers(FileObject, 400, 413, 507),
)
async def create_file(
    request: Request, svc: ServicesDep, project: ProjectDep, dialect: DialectDep
) -> Response:
    keyed = idempotency_key(request, svc)
    if keyed is None:
        upload = await _upload(request, svc, project, hashed=False)
        return JSONResponse(file_object(await _create(svc, project, upload), dialect))

    def digest(upload: _Upload) -> str:
        ingest, filename, purpose, seconds = upload
        assert ingest.hasher is not None
        fields = (purpose, filename, str(seconds), ingest.hasher.hexdigest(), dialect)
        return digest_of(field.encode() for field in fields)

    async def discard(upload: _Upload) -> None:
        await upload[0].abort()

    async def create(upload: _Upload) -> bytes:
        return orjson.dumps(file_object(await _create(svc, project, upload), dialect))

    return await once_streamed(
        request,
        keyed,
        project,
        lambda: _upload(request, svc, project, hashed=True),
        digest,
        discard,
        create,
    )


_Upload = tuple[Ingest, str, str, int | None]  # the bytes, filename, purpose, expires_after


async def _upload(request: Request, svc: Services, project: str, *, hashed: bool) -> _Upload:
    """The upload's file streamed into storage and its fields checked (400s)."""
    files = svc.files
    cap = await files.upload_cap(project)
    upload = await parse_upload(
        request, svc.settings, lambda p: files.ingest(p, cap, hashed=hashed), cap
    )
    ingest = upload.ingest
    try:
        purpose = upload.fields.get("purpose")
        if purpose is None:
            raise InvalidRequest(
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        files.check_purpose(purpose)
        if ingest is None or upload.filename is None:
            raise InvalidRequest(
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        seconds = _expiry_seconds(upload.fields)
    except BaseException:
        if ingest is not None:
            await ingest.abort()
        raise
    return ingest, upload.filename, purpose, seconds


async def _create(svc: Services, project: str, upload: _Upload) -> FileRecord:
    ingest, filename, purpose, seconds = upload
    return await svc.files.create(
        project, ingest, filename=filename, purpose=purpose, expires_after=seconds
    )


@router.get("", summary="List files", responses=answers(FileList, 400))
async def list_files(
    svc: ServicesDep,
    project: ProjectDep,
    dialect: DialectDep,
    after: Annotated[str | None, Query()] = None,
    limit: Annotated[str | None, Query(description="1 to 10000, default 10000")] = None,
    order: Annotated[str | None, Query(description="asc or desc (default)")] = None,
    purpose: Annotated[str | None, Query()] = None,
) -> Response:
    size = parse_limit(limit, default=10_000, maximum=10_000)
    direction = parse_choice(order, name="order", choices=("asc", "desc"), default="desc")
    page = await svc.files.list(
        project,
        purpose=purpose,
        after=after,
        limit=size,
        order="asc" if direction == "asc" else "desc",
    )
    return JSONResponse(list_page([file_object(r, dialect) for r in page.data], page))


@router.get("/{file_id}", summary="Retrieve a file", responses=answers(FileObject, 404))
async def retrieve_file(
    file_id: str, svc: ServicesDep, project: ProjectDep, dialect: DialectDep
) -> Response:
    return JSONResponse(file_object(await svc.files.get(project, file_id), dialect))


@router.delete("/{file_id}", summary="Delete a file", responses=answers(FileDeleted, 404, 507))
async def delete_file(file_id: str, svc: ServicesDep, project: ProjectDep) -> Response:
    await svc.files.delete(project, file_id)
    return JSONResponse(FileDeleted(id=file_id, deleted=True).model_dump())


@router.get(
    "/{file_id}/content",
    summary="Retrieve a file's content",
    responses=answers(None, 404, 500, ok_content=_CONTENT),
)
async def file_content(file_id: str, svc: ServicesDep, project: ProjectDep) -> Response:
    record, chunks = await svc.files.content(project, file_id)
    return StreamingResponse(
        chunks,
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
