"""What the routers get from the app: the services built in the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from batchd.auth import DEFAULT_PROJECT
from batchd.errors import ServiceUnavailable
from batchd.runtime import Services

__all__ = ["ProjectDep", "Services", "ServicesDep", "project", "services"]


async def services(request: Request) -> Services:
    """The process's services (async: FastAPI runs a plain ``def`` dependency in a thread)."""
    found = getattr(request.app.state, "services", None)
    if found is None:
        raise ServiceUnavailable("batchd is starting up; retry shortly.")
    assert isinstance(found, Services)
    return found


ServicesDep = Annotated[Services, Depends(services)]


async def project(request: Request, svc: ServicesDep) -> str:
    """The project of the request's API key (401 without a valid one, when keys exist)."""
    if svc.auth is None:
        return DEFAULT_PROJECT
    return await svc.auth.project(request.headers)


ProjectDep = Annotated[str, Depends(project)]
