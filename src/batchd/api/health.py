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
            "properties": {
                "status": {"type": "string"},
                "version": {"type": "string"},
                "replicas": {
                    "type": "object",
                    "description": "Per model with several servers (base_urls): each "
                    "replica's state (closed, open: ejected, half_open: probed), requests "
                    "in flight, its limit, requests sent and how long it is paused after a 429",
                    "additionalProperties": {"type": "array", "items": {"type": "object"}},
                },
            },
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
    body: dict[str, object] = {"status": "ok", "version": __version__}
    replicas = {
        name: states()
        for name, provider in svc.providers.items()
        if (states := getattr(provider, "replica_states", None)) is not None
        and len(getattr(provider.options, "base_urls", None) or ()) > 1
    }
    if replicas:
        body["replicas"] = replicas
    return JSONResponse(body)
