"""The fake upstream's Anthropic Messages API (``POST /v1/messages``): the checks of a body, errors
in Anthropic's envelope, and the streamed form of an answer (Anthropic's server-sent events).

The answer itself is :func:`tests.upstream.answers.anthropic_message`. Faults are the other
endpoints' (markers in the messages' text, ``fail_first_n``, probabilities, latency, the hidden
capacity); on this path their errors have Anthropic's shape (``{"type": "error", "error":
{"type", "message"}, "request_id"}``, the error type after the status), the API key is checked
in ``x-api-key`` (or ``Authorization: Bearer``, which the official SDK sends), and every answer
has a ``request-id`` header besides ``x-request-id``.

With ``"stream": true`` the answer is ``message_start``, ``content_block_start``, a ``ping``,
one ``content_block_delta`` (``text_delta``) per piece of
:func:`~tests.upstream.answers.split_stream_pieces`, ``content_block_stop``, ``message_delta``
(the stop reason and the output tokens) and ``message_stop``; a ``malformed`` fault sends
``message_start`` and then half an event.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.upstream import answers, vision

__all__ = ["PATH", "error_body", "events", "stream", "validate"]

PATH = "/v1/messages"
#: The Anthropic error ``type`` of each status this path answers with but 500 (``api_error``).
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}
_ROLES = ("user", "assistant")


def error_body(status: int, message: str, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's error envelope for an error answer with ``status``."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


def _check_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not all(
        isinstance(block, dict) and isinstance(block.get("type"), str) for block in content
    ):
        raise vision.InvalidRequest(
            f"{where}: Input should be a string or a list of content blocks", where
        )


def validate(body: dict[str, Any]) -> None:
    """The checks of a Messages body beyond ``model`` (which every endpoint's are): a positive
    ``max_tokens``, a non-empty ``messages`` of user and assistant turns, a ``system`` that is
    text; :class:`~tests.upstream.vision.InvalidRequest` names the first that fails."""
    limit = body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise vision.InvalidRequest("max_tokens: Field required (a positive integer)", "max_tokens")
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise vision.InvalidRequest("messages: at least one message is required", "messages")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in _ROLES:
            raise vision.InvalidRequest(
                f"messages.{i}.role: Input should be 'user' or 'assistant'", f"messages.{i}"
            )
        _check_content(turn.get("content"), f"messages.{i}.content")
    if "system" in body:
        _check_content(body["system"], "system")


def events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of ``message`` streamed, as ``(event name, data)``."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage, "output_tokens": 1}
    out: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for piece in answers.split_stream_pieces(message["content"][0]["text"]):
        delta = {"type": "text_delta", "text": piece}
        out.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    out += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": stop,
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return out


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def stream(
    request: web.Request, message: dict[str, Any], headers: dict[str, str], outcome: str
) -> web.StreamResponse:
    """Send ``message`` as server-sent events (half an event after the first when ``outcome``
    is ``malformed``)."""
    response = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    sent = events(message)
    if outcome == "malformed":
        await response.write(_sse(*sent[0]))
        await response.write(b'event: content_block_start\ndata: {"type": "content_bl\n\n')
    else:
        for event, data in sent:
            await response.write(_sse(event, data))
    await response.write_eof()
    return response
