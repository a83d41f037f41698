"""Every exception that reaches the HTTP layer becomes an OpenAI error envelope here."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from batchd.api.responses import JSONResponse
from batchd.errors import APIError, StorageFault, StoreError

log = logging.getLogger("batchd.api")

__all__ = ["envelope", "install_error_handlers"]


def envelope(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, dict[str, str | None]]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    else:
        message = str(exc.detail)
    return JSONResponse(
        envelope(message), status_code=exc.status_code, headers=dict(exc.headers or {})
    )


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else str(exc)
    return JSONResponse(envelope(message, param=param, code="invalid_value"), status_code=400)


_FAULTS = {
    # reason: (status, code, what to do)
    "storage_full": (
        507,
        "insufficient_storage",
        "No space is left where batchd keeps its data. Nothing was stored; free space on the "
        "server (or ask its operator to), then retry.",
    ),
    "storage_read_only": (
        503,
        "storage_read_only",
        "Where batchd keeps its data is read-only. Nothing was stored; make it writable again "
        "(or ask the server's operator to), then retry.",
    ),
    "storage_unavailable": (
        503,
        "storage_unavailable",
        "batchd's storage failed. Nothing was stored; retry shortly.",
    ),
    "storage_unreachable": (
        503,
        "storage_unreachable",
        "batchd cannot reach the object store where it keeps files. Nothing was stored; the "
        "request may be retried shortly.",
    ),
}
_FAULT_RETRY_AFTER = "30"


def _fault_response(reason: str, cause: str) -> Response:
    status, code, message = _FAULTS.get(reason, _FAULTS["storage_unavailable"])
    log.error("answering %d %s: %s", status, code, cause)
    return JSONResponse(
        envelope(f"{message} ({cause})", type="server_error", code=code),
        status_code=status,
        headers={"retry-after": _FAULT_RETRY_AFTER},
    )


async def _storage_fault(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StorageFault)
    return _fault_response(exc.reason, exc.message)


async def _store_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError)
    if exc.fault is not None:
        return _fault_response(exc.fault, "the metadata store cannot write")
    return JSONResponse(
        envelope(
            "The metadata store is not available right now; retry shortly.",
            type="server_error",
            code="store_unavailable",
        ),
        status_code=503,
        headers={"retry-after": "1"},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(StorageFault, _storage_fault)
