"""``GET /health``: ready when the store answers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from batchd import __version__
from batchd.api.responses import JSONResponse

__all__ = ["router"]

router = APIRouter(tags=["health"])


_STATUS = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["status", "version"],
            "properties": {"status": {"type": "string"}, "version": {"type": "string"}},
        }
    }
}


@router.get(
    "/health",
    summary="Readiness",
    responses={
        200: {"description": "Ready: `status` is `ok`", "content": _STATUS},
        503: {"description": "Starting, or the metadata store is unavailable", "content": _STATUS},
    },
)
async def health(request: Request) -> Response:
    svc = getattr(request.app.state, "services", None)
    if svc is None:
        return JSONResponse({"status": "starting", "version": __version__}, status_code=503)
    try:
        await svc.store.ping()
    except Exception:
        return JSONResponse(
            {"status": "store_unavailable", "version": __version__}, status_code=503
        )
    return JSONResponse({"status": "ok", "version": __version__})
