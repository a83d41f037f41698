"""The ``Idempotency-Key`` header of the create routes (see :mod:`batchd.service.idempotency`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from starlette.responses import Response

from batchd.runtime import Services
from batchd.service.idempotency import HEADER, REPLAYED_HEADER, IdempotencyService, Replay

__all__ = ["idempotency_key", "once_streamed", "respond", "run_once"]

T = TypeVar("T")


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


async def once_streamed(
    request: Request,
    keyed: tuple[IdempotencyService, str],
    project: str,
    read: Callable[[], Awaitable[T]],
    digest: Callable[[T], str],
    discard: Callable[[T], Awaitable[None]],
    create: Callable[[T], Awaitable[bytes]],
) -> Response:
    """``create`` once per key, for a route whose body streams into storage (its digest known
    only once it is read): the key is claimed before the body is read (a 409 at once for a key
    in use), ``read`` takes the body in; then the first call's answer comes again (and what was
    read is discarded), or ``create``'s answer is kept for the key."""
    service, key = keyed
    name = f"{request.method} {request.url.path}"
    first = await service.claim(project, key, name, None)
    if first is not None:  # another request, or still running: a 409 before reading the body
        service.check_usable(first, name, None)
    try:
        taken = await read()
    except BaseException:
        if first is None:
            await service.release(project, key)
        raise
    found = digest(taken)
    if first is not None:  # answered already: the same body gets that answer again
        await discard(taken)
        return respond(service.replay(first, name, found), replayed=True)
    try:
        body = await create(taken)
    except BaseException:
        await service.release(project, key)
        raise
    await service.complete(project, key, found, 200, body)
    return respond(Replay(200, body), replayed=False)
