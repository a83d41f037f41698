"""The outermost ASGI middleware: request ids, retry hints, and last-resort 500s."""

from __future__ import annotations

import logging

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchd.ids import new_request_id

__all__ = ["RequestContextMiddleware"]

log = logging.getLogger("batchd.api")

# 408 and 429 are worth retrying; every other 4xx answers the same way the next time.
_RETRYABLE_4XX = {408, 429}


class RequestContextMiddleware:
    """Adds ``x-request-id`` to every response and ``x-should-retry: false`` to deterministic
    4xx responses, and turns an unhandled exception into a 500 in the OpenAI error envelope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                status = message["status"]
                deterministic = 400 <= status < 500 and status not in _RETRYABLE_4XX
                if deterministic and all(name.lower() != b"x-should-retry" for name, _ in headers):
                    headers.append((b"x-should-retry", b"false"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            body = orjson.dumps(
                {
                    "error": {
                        "message": "The server had an error while processing your request "
                        f"(request id {request_id}). Retry, or report it with the request id.",
                        "type": "server_error",
                        "param": None,
                        "code": "server_error",
                    }
                }
            )
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
