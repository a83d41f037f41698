"""The app factory. The lifespan builds and owns every service; there are no module globals."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from batchd import __version__
from batchd.api import (
    anthropic,
    azure,
    batches,
    files,
    health,
    message_batches,
    metrics,
    passthrough,
)
from batchd.api.access import AccessLogMiddleware, access_log_enabled
from batchd.api.docs import install_docs
from batchd.api.errors import install_error_handlers
from batchd.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from batchd.api.openapi import install_openapi
from batchd.config import Settings
from batchd.dashboard import install_dashboard
from batchd.lock import DataDirLock
from batchd.providers import build_providers
from batchd.runtime import open_services

__all__ = ["create_app"]

log = logging.getLogger("batchd")


def create_app(
    settings: Settings,
    *,
    lock: DataDirLock | None = None,
    env: Mapping[str, str] | None = None,
    engine: bool = True,
) -> FastAPI:
    """Build the app. ``lock`` is a data-directory lock the caller already holds; without one the
    lifespan takes it (and fails with :class:`~batchd.errors.DataDirLocked` if it cannot).
    ``env`` is where provider secrets (``api_key_env``) are read from; the CLI passes
    ``os.environ``. The providers are built here, so a bad routing table fails at once. Without
    ``engine`` the process serves the API only (``batchd serve --no-engine``): the workers of the
    shared database run the batches."""
    providers = build_providers(settings, env or {})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, providers, lock=lock, engine=engine) as services:
            app.state.services = services
            log.info("batchd %s ready (data directory %s)", __version__, settings.data_dir)
            try:
                yield
            finally:
                app.state.services = None

    app = FastAPI(
        title="batchd",
        version=__version__,
        summary="A self-hosted, OpenAI-compatible Batch API.",
        lifespan=lifespan,
        docs_url=None,  # install_docs: the pages' assets from the package, not a CDN
        redoc_url=None,
    )
    app.state.services = None
    install_error_handlers(app)
    install_openapi(app)
    install_docs(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # One set of routes, three prefixes: OpenAI's /v1, Azure's GA /openai/v1 and Azure's
    # /openai?api-version= (documented once, under /v1).
    azure_version = [Depends(azure.api_version)]
    for router in (files.router, batches.router, passthrough.router):
        app.include_router(router, prefix="/v1")
        app.include_router(router, prefix="/openai/v1", include_in_schema=False)
        app.include_router(
            router, prefix="/openai", dependencies=azure_version, include_in_schema=False
        )
    app.include_router(azure.deployments, include_in_schema=False)
    app.include_router(anthropic.router, prefix="/v1")  # Anthropic's Messages API
    app.include_router(message_batches.router, prefix="/v1")  # and its Message Batches API
    install_dashboard(app)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    if access_log_enabled(settings):  # inside the request ids, outside the body limits
        app.add_middleware(AccessLogMiddleware)
    app.add_middleware(RequestContextMiddleware)  # the outermost
    return app
