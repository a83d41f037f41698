"""``/v1/batches``: create, list, retrieve, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from batchd.api.deps import ProjectDep, Services, ServicesDep
from batchd.api.openapi import answers
from batchd.api.params import (
    EXPIRY_SECONDS_SCHEMA,
    check_expiry_seconds,
    parse_cursor,
    parse_limit,
    read_json_object,
)
from batchd.api.responses import JSONResponse, batch_object
from batchd.engine.manager import ACTIVE_STATUSES
from batchd.errors import InvalidRequest, NotFound, RateLimited
from batchd.ids import is_batch_id, new_batch_id
from batchd.protocol import BATCH_ENDPOINTS, Batch, BatchList, ListPage
from batchd.store import BatchRecord
from batchd.validation import normalize_url

__all__ = ["router"]

router = APIRouter(prefix="/v1/batches", tags=["batches"])

MAX_BODY_BYTES = 1024 * 1024
COMPLETION_WINDOWS = ("24h",)
_CREATE_KEYS = {
    "input_file_id",
    "endpoint",
    "completion_window",
    "metadata",
    "output_expires_after",
}
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.")


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
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"Invalid type for 'metadata': expected an object, but got {_type_name(value)} "
            "instead.",
            param="metadata",
            code="invalid_type",
        )
    if len(value) > MAX_METADATA_PAIRS:
        raise InvalidRequest(
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{MAX_METADATA_PAIRS} properties, but got an object with {len(value)} properties "
            "instead.",
            param="metadata",
            code="object_above_max_size",
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequest(
                f"Invalid 'metadata': key {key[:20]!r}... is longer than {MAX_METADATA_KEY} "
                "characters.",
                param="metadata",
                code="string_above_max_length",
            )
        if not isinstance(item, str):
            raise InvalidRequest(
                f"Invalid type for 'metadata.{key}': expected a string, but got "
                f"{_type_name(item)} instead.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(item) > MAX_METADATA_VALUE:
            raise InvalidRequest(
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length {MAX_METADATA_VALUE}, but got a string with length {len(item)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
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


async def _check_batch_limits(svc: Services, project: str, now: int) -> None:
    """429 ``rate_limit_exceeded`` when the project may not create a batch now."""
    limits = svc.settings.limits_for(project)
    per_hour, active = limits.max_batches_per_hour, limits.max_active_batches
    if per_hour is None and active is None:
        return
    activity = await svc.store.batch_activity(
        project, since=now - 3600, active_statuses=ACTIVE_STATUSES
    )
    if active is not None and activity.active >= active:
        raise RateLimited(
            f"Too many active batches: this project may have at most {active} batches "
            "validating or in progress at once. Wait for one to finish, or cancel one.",
            retry_after=60,
        )
    if per_hour is not None and activity.created_since >= per_hour:
        oldest = activity.oldest_created_at or now
        raise RateLimited(
            f"Rate limit reached for batch creation: this project may create at most {per_hour} "
            "batches per hour. Try again after the time in the Retry-After header.",
            retry_after=oldest + 3600 - now,
        )


@router.post(
    "",
    summary="Create a batch",
    openapi_extra=_CREATE_BODY,
    responses=answers(Batch, 400, 413, 429),
)
async def create_batch(request: Request, svc: ServicesDep, project: ProjectDep) -> Response:
    body = await read_json_object(request, max_bytes=MAX_BODY_BYTES, empty_is_object=True)
    for key in body:
        if key not in _CREATE_KEYS:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {key}",
                param=key,
                code="unknown_parameter",
            )
    input_file_id = _required_string(body, "input_file_id")
    endpoint = _required_string(body, "endpoint")
    if normalize_url(endpoint) not in BATCH_ENDPOINTS:
        supported = ", ".join(f"'{e}'" for e in BATCH_ENDPOINTS)
        raise InvalidRequest(
            f"Invalid value: '{endpoint}'. Supported values are: {supported}.",
            param="endpoint",
            code="invalid_value",
        )
    window = _required_string(body, "completion_window")
    if window not in COMPLETION_WINDOWS:
        raise InvalidRequest(
            f"Invalid value for 'completion_window': '{window}'. Supported values are: '24h'.",
            param="completion_window",
            code="invalid_value",
        )
    metadata = _metadata(body.get("metadata"))
    output_expires_after = _output_expires_after(body.get("output_expires_after"))
    now = svc.now()
    record = BatchRecord(
        id=new_batch_id(),
        endpoint=endpoint,
        input_file_id=input_file_id,
        completion_window=window,
        status="validating",
        created_at=now,
        expires_at=now + svc.settings.completion_window_seconds,
        metadata=metadata,
        output_expires_after=output_expires_after,
        project=project,
    )
    async with svc.manager.admission:  # the limits' check and the batch stored, as one step
        await _check_batch_limits(svc, project, now)
        await svc.manager.submit(record)
    return JSONResponse(batch_object(record))


@router.get("", summary="List batches, newest first", responses=answers(BatchList, 400))
async def list_batches(
    svc: ServicesDep,
    project: ProjectDep,
    after: Annotated[str | None, Query()] = None,
    limit: Annotated[str | None, Query(description="1 to 100, default 20")] = None,
) -> Response:
    size = parse_limit(limit, default=20, maximum=100)
    after_seq = await parse_cursor(
        after,
        kind="batch",
        well_formed=is_batch_id,
        lookup=lambda batch_id: svc.store.batch_cursor(batch_id, project=project),
    )
    records, has_more = await svc.store.list_batches(
        after_seq=after_seq, limit=size, project=project
    )
    page = ListPage(
        data=[batch_object(r) for r in records],
        first_id=records[0].id if records else None,
        last_id=records[-1].id if records else None,
        has_more=has_more,
    )
    return JSONResponse(page.model_dump())


@router.get("/{batch_id}", summary="Retrieve a batch", responses=answers(Batch, 404))
async def retrieve_batch(batch_id: str, svc: ServicesDep, project: ProjectDep) -> Response:
    record = await svc.store.get_batch(batch_id, project=project) if is_batch_id(batch_id) else None
    if record is None:
        raise _not_found(batch_id)
    return JSONResponse(batch_object(record))


@router.post("/{batch_id}/cancel", summary="Cancel a batch", responses=answers(Batch, 404, 409))
async def cancel_batch(batch_id: str, svc: ServicesDep, project: ProjectDep) -> Response:
    if not is_batch_id(batch_id) or await svc.store.get_batch(batch_id, project=project) is None:
        raise _not_found(batch_id)
    return JSONResponse(batch_object(await svc.manager.cancel(batch_id)))
