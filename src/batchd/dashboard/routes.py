"""The dashboard's routes: server-rendered pages (Jinja2), their live JSON, the login form, the
cancel form and file downloads. A thin dialect: everything it shows or does goes through the
services (:class:`~batchd.service.monitor.MonitorService`, ``BatchService.cancel``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from batchd import __version__
from batchd.dashboard import session
from batchd.dashboard.session import Viewer
from batchd.dashboard.views import (
    batch_view,
    errors_view,
    event_view,
    file_view,
    model_view,
)
from batchd.errors import APIError, ServiceUnavailable, Unauthorized
from batchd.runtime import Services
from batchd.service.monitor import MonitorService

__all__ = ["PREFIX", "STATIC_DIR", "router"]

PREFIX = "/dashboard"
HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
PAGE_SIZE = 100
POLL_MS = 1000

#: Every page: only this server's scripts, styles and images, never in a frame.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(PREFIX + "/api/")


def _error_page(request: Request, status: int, message: str) -> Response:
    if _is_api(request):
        return _json({"error": {"status": status, "message": message}}, status)
    return _page(request, "error.html", None, status=status, status_code=status, message=message)


class DashboardRoute(APIRoute):
    """Errors as the dashboard shows them: a missing or rejected login is the login page (401
    JSON under ``/dashboard/api/``); an API error or a refused form is a page with its message
    and status (JSON under ``/dashboard/api/``), never the API's envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as exc:
                if exc.status_code == 401 and not _is_api(request):
                    response: Response = RedirectResponse(f"{PREFIX}/login", status_code=303)
                    if request.cookies.get(session.COOKIE):
                        session.clear_session(response, request)
                    return response
                return _error_page(request, exc.status_code, str(exc.detail))
            except RequestValidationError as exc:
                where = ", ".join(".".join(map(str, e.get("loc", ()))) for e in exc.errors())
                return _error_page(request, 400, f"This request is not valid ({where}).")
            except APIError as exc:
                return _error_page(request, exc.status_code, exc.message)

        return handle


router = APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)


async def _services(request: Request) -> Services:
    found = getattr(request.app.state, "services", None)
    if not isinstance(found, Services):
        raise ServiceUnavailable("batchd is starting up; retry shortly.")
    return found


ServicesDep = Annotated[Services, Depends(_services)]


async def _viewer(request: Request, svc: ServicesDep) -> Viewer:
    seen = await session.viewer(request, svc)
    request.state.project = seen.project  # for the access log, as the API's routes do
    return seen


ViewerDep = Annotated[Viewer, Depends(_viewer)]


def _monitor(svc: Services) -> MonitorService:
    aliases = getattr(svc.providers, "aliases", None)
    return MonitorService(
        svc.store,
        svc.batches,
        svc.files,
        svc.providers,
        svc.manager,
        aliases=aliases if isinstance(aliases, dict) else None,
    )


def _json(content: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status,
        media_type="application/json",
        headers=SECURITY_HEADERS,
    )


def _page(
    request: Request,
    template: str,
    seen: Viewer | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response:
    html = _templates.get_template(template).render(
        prefix=PREFIX,
        version=__version__,
        viewer=seen,
        poll_ms=POLL_MS,
        path=request.url.path,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
    if seen is not None and seen.new:
        session.set_session(response, request, seen.session)
    return response


# -- login --------------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, svc: ServicesDep) -> Response:
    if svc.auth is None or not await svc.auth.required():
        return RedirectResponse(PREFIX, status_code=303)
    return _page(request, "login.html", None)


@router.post("/login")
async def login(request: Request, svc: ServicesDep) -> Response:
    session.check_origin(request)
    if svc.auth is None or not await svc.auth.required():
        return RedirectResponse(PREFIX, status_code=303)
    form = await session.read_form(request)
    key = form.get("key", "").strip()
    message = "Enter an API key."
    if key:
        try:
            await svc.auth.project({"api-key": key})
        except Unauthorized:
            message = (
                "This key is not valid: use a key from batchd's configuration ([[api_keys]]) or "
                "one made with `batchd keys create`."
            )
        else:
            response = RedirectResponse(PREFIX, status_code=303)
            session.set_session(response, request, session.key_cookie(key))
            return response
    return _page(request, "login.html", None, status_code=401, message=message)


@router.post("/logout")
async def logout(request: Request, seen: ViewerDep) -> Response:
    await session.check_csrf(request, seen)
    response = RedirectResponse(f"{PREFIX}/login" if seen.login else PREFIX, status_code=303)
    session.clear_session(response, request)
    return response


# -- batches ------------------------------------------------------------------------------------


async def _batch_rows(
    svc: Services, seen: Viewer, after: str | None
) -> tuple[float, list[dict[str, Any]], bool]:
    """A page of the viewer's batches: the time they are shown at, their views, and whether
    older ones follow."""
    page = await _monitor(svc).list_batches(seen.scope, after=after, limit=PAGE_SIZE)
    now = time.time()
    return now, [batch_view(batch, now) for batch in page.data], page.has_more


@router.get("")
async def batches_page(
    request: Request,
    svc: ServicesDep,
    seen: ViewerDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    _now, rows, has_more = await _batch_rows(svc, seen, after)
    older = rows[-1]["id"] if has_more and rows else None
    return _page(request, "batches.html", seen, batches=rows, after=after, older=older)


@router.get("/api/batches")
async def batches_json(
    svc: ServicesDep,
    seen: ViewerDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    now, rows, _has_more = await _batch_rows(svc, seen, after)
    return _json({"now": now, "batches": rows})


@router.get("/batches/{batch_id}")
async def batch_page(
    request: Request, batch_id: str, svc: ServicesDep, seen: ViewerDep
) -> Response:
    monitor = _monitor(svc)
    batch = await monitor.batch(seen.scope, batch_id)
    events = await monitor.events(seen.scope, batch_id)
    errors = await monitor.error_counts(batch)
    return _page(
        request,
        "batch.html",
        seen,
        batch=batch_view(batch, time.time()),
        events=[event_view(event) for event in events],
        error_codes=errors_view(errors),
    )


@router.get("/api/batches/{batch_id}")
async def batch_json(batch_id: str, svc: ServicesDep, seen: ViewerDep) -> Response:
    monitor = _monitor(svc)
    batch = await monitor.batch(seen.scope, batch_id)
    events = await monitor.events(seen.scope, batch_id)
    return _json(
        {
            "now": time.time(),
            "batch": batch_view(batch, time.time()),
            "events": [event_view(event) for event in events],
        }
    )


@router.get("/api/batches/{batch_id}/errors")
async def batch_errors_json(batch_id: str, svc: ServicesDep, seen: ViewerDep) -> Response:
    monitor = _monitor(svc)
    batch = await monitor.batch(seen.scope, batch_id)
    counts = await monitor.error_counts(batch)
    return _json({"now": time.time(), "status": batch.status, **errors_view(counts)})


@router.post("/batches/{batch_id}/cancel")
async def cancel(request: Request, batch_id: str, svc: ServicesDep, seen: ViewerDep) -> Response:
    await session.check_csrf(request, seen)
    await _monitor(svc).cancel(seen.scope, batch_id)
    return RedirectResponse(f"{PREFIX}/batches/{quote(batch_id)}", status_code=303)


# -- files --------------------------------------------------------------------------------------


@router.get("/files")
async def files_page(request: Request, svc: ServicesDep, seen: ViewerDep) -> Response:
    page = await _monitor(svc).list_files(seen.scope, limit=PAGE_SIZE)
    return _page(
        request,
        "files.html",
        seen,
        files=[file_view(record) for record in page.data],
        has_more=page.has_more,
    )


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, svc: ServicesDep, seen: ViewerDep) -> Response:
    record, chunks = await _monitor(svc).file_content(seen.scope, file_id)
    filename = record.filename or record.id
    plain = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    return StreamingResponse(
        chunks,
        media_type="application/jsonl"
        if filename.endswith(".jsonl")
        else "application/octet-stream",
        headers={
            "content-disposition": f'attachment; filename="{plain}"; '
            f"filename*=UTF-8''{quote(filename)}",
            "x-content-type-options": "nosniff",
            "cache-control": "no-store",
        },
    )


# -- models -------------------------------------------------------------------------------------


def _models(svc: Services, seen: Viewer) -> list[dict[str, Any]]:
    detail = seen.admin or not seen.login
    return [model_view(state, upstream=detail) for state in _monitor(svc).models()]


@router.get("/models")
async def models_page(request: Request, svc: ServicesDep, seen: ViewerDep) -> Response:
    models = _models(svc, seen)
    return _page(request, "models.html", seen, models=models, engine=svc.manager is not None)


@router.get("/api/models")
async def models_json(svc: ServicesDep, seen: ViewerDep) -> Response:
    models = _models(svc, seen)
    return _json({"now": time.time(), "engine": svc.manager is not None, "models": models})
