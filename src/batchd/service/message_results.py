"""Anthropic's Message Batches ``/results`` lines out of a batchd batch's output and error files.

An Anthropic batch runs as a batchd batch of ``/v1/messages`` lines; its output and error files
are in OpenAI's batch format (``{"id", "custom_id", "response", "error"}`` a line). Each line
becomes ``{"custom_id": …, "result": R}`` (:func:`result_line`, :class:`ResultLines` for a
streamed file), R by what the line holds:

==============================================  ================================================
batchd's line                                   Anthropic's result
==============================================  ================================================
``response`` 2xx with a Message body            ``{"type": "succeeded", "message": <body>}``
``response`` with an error status, its body     ``errored`` with that body (its ``request_id``
Anthropic's error body                          the response's when it has none)
``response`` with an error status, its body     ``errored``: the envelope's message, the type
OpenAI's envelope (or a ``message`` /           of the status (:func:`~batchd.providers.
``detail`` string)                              messages_stream.error_type`)
``response`` with any other body (a string,     ``errored``, the type of the status, a message
``null``, an object without a message), or 2xx  naming the status and a short ``repr`` of the
without a Message                               body
``error.code`` ``batch_cancelled``              ``{"type": "canceled"}``
``error.code`` ``batch_expired``                ``{"type": "expired"}``
another ``error.code``                          ``errored``, the message ``"<code>: <message>"``,
                                                the type of the code (:data:`CODE_TYPES`;
                                                ``api_error`` for one not there)
==============================================  ================================================

An ``errored`` result's ``error`` is Anthropic's error response ``{"type": "error", "error":
{"type", "message"}, "request_id"}`` (``request_id`` the upstream's, ``null`` for a request
that got no answer). Only a line that is no JSON object raises (:class:`ValueError`): batchd
writes none, so such a file is corrupt. Blank lines are skipped by :class:`ResultLines`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from batchd.providers.messages_stream import error_type as status_error_type
from batchd.providers.messages_stream import upstream_message

__all__ = ["CODE_TYPES", "ResultLines", "errored_line", "result_line"]

#: Anthropic's error ``type`` of a batchd error code (a request that got no HTTP answer).
CODE_TYPES: Final[dict[str, str]] = {
    "request_timeout": "timeout_error",
    "connection_error": "api_error",
    "invalid_upstream_response": "api_error",
    "server_error": "api_error",
    "provider_closed": "api_error",
    "model_not_found": "not_found_error",
    "unsupported_endpoint": "invalid_request_error",
    "invalid_request": "invalid_request_error",
    "invalid_request_error": "invalid_request_error",
    # an Anthropic error type used as a code (the anthropic provider's failures)
    "authentication_error": "authentication_error",
    "billing_error": "billing_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "timeout_error": "timeout_error",
    "api_error": "api_error",
    "overloaded_error": "overloaded_error",
    "request_too_large": "request_too_large",
}
_CANCELED: Final = {"type": "canceled"}
_EXPIRED: Final = {"type": "expired"}
_REPR_LIMIT = 200
_NL = orjson.OPT_APPEND_NEWLINE


def result_line(line: bytes) -> bytes:
    """One line of a batch's output or error file (with or without its trailing newline) as a
    line of Anthropic's results (ending in ``b"\\n"``); :class:`ValueError` for a line that is
    no JSON object."""
    record = orjson.loads(line)
    if not isinstance(record, dict):
        raise ValueError("a batch result line must be a JSON object")
    custom_id = record.get("custom_id")
    if not isinstance(custom_id, str):
        custom_id = "" if custom_id is None else orjson.dumps(custom_id).decode()
    response = record.get("response")
    if isinstance(response, dict):
        return _line(custom_id, _answered(response))
    return _line(custom_id, _unanswered(record.get("error")))


def errored_line(
    custom_id: str, message: str, *, error_type: str = "invalid_request_error"
) -> bytes:
    """An ``errored`` result for a request that never ran (its batch failed as a whole)."""
    return _line(custom_id, _errored(error_type, message, None))


class ResultLines:
    """Converts a file streamed in chunks (split anywhere, lines straddling them) line by line:
    :meth:`feed` each chunk, then :meth:`finish` once for a last line without its ``\\n``.
    ``convert``: what each line becomes (:func:`result_line` by default)."""

    __slots__ = ("_convert", "_pending")

    def __init__(self, convert: Callable[[bytes], bytes] = result_line) -> None:
        self._convert = convert
        self._pending: list[bytes] = []
        """The start of a line not ended yet (pieces, so a long line is joined once)."""

    def feed(self, chunk: bytes) -> bytes:
        """The results of the lines ``chunk`` completes (``b""`` when it ends none)."""
        end = chunk.rfind(b"\n")
        if end < 0:
            if chunk:
                self._pending.append(chunk)
            return b""
        if self._pending:
            self._pending.append(chunk[: end + 1])
            whole = b"".join(self._pending)
            self._pending.clear()
        else:
            whole = chunk[: end + 1] if end + 1 < len(chunk) else chunk
        if end + 1 < len(chunk):
            self._pending.append(chunk[end + 1 :])
        return self._lines(whole.split(b"\n"))

    def finish(self) -> bytes:
        """The result of a last line the chunks did not end with ``\\n`` (``b""`` when none);
        the converter is ready for another file after it."""
        rest = b"".join(self._pending)
        self._pending.clear()
        return self._lines([rest])

    def _lines(self, lines: list[bytes]) -> bytes:
        convert = self._convert
        return b"".join([convert(line) for line in lines if line and not line.isspace()])


def _line(custom_id: str, result: dict[str, Any]) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "result": result}, option=_NL)


def _answered(response: dict[str, Any]) -> dict[str, Any]:
    status = response.get("status_code")
    body = response.get("body")
    request_id = response.get("request_id")
    if not isinstance(request_id, str):
        request_id = None
    if not isinstance(status, int) or isinstance(status, bool):
        return _errored(
            "api_error",
            f"batchd recorded a response without a status: {_short(response)}",
            request_id,
        )
    if 200 <= status < 300:
        if isinstance(body, dict) and body.get("type") == "message":
            return {"type": "succeeded", "message": body}
        text = (
            f"The upstream answered HTTP {status} with a body that is not a Message: {_short(body)}"
        )
        return _errored("api_error", text, request_id)
    if isinstance(body, dict):
        if _is_anthropic_error(body):
            if body.get("request_id") is None:
                body = {**body, "request_id": request_id}
            return {"type": "errored", "error": body}
        found = upstream_message(body)
        if found is not None:
            return _errored(status_error_type(status), found, request_id)
    text = f"The upstream answered HTTP {status}: {_short(body)}"
    return _errored(status_error_type(status), text, request_id)


def _unanswered(error: Any) -> dict[str, Any]:
    if not isinstance(error, dict):
        return _errored("api_error", "batchd recorded neither a response nor an error.", None)
    code = error.get("code")
    if code == "batch_cancelled":
        return _CANCELED
    if code == "batch_expired":
        return _EXPIRED
    code = code if isinstance(code, str) and code else "error"
    message = error.get("message")
    text = f"{code}: {message}" if isinstance(message, str) and message else code
    kind = CODE_TYPES.get(code)
    if kind is None:
        kind = _upstream_status_type(code)
    return _errored(kind, text, None)


def _upstream_status_type(code: str) -> str:
    """``upstream_http_<status>`` (the anthropic provider's code of a bodiless error answer):
    the type of the status; another code ``api_error``."""
    tail = code.removeprefix("upstream_http_")
    if tail != code and tail.isdigit() and len(tail) == 3:
        return status_error_type(int(tail))
    return "api_error"


def _errored(kind: str, message: str, request_id: str | None) -> dict[str, Any]:
    error = {"type": kind, "message": message}
    return {"type": "errored", "error": {"type": "error", "error": error, "request_id": request_id}}


def _is_anthropic_error(body: dict[str, Any]) -> bool:
    error = body.get("error")
    return (
        body.get("type") == "error"
        and isinstance(error, dict)
        and isinstance(error.get("type"), str)
        and isinstance(error.get("message"), str)
    )


def _short(value: Any) -> str:
    """A ``repr`` of an upstream's body, at most about :data:`_REPR_LIMIT` characters."""
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 1] + "…"
