"""Anthropic's Message Batches API: ``/v1/messages/batches`` (create, list, retrieve, cancel,
delete, results), for Anthropic's SDKs unchanged (``client.messages.batches``).

Authentication, ``anthropic-version`` and the error envelope are those of
:mod:`batchd.api.anthropic`; the work is done by
:class:`~batchd.service.message_batches.MessageBatchService`.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response, StreamingResponse

from batchd.api.anthropic import anthropic_version
from batchd.api.deps import ProjectDep, Services, ServicesDep, project
from batchd.api.idempotent import idempotency_key, once_streamed
from batchd.api.openapi import answers, json_body
from batchd.api.params import anthropic_page, one_cursor, parse_limit
from batchd.api.responses import JSONResponse
from batchd.protocol import (
    AnthropicErrorResponse,
    DeletedMessageBatch,
    MessageBatch,
    MessageBatchList,
)
from batchd.service.message_batches import (
    MessageBatchService,
    StoredRequests,
    message_batch_object,
    too_large,
)
from batchd.store import BatchRecord

__all__ = ["router"]

router = APIRouter(
    prefix="/messages/batches",
    tags=["anthropic"],
    dependencies=[Depends(project), Depends(anthropic_version)],
)


def _answers(
    ok: type[MessageBatch | MessageBatchList | DeletedMessageBatch] | None,
    *errors: int,
    ok_content: dict[str, object] | None = None,
) -> dict[int | str, dict[str, object]]:
    # 400 on every route: a missing or malformed anthropic-version
    return answers(ok, 400, *errors, ok_content=ok_content, envelope=AnthropicErrorResponse)


def _service(svc: Services) -> MessageBatchService:
    return MessageBatchService(svc.batches, svc.files, svc.settings)


def _answer(request: Request, svc: Services, batch: BatchRecord) -> Response:
    return JSONResponse(_object(request, svc, batch))


def _object(request: Request, svc: Services, batch: BatchRecord) -> dict[str, object]:
    return message_batch_object(batch, str(request.base_url), now=svc.batches.now())


_CREATE_BODY = json_body(
    required=["requests"],
    properties={
        "requests": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["custom_id", "params"],
                "properties": {
                    "custom_id": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                    "params": {
                        "type": "object",
                        "required": ["model", "max_tokens", "messages"],
                    },
                },
            },
        }
    },
)


@router.post(
    "",
    name="create_message_batch",
    summary="Create a Message Batch (Anthropic's Message Batches API)",
    description="The inline `requests` become a batch of `/v1/messages` lines. An "
    "`Idempotency-Key` header (a batchd extension, as on `POST /v1/batches`) makes a retried "
    "create return the first call's answer instead of a second batch.",
    openapi_extra=_CREATE_BODY,
    responses=_answers(MessageBatch, 400, 404, 409, 413, 429, 507),
)
async def create_message_batch(request: Request, svc: ServicesDep, project: ProjectDep) -> Response:
    limit = svc.settings.message_batch_max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    service = _service(svc)
    keyed = idempotency_key(request, svc)
    if keyed is None:
        return _answer(request, svc, await service.create(project, request.stream()))

    async def create(stored: StoredRequests) -> bytes:
        return orjson.dumps(_object(request, svc, await service.create_stored(project, stored)))

    return await once_streamed(
        request,
        keyed,
        project,
        lambda: service.store(project, request.stream(), hashed=True),
        lambda stored: stored.digest or "",
        lambda stored: service.discard(project, stored),
        create,
    )


@router.get(
    "",
    name="list_message_batches",
    summary="List Message Batches, newest first",
    responses=_answers(MessageBatchList, 400),
)
async def list_message_batches(
    request: Request,
    svc: ServicesDep,
    project: ProjectDep,
    before_id: Annotated[str | None, Query()] = None,
    after_id: Annotated[str | None, Query()] = None,
    limit: Annotated[str | None, Query(description="1 to 1000, default 20")] = None,
) -> Response:
    size = parse_limit(limit, default=20, maximum=1000)
    one_cursor(after_id, before_id)
    page = await _service(svc).list(project, before_id=before_id, after_id=after_id, limit=size)
    data = [_object(request, svc, batch) for batch in page.data]
    return JSONResponse(anthropic_page(data, page.has_more))


@router.get(
    "/{batch_id}",
    name="retrieve_message_batch",
    summary="Retrieve a Message Batch",
    responses=_answers(MessageBatch, 404),
)
async def retrieve_message_batch(
    batch_id: str, request: Request, svc: ServicesDep, project: ProjectDep
) -> Response:
    return _answer(request, svc, await _service(svc).get(project, batch_id))


@router.post(
    "/{batch_id}/cancel",
    name="cancel_message_batch",
    summary="Cancel a Message Batch",
    responses=_answers(MessageBatch, 404, 409, 507),
)
async def cancel_message_batch(
    batch_id: str, request: Request, svc: ServicesDep, project: ProjectDep
) -> Response:
    return _answer(request, svc, await _service(svc).cancel(project, batch_id))


@router.delete(
    "/{batch_id}",
    name="delete_message_batch",
    summary="Delete an ended Message Batch and its results",
    responses=_answers(DeletedMessageBatch, 400, 404, 507),
)
async def delete_message_batch(batch_id: str, svc: ServicesDep, project: ProjectDep) -> Response:
    deleted = await _service(svc).delete(project, batch_id)
    return JSONResponse({"id": deleted.id, "type": "message_batch_deleted"})


@router.get(
    "/{batch_id}/results",
    name="message_batch_results",
    summary="Stream the results of an ended Message Batch (JSONL)",
    responses=_answers(
        None,
        400,
        404,
        ok_content={"application/x-jsonl": {"schema": {"type": "string", "format": "binary"}}},
    ),
)
async def message_batch_results(batch_id: str, svc: ServicesDep, project: ProjectDep) -> Response:
    lines = await _service(svc).results(project, batch_id)
    return StreamingResponse(
        lines,
        media_type="application/x-jsonl",
        headers={"cache-control": "no-store", "x-content-type-options": "nosniff"},
    )
