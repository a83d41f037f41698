"""What the routers get from the app: the services built in the lifespan."""

from __future__ import annotations

from fastapi import Request

from batchd.errors import ServiceUnavailable
from batchd.runtime import Services

__all__ = ["Services", "services"]


async def services(request: Request) -> Services:
    """The process's services (async: FastAPI runs a plain ``def`` dependency in a thread)."""
    found = getattr(request.app.state, "services", None)
    if found is None:
        raise ServiceUnavailable("batchd is starting up; retry shortly.")
    assert isinstance(found, Services)
    return found
