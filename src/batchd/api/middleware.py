"""ASGI middleware: request ids, retry hints and last-resort 500s (outermost); request body
limits."""

from __future__ import annotations

import logging

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchd.api.errors import anthropic_envelope, envelope, speaks_anthropic
from batchd.config import Settings
from batchd.errors import PayloadTooLarge
from batchd.ids import new_request_id

__all__ = ["BodyLimitMiddleware", "RequestContextMiddleware"]

log = logging.getLogger("batchd.api")

# 408 and 429 are worth retrying; every other 4xx answers the same way the next time.
_RETRYABLE_4XX = {408, 429}


class RequestContextMiddleware:
    """Adds ``x-request-id`` to every response (and ``request-id``, where Anthropic's SDKs read
    it, to the answers of a request in Anthropic's style: see
    :func:`~batchd.api.errors.speaks_anthropic`) and ``x-should-retry: false`` to deterministic
    4xx responses, and turns an unhandled exception into a 500 in the error envelope of the
    request's API (OpenAI's, or Anthropic's)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = False
        anthropic = speaks_anthropic(str(scope.get("path", "")), scope.get("headers", ()))

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if anthropic:  # where Anthropic's SDKs read it
                    headers.append((b"request-id", request_id.encode()))
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
            message = (
                "The server had an error while processing your request "
                f"(request id {request_id}). Retry, or report it with the request id."
            )
            error = envelope(message, type="server_error", code="server_error")
            body = orjson.dumps(
                anthropic_envelope(message, 500, request_id) if anthropic else error
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


#: Bodies bounded by their route instead: file uploads (the file size limits) and Anthropic's
#: inline Message Batches (message_batch_max_bytes).
_UPLOAD_PATHS = frozenset(
    {"/v1/files", "/openai/files", "/openai/v1/files", "/v1/messages/batches"}
)


class BodyLimitMiddleware:
    """413 ``request_too_large`` for a request body over ``max_request_body_bytes``. A declared
    ``Content-Length`` over it is refused before anything is read; a body that grows past it
    while streamed fails the read (the route answers with the same 413). File uploads and
    Message Batches are left to their route, which bounds them by their own limits."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.limit = settings.max_request_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "").rstrip("/")
        upload = scope.get("method") == "POST" and path in _UPLOAD_PATHS
        if scope["type"] != "http" or upload:
            await self.app(scope, receive, send)
            return
        limit = self.limit
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            error = _too_large(limit)
            body: object = error.envelope()
            if speaks_anthropic(path, scope["headers"]):
                request_id = scope.get("state", {}).get("request_id")
                body = anthropic_envelope(error.message, error.status_code, request_id)
            await _send_json(send, 413, body)
            return
        received = 0
        failed = False

        async def limited_receive() -> Message:
            nonlocal received, failed
            if failed:  # the route may read on after the error (to drain): it ends here
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    failed = True
                    raise _too_large(limit)
            return message

        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than this server accepts ({limit:,} bytes).",
        code="request_too_large",
    )


async def _send_json(send: Send, status: int, content: object) -> None:
    body = orjson.dumps(content)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
