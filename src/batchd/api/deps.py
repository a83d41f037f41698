"""What the routers get from the app: the services built in the lifespan."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Request

from batchd.auth import DEFAULT_PROJECT
from batchd.errors import ServiceUnavailable
from batchd.runtime import Services

__all__ = [
    "AZURE_PREFIX",
    "Dialect",
    "DialectDep",
    "ProjectDep",
    "Services",
    "ServicesDep",
    "dialect",
    "project",
    "services",
]

#: Where Azure OpenAI's routes live: ``/openai/...?api-version=`` and the GA ``/openai/v1/...``.
AZURE_PREFIX = "/openai/"
Dialect = Literal["openai", "azure"]


async def services(request: Request) -> Services:
    """The process's services (async: FastAPI runs a plain ``def`` dependency in a thread)."""
    found = getattr(request.app.state, "services", None)
    if found is None:
        raise ServiceUnavailable("batchd is starting up; retry shortly.")
    assert isinstance(found, Services)
    return found


ServicesDep = Annotated[Services, Depends(services)]


async def project(request: Request, svc: ServicesDep) -> str:
    """The project of the request's API key (401 without a valid one, when keys exist); left in
    the request's state for the access log."""
    if svc.auth is None:
        found = DEFAULT_PROJECT
    else:
        found = await svc.auth.project(request.headers)
    request.state.project = found
    return found


ProjectDep = Annotated[str, Depends(project)]


async def dialect(request: Request) -> Dialect:
    """Which API the client speaks: Azure OpenAI's (under ``/openai/``) or OpenAI's."""
    return "azure" if request.url.path.startswith(AZURE_PREFIX) else "openai"


DialectDep = Annotated[Dialect, Depends(dialect)]
