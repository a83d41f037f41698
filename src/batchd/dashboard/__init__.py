"""The web dashboard at ``/dashboard``: batches (live progress), a batch's events, errors and
files, the project's files, the models with their limits and what is in flight. Server-rendered
(Jinja2) with one small script that polls JSON; every asset ships in the package."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

from batchd.dashboard.routes import PREFIX, STATIC_DIR, router

__all__ = ["install_dashboard"]


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard's pages under ``/dashboard`` and its assets under
    ``/dashboard/static``; ``/`` leads a browser there."""

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(PREFIX, status_code=307)

    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
