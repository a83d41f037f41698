"""The ``Idempotency-Key`` header of the create routes (see :mod:`batchd.service.idempotency`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.responses import Response

from batchd.runtime import Services
from batchd.service.idempotency import HEADER, REPLAYED_HEADER, IdempotencyService, Replay

__all__ = ["idempotency_key", "respond"]


def idempotency_key(request: Request, svc: Services) -> tuple[IdempotencyService, str] | None:
    """The service and the request's key, or ``None`` when there is no key."""
    key = request.headers.get(HEADER)
    if key is None or svc.idempotency is None:
        return None
    return svc.idempotency, key


def respond(replay: Replay, replayed: bool) -> Response:
    """The answer of a call with a key: the first call's, marked when it is sent again."""
    headers = {REPLAYED_HEADER: "true"} if replayed else None
    return Response(replay.body, replay.status_code, headers=headers, media_type="application/json")


async def run_once(
    request: Request,
    svc: Services,
    project: str,
    digest: Callable[[], str],
    call: Callable[[], Awaitable[tuple[int, bytes]]],
) -> Response | None:
    """``call`` once per idempotency key (``None`` when the request has no key)."""
    found = idempotency_key(request, svc)
    if found is None:
        return None
    service, key = found
    name = f"{request.method} {request.url.path}"
    return respond(*await service.once(project, key, name, digest(), call))
