"""Every exception that reaches the HTTP layer becomes an error envelope here: OpenAI's, or
Anthropic's, ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the error type
of the status (:func:`anthropic_error_type`), on Anthropic's routes (``/v1/messages…``) and for
any request that carries an ``anthropic-version`` header (Anthropic's SDKs send it on every
request, ``GET /v1/models`` included): see :func:`speaks_anthropic`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from batchd.api.responses import JSONResponse
from batchd.errors import APIError, StorageFault, StoreError
from batchd.providers.messages_stream import error_type as anthropic_error_type

log = logging.getLogger("batchd.api")

__all__ = [
    "ANTHROPIC_PREFIX",
    "ANTHROPIC_VERSION",
    "anthropic_envelope",
    "anthropic_error_type",
    "envelope",
    "install_error_handlers",
    "speaks_anthropic",
]

#: The path prefix of Anthropic's API: its errors use Anthropic's envelope.
ANTHROPIC_PREFIX = "/v1/messages"
#: The header every request of Anthropic's SDKs carries: its errors use Anthropic's envelope.
ANTHROPIC_VERSION = "anthropic-version"
_ANTHROPIC_VERSION_RAW = ANTHROPIC_VERSION.encode()


def speaks_anthropic(path: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request (its path, its raw ASGI headers: lower-case names) is answered in
    Anthropic's style (its error envelope, a ``request-id`` header): on Anthropic's routes, or
    when it carries ``anthropic-version``, whatever its path."""
    if path.startswith(ANTHROPIC_PREFIX):
        return True
    return any(name == _ANTHROPIC_VERSION_RAW for name, _ in headers)


def envelope(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, dict[str, str | None]]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def anthropic_envelope(message: str, status: int, request_id: str | None) -> dict[str, Any]:
    """Anthropic's error body."""
    return {
        "type": "error",
        "error": {"type": anthropic_error_type(status), "message": message},
        "request_id": request_id,
    }


def _respond(
    request: Request,
    body: dict[str, dict[str, str | None]],
    status: int,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The error answer, in the envelope of the API the request speaks (its path, its
    ``anthropic-version``)."""
    if speaks_anthropic(request.url.path, request.headers.raw):
        request_id = getattr(request.state, "request_id", None)
        message = body["error"]["message"] or ""
        return JSONResponse(
            anthropic_envelope(message, status, request_id), status_code=status, headers=headers
        )
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return _respond(request, exc.envelope(), exc.status_code, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    else:
        message = str(exc.detail)
    return _respond(request, envelope(message), exc.status_code, dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else str(exc)
    return _respond(request, envelope(message, param=param, code="invalid_value"), 400)


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


def _fault_response(request: Request, reason: str, cause: str) -> Response:
    status, code, message = _FAULTS.get(reason, _FAULTS["storage_unavailable"])
    log.error("answering %d %s: %s", status, code, cause)
    return _respond(
        request,
        envelope(f"{message} ({cause})", type="server_error", code=code),
        status,
        {"retry-after": _FAULT_RETRY_AFTER},
    )


async def _storage_fault(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StorageFault)
    return _fault_response(request, exc.reason, exc.message)


async def _store_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError)
    if exc.fault is not None:
        return _fault_response(request, exc.fault, "the metadata store cannot write")
    return _respond(
        request,
        envelope(
            "The metadata store is not available right now; retry shortly.",
            type="server_error",
            code="store_unavailable",
        ),
        503,
        {"retry-after": "1"},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(StorageFault, _storage_fault)
