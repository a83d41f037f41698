"""``/batches``: create, list, retrieve, cancel (under ``/v1`` and Azure's prefixes)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from batchd.api.deps import DialectDep, ProjectDep, ServicesDep
from batchd.api.idempotent import run_once
from batchd.api.openapi import answers
from batchd.api.params import (
    EXPIRY_SECONDS_SCHEMA,
    check_expiry_seconds,
    parse_limit,
    read_json_object,
)
from batchd.api.responses import JSONResponse, batch_object, list_page
from batchd.errors import InvalidRequest
from batchd.protocol import BATCH_ENDPOINTS, Batch, BatchList
from batchd.service import NewBatch
from batchd.service.batches import COMPLETION_WINDOWS, MAX_METADATA_PAIRS, MAX_METADATA_VALUE
from batchd.service.idempotency import digest_of
from batchd.service.partial import PartialResults, Which
from batchd.service.retry import retry_batch

__all__ = ["router"]

router = APIRouter(prefix="/batches", tags=["batches"])

MAX_BODY_BYTES = 1024 * 1024
_CREATE_KEYS = {
    "input_file_id",
    "endpoint",
    "completion_window",
    "metadata",
    "output_expires_after",
}


def _type_name(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(value), "a value")


def _required_string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        raise InvalidRequest(
            f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter"
        )
    if not isinstance(value, str):
        raise InvalidRequest(
            f"Invalid type for '{key}': expected a string, but got {_type_name(value)} instead.",
            param=key,
            code="invalid_type",
        )
    return value


def _metadata(value: Any) -> dict[str, str] | None:
    """The ``metadata`` object's types (its limits are the service's)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"Invalid type for 'metadata': expected an object, but got {_type_name(value)} "
            "instead.",
            param="metadata",
            code="invalid_type",
        )
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidRequest(
                f"Invalid type for 'metadata.{key}': expected a string, but got "
                f"{_type_name(item)} instead.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
    return dict(value)


def _output_expires_after(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(
            "Invalid type for 'output_expires_after': expected an object with 'anchor' and "
            f"'seconds', but got {_type_name(value)} instead.",
            param="output_expires_after",
            code="invalid_type",
        )
    if value.get("anchor") != "created_at":
        raise InvalidRequest(
            "Invalid value for 'output_expires_after.anchor': supported values are: 'created_at'.",
            param="output_expires_after.anchor",
            code="invalid_value",
        )
    seconds = value.get("seconds")
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise InvalidRequest(
            "Invalid type for 'output_expires_after.seconds': expected an integer.",
            param="output_expires_after.seconds",
            code="invalid_type",
        )
    return check_expiry_seconds(seconds, param="output_expires_after.seconds")


_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input_file_id", "endpoint", "completion_window"],
                    "additionalProperties": False,
                    "properties": {
                        "input_file_id": {"type": "string"},
                        "endpoint": {"type": "string", "enum": list(BATCH_ENDPOINTS)},
                        "completion_window": {"type": "string", "enum": list(COMPLETION_WINDOWS)},
                        "metadata": {
                            "type": ["object", "null"],
                            "maxProperties": MAX_METADATA_PAIRS,
                            "additionalProperties": {
                                "type": "string",
                                "maxLength": MAX_METADATA_VALUE,
                            },
                        },
                        "output_expires_after": {
                            "type": "object",
                            "required": ["anchor", "seconds"],
                            "properties": {
                                "anchor": {"type": "string", "enum": ["created_at"]},
                                "seconds": EXPIRY_SECONDS_SCHEMA,
                            },
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    summary="Create a batch",
    openapi_extra=_CREATE_BODY,
    responses=answers(Batch, 400, 413, 429, 507),
)
async def create_batch(
    request: Request, svc: ServicesDep, project: ProjectDep, dialect: DialectDep
) -> Response:
    body = await read_json_object(request, max_bytes=MAX_BODY_BYTES, empty_is_object=True)
    for key in body:
        if key not in _CREATE_KEYS:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {key}",
                param=key,
                code="unknown_parameter",
            )
    new = NewBatch(
        input_file_id=_required_string(body, "input_file_id"),
        endpoint=_required_string(body, "endpoint"),
        completion_window=_required_string(body, "completion_window"),
        metadata=_metadata(body.get("metadata")),
        output_expires_after=_output_expires_after(body.get("output_expires_after")),
        dialect=dialect,
    )

    async def create() -> tuple[int, bytes]:
        return 200, orjson.dumps(batch_object(await svc.batches.create(project, new), dialect))

    def digest() -> str:  # the body with its keys sorted: the same JSON, whatever the order
        return digest_of([orjson.dumps(body, option=orjson.OPT_SORT_KEYS)])

    once = await run_once(request, svc, project, digest, create)
    if once is not None:
        return once
    return Response((await create())[1], media_type="application/json")


@router.get("", summary="List batches, newest first", responses=answers(BatchList, 400))
async def list_batches(
    svc: ServicesDep,
    project: ProjectDep,
    dialect: DialectDep,
    after: Annotated[str | None, Query()] = None,
    limit: Annotated[str | None, Query(description="1 to 100, default 20")] = None,
) -> Response:
    size = parse_limit(limit, default=20, maximum=100)
    page = await svc.batches.list(project, after=after, limit=size)
    return JSONResponse(list_page([batch_object(r, dialect) for r in page.data], page))


@router.get("/{batch_id}", summary="Retrieve a batch", responses=answers(Batch, 404))
async def retrieve_batch(
    batch_id: str, svc: ServicesDep, project: ProjectDep, dialect: DialectDep
) -> Response:
    return JSONResponse(batch_object(await svc.batches.get(project, batch_id), dialect))


@router.post(
    "/{batch_id}/cancel", summary="Cancel a batch", responses=answers(Batch, 404, 409, 507)
)
async def cancel_batch(
    batch_id: str, svc: ServicesDep, project: ProjectDep, dialect: DialectDep
) -> Response:
    return JSONResponse(batch_object(await svc.batches.cancel(project, batch_id), dialect))


@router.post(
    "/{batch_id}/retry",
    summary="Retry a batch's failed requests (batchd extension)",
    description="A new batch of the requests that ended in the error file of this ended batch "
    "with a retryable failure (HTTP 408, 409, 429 or 5xx, a timeout, a connection error, a "
    "cancel or expiry before they ran), or of every failed request with "
    '`{"all_errors": true}`; its metadata names this batch in `batchd_retry_of`.',
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {"all_errors": {"type": "boolean"}}}
                }
            },
        }
    },
    responses=answers(Batch, 400, 404, 409, 507),
)
async def retry_failures(
    batch_id: str, request: Request, svc: ServicesDep, project: ProjectDep, dialect: DialectDep
) -> Response:
    body = await read_json_object(request, max_bytes=MAX_BODY_BYTES, empty_is_object=True)
    for key in body:
        if key != "all_errors":
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {key}",
                param=key,
                code="unknown_parameter",
            )
    all_errors = body.get("all_errors", False)
    if not isinstance(all_errors, bool):
        raise InvalidRequest(
            f"Invalid type for 'all_errors': expected a boolean, got {_type_name(all_errors)}.",
            param="all_errors",
            code="invalid_type",
        )

    async def create() -> tuple[int, bytes]:
        retry = await retry_batch(svc.batches, svc.files, project, batch_id, all_errors=all_errors)
        return 200, orjson.dumps(batch_object(retry, dialect))

    once = await run_once(request, svc, project, lambda: digest_of([b"%d" % all_errors]), create)
    if once is not None:
        return once
    return Response((await create())[1], media_type="application/json")


# -- partial results (a batchd extension) ----------------------------------------------------------

#: The headers of a partial read: how many lines its body holds, the batch's status as of the
#: read, and whether the body is the final file (the batch has ended).
PARTIAL_LINES, PARTIAL_STATUS, PARTIAL_FINAL = (
    "x-batchd-partial-lines",
    "x-batchd-batch-status",
    "x-batchd-partial-final",
)

_PARTIAL = answers(
    None,
    404,
    429,
    ok_content={"application/jsonl": {"schema": {"type": "string", "format": "binary"}}},
)
_PARTIAL[200]["description"] = (
    "The lines of the output (or error) file durable so far, exactly as in the final file: in "
    "completion order with one process, in request order in shared mode; the whole final file "
    "once the batch has ended."
)
_PARTIAL[200]["headers"] = {
    PARTIAL_LINES: {
        "description": "How many lines the body holds (counted on the same snapshot).",
        "schema": {"type": "integer", "minimum": 0},
    },
    PARTIAL_STATUS: {
        "description": "The batch's status as of this read.",
        "schema": {"type": "string"},
    },
    PARTIAL_FINAL: {
        "description": "`true` when the body is the final file (the batch has ended).",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
}


class _PartialResponse(StreamingResponse):
    """A partial read's lines; its snapshot is released however the answer ends (a client
    that goes away included)."""

    def __init__(self, partial: PartialResults) -> None:
        super().__init__(
            partial.chunks,
            media_type="application/jsonl",
            headers={
                PARTIAL_LINES: str(partial.lines),
                PARTIAL_STATUS: partial.batch.status,
                PARTIAL_FINAL: "true" if partial.final else "false",
                "cache-control": "no-store",
                "x-content-type-options": "nosniff",
            },
        )
        self.partial = partial

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.partial.aclose()


async def _partial(svc: ServicesDep, project: str, batch_id: str, which: Which) -> Response:
    return _PartialResponse(await svc.batches.partial(project, batch_id, which))


@router.get(
    "/{batch_id}/partial/output",
    summary="Read the output lines durable so far (batchd extension)",
    responses=_PARTIAL,
)
async def partial_output(batch_id: str, svc: ServicesDep, project: ProjectDep) -> Response:
    return await _partial(svc, project, batch_id, "output")


@router.get(
    "/{batch_id}/partial/errors",
    summary="Read the error lines durable so far (batchd extension)",
    responses=_PARTIAL,
)
async def partial_errors(batch_id: str, svc: ServicesDep, project: ProjectDep) -> Response:
    return await _partial(svc, project, batch_id, "errors")
