"""What the routers get from the app: the services built in the lifespan."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Request

from batchd.config import Settings
from batchd.engine import BatchManager
from batchd.errors import ServiceUnavailable
from batchd.providers import Provider
from batchd.storage import Storage
from batchd.store import Store

__all__ = ["Services", "services"]


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    storage: Storage
    manager: BatchManager
    providers: Mapping[str, Provider]
    """One started provider per ``[[models]]`` route, by model name."""

    def now(self) -> int:
        return int(time.time())


async def services(request: Request) -> Services:
    """The process's services (async: FastAPI runs a plain ``def`` dependency in a thread)."""
    found = getattr(request.app.state, "services", None)
    if found is None:
        raise ServiceUnavailable("batchd is starting up; retry shortly.")
    assert isinstance(found, Services)
    return found
