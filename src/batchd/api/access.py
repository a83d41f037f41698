"""The access log: one line per HTTP request, on the ``batchd.access`` logger (see
:mod:`batchd.logs`). uvicorn's own access log stays off: it knows neither the request id nor the
project, and it does not see the answers batchd's middleware makes (413s, last-resort 500s)."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchd.config import Settings
from batchd.logs import ACCESS_LOGGER, is_loopback

__all__ = ["AccessLogMiddleware", "access_log_enabled"]

log = logging.getLogger(ACCESS_LOGGER)


def access_log_enabled(settings: Settings) -> bool:
    """``access_log`` when set; else on for a non-loopback ``host`` (a server others reach),
    off on loopback (a developer's machine, ``batchd run``)."""
    if settings.access_log is not None:
        return settings.access_log
    return not is_loopback(settings.host)


class AccessLogMiddleware:
    """Logs each HTTP request once its answer is sent (or the request failed). It sits inside
    :class:`~batchd.api.middleware.RequestContextMiddleware`, whose request id it reads from the
    scope's state, as the project dependency leaves the project there."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = status or 500  # answered 500 by the outer middleware, unless it had begun
            raise
        finally:
            _log(scope, status, (time.perf_counter() - started) * 1000)


def _path(scope: Scope) -> str:
    """The path as the client sent it (still percent-encoded: a ``%0A`` stays three characters
    and cannot break the line), without the query string."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw.decode("ascii", "backslashreplace")
    return str(scope.get("path", "")).encode("unicode_escape").decode("ascii")


def _log(scope: Scope, status: int, latency_ms: float) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    state = scope.get("state") or {}
    client = scope.get("client")
    fields = {
        "client": f"{client[0]}:{client[1]}" if client else None,
        "method": scope.get("method"),
        "path": _path(scope),
        "status": status or None,
        "latency_ms": round(latency_ms, 1),
        "request_id": state.get("request_id"),
        "project": state.get("project"),
    }
    log.info(
        '%s "%s %s" %s %.1fms request_id=%s project=%s',
        fields["client"] or "-",
        fields["method"],
        fields["path"],
        status or "-",
        latency_ms,
        fields["request_id"] or "-",
        fields["project"] or "-",
        extra={"fields": fields},
    )
