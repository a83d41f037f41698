"""``GET /metrics``: the process's Prometheus metrics (:mod:`batchd.metrics`).

Left out of the OpenAPI document, as Prometheus' own endpoints are: a scraper reads the text
exposition format, not the OpenAI envelope. Its refusals are OpenAI envelopes all the same.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from batchd.api.errors import envelope
from batchd.api.responses import JSONResponse
from batchd.metrics import CONTENT_TYPE, metrics_access

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    svc = getattr(request.app.state, "services", None)
    if svc is None:
        return JSONResponse(
            envelope("batchd is starting; scrape again shortly.", type="server_error"),
            status_code=503,
            headers={"retry-after": "1"},
        )
    settings = svc.settings
    refused = metrics_access(
        settings.metrics_token, settings.host, request.headers.get("authorization")
    )
    if refused is not None:
        status, code, message = refused
        headers = {"www-authenticate": 'Bearer realm="batchd metrics"'} if status == 401 else {}
        return JSONResponse(envelope(message, code=code), status_code=status, headers=headers)
    body = await svc.metrics.scrape(svc.store.batch_status_counts)
    return Response(body, media_type=CONTENT_TYPE)
