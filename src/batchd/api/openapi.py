"""What batchd's OpenAPI document (``/openapi.json``, ``/docs``) says of each route's answers.

The routes read their requests by hand and answer with :class:`~starlette.responses.Response`
objects (OpenAI's 400s, not FastAPI's 422s), so FastAPI cannot infer their answers: each route
names its success schema and its error statuses with :func:`answers`, every error in the OpenAI
envelope (:class:`~batchd.protocol.ErrorResponse`). :func:`install_openapi` drops what FastAPI adds
on its own and batchd never sends: the 422 answer and its schemas. The fuzz tests
(``tests/fuzz``) check every answer against this document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from batchd.protocol import ErrorResponse

__all__ = ["answers", "install_openapi", "json_body"]

_WHY = {
    400: "The request is not valid: the message says what to change (and `param` where).",
    401: "No API key, or one this server does not know (`invalid_api_key`).",
    404: "No such object in the key's project, or no such model.",
    409: "The object's status does not allow this now.",
    413: "The body or the file is larger than this server or the project allows.",
    429: "Too many requests of this kind for now: wait for `Retry-After` seconds.",
    500: "The server could not serve the request (a file's content missing from its storage).",
    502: "The model's upstream could not be reached or gave no usable answer.",
    503: "The server is starting, or its metadata store or storage is unavailable (read-only, "
    "failing): retry after `Retry-After` seconds.",
    504: "The model's upstream did not answer in time.",
    507: "No space is left where the server keeps its data (`insufficient_storage`): retry after "
    "`Retry-After` seconds, once space is freed.",
}

#: Every ``/v1`` route: a key may be required, and the store may be unavailable.
_ALWAYS = (401, 503)


def answers(
    ok: type[BaseModel] | None,
    *errors: int,
    ok_content: dict[str, Any] | None = None,
    envelope: type[BaseModel] = ErrorResponse,
) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a ``/v1`` route: its 200 (``ok``'s schema, or ``ok_content``) and
    its error statuses (plus 401 and 503, which every such route may answer), each in
    ``envelope`` (OpenAI's, or Anthropic's on its routes)."""
    documented: dict[int | str, dict[str, Any]] = {}
    if ok is not None:
        documented[200] = {"model": ok}
    elif ok_content is not None:
        documented[200] = {"content": ok_content}
    for status in sorted({*errors, *_ALWAYS}):
        documented[status] = {"model": envelope, "description": _WHY[status]}
    return documented


def json_body(*, required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """The ``openapi_extra`` of a route that reads a JSON object by hand."""
    schema = {"type": "object", "required": required, "properties": properties}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` build the document without FastAPI's 422 answers."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = document.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
