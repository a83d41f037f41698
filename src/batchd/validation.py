"""Streaming validation of a batch input file.

One pass, line by line, with memory bounded by the longest line and the set of ``custom_id``\\ s
(itself bounded by the request limit). Every bad line is reported with its 1-based number, the
offending ``param`` and the code of the OpenAI/Azure error catalogue; the list is capped at
``max_errors`` entries plus one summary entry.

Tolerated: a UTF-8 byte-order mark, CRLF line ends, blank lines, a missing final newline.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from batchd.protocol import BATCH_ENDPOINTS

__all__ = [
    "BOM",
    "LineTooLong",
    "ValidationResult",
    "Validator",
    "iter_lines",
    "normalize_url",
    "validate_stream",
]

BOM = b"\xef\xbb\xbf"
_REQUIRED_KEYS = ("custom_id", "method", "url", "body")
_FIELD_NAMES = {"messages": "Messages", "input": "Input", "prompt": "Prompt"}
_CHECK_STOP_EVERY = 1024
_SKIP_CHUNK = 1024 * 1024
_MAX_QUOTED = 100


def normalize_url(url: str) -> str:
    """Azure-style ``/chat/completions`` is the same endpoint as ``/v1/chat/completions``."""
    if url.startswith("/") and not url.startswith("/v1/"):
        return "/v1" + url
    return url


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line longer than the per-request limit; its bytes were skipped, not read into memory."""

    length: int


def iter_lines(fh: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """Yield ``(line_number, raw_line)`` with line ends and a leading BOM removed.

    A line whose content (without its ``\\n`` or ``\\r\\n`` end, and without the BOM) is longer
    than ``max_line_bytes`` is yielded as :class:`LineTooLong` after skipping it in bounded chunks.
    """
    limit = max_line_bytes + 2  # room for a "\r\n" line end
    lineno = 0
    while True:
        raw = fh.readline(limit)
        if not raw:
            return
        lineno += 1
        if lineno == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
            if not raw.endswith(b"\n"):
                raw += fh.readline(len(BOM))  # the BOM does not count against the limit
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        elif len(raw) >= limit:
            yield lineno, LineTooLong(_skip_line(fh, raw))
            continue
        if len(raw) > max_line_bytes:
            yield lineno, LineTooLong(len(raw))
            continue
        yield lineno, raw


def _skip_line(fh: BinaryIO, head: bytes) -> int:
    """Read past the rest of a line that starts with ``head``; its length without the line end."""
    length = len(head)
    previous, chunk = head, head
    while chunk and not chunk.endswith(b"\n"):
        previous, chunk = chunk, fh.readline(_SKIP_CHUNK)
        length += len(chunk)
    if chunk.endswith(b"\n"):
        length -= 2 if (chunk[-2:-1] or previous[-1:]) == b"\r" else 1
    return length


@dataclass(slots=True)
class ValidationResult:
    """The outcome of validating one input file."""

    total: int = 0
    model: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return self.error_count == 0 and not self.stopped


class Validator:
    """Checks lines one at a time (:meth:`feed`), then reports (:meth:`finish`)."""

    def __init__(
        self,
        *,
        endpoint: str,
        models: Collection[str],
        max_requests: int,
        max_errors: int = 1000,
        max_line_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.endpoint = normalize_url(endpoint)
        self.required_body = BATCH_ENDPOINTS.get(self.endpoint, ())
        self.models = models
        self.max_requests = max_requests
        self.max_errors = max_errors
        self.max_line_bytes = max_line_bytes
        self.result = ValidationResult()
        self._custom_ids: set[str] = set()
        self._lines = 0  # non-blank lines: candidate requests
        self._needs_messages = "messages" in self.required_body

    def error(self, code: str, message: str, *, line: int | None, param: str | None) -> None:
        self.result.error_count += 1
        if len(self.result.errors) < self.max_errors:
            self.result.errors.append(
                {"code": code, "message": message, "param": param, "line": line}
            )

    def feed(self, lineno: int, raw: bytes | LineTooLong) -> None:
        if isinstance(raw, LineTooLong):
            self._lines += 1
            self.error(
                "invalid_request",
                f"This line is {raw.length} bytes long; a request may be at most "
                f"{self.max_line_bytes} bytes.",
                line=lineno,
                param=None,
            )
            return
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError:
            if not raw.strip():
                return  # blank line
            self._lines += 1
            self.error(
                "invalid_json_line",
                "This line is not parseable as valid JSON.",
                line=lineno,
                param=None,
            )
            return
        self._lines += 1
        if isinstance(request, dict) and self._accept(request):
            self.result.total += 1
            return
        if not isinstance(request, dict):
            self.error(
                "invalid_request",
                f"Each line must be a JSON object, but this line is a JSON {_json_type(request)}.",
                line=lineno,
                param=None,
            )
            return
        before = self.result.error_count
        self._check_request(lineno, request)
        if self.result.error_count == before:
            self.result.total += 1

    def _accept(self, request: dict[str, Any]) -> bool:
        """The fast path for the common case, a valid request: accept it (with the side effects
        of the full checks) if it certainly passes them all; otherwise return ``False`` without
        side effects, so that the full checks run and report what is wrong.

        Keep it in step with :meth:`_check_request`, :meth:`_check_custom_id` and
        :meth:`_check_body`: it must never accept a request that they would reject.
        """
        custom_id = request.get("custom_id")
        body = request.get("body")
        if not (
            isinstance(custom_id, str)
            and custom_id
            and isinstance(body, dict)
            and request.get("method") == "POST"
            # normalize_url is idempotent and self.endpoint is normalized, so equality suffices;
            # other spellings (Azure's "/chat/completions") take the full checks
            and request.get("url") == self.endpoint
            and custom_id not in self._custom_ids
            and body.get("stream") is not True
        ):
            return False
        model = body.get("model")
        if not isinstance(model, str) or model not in self.models:
            return False
        if self.result.model is not None and model != self.result.model:
            return False
        for name in self.required_body:
            if body.get(name) is None:
                return False
        if self._needs_messages:
            messages = body["messages"]  # present and not null: it is required
            if not isinstance(messages, list) or not messages:
                return False
        if len(self._custom_ids) <= self.max_requests:
            self._custom_ids.add(custom_id)
        if self.result.model is None:
            self.result.model = model
        return True

    def _check_request(self, lineno: int, request: dict[str, Any]) -> None:
        missing = [key for key in _REQUIRED_KEYS if request.get(key) is None]
        for key in missing:
            self.error(
                "missing_required_parameter",
                f"Missing required parameter: '{key}'.",
                line=lineno,
                param=key,
            )
        custom_id = request.get("custom_id")
        if custom_id is not None:
            self._check_custom_id(lineno, custom_id)
        method = request.get("method")
        if method is not None and method != "POST":
            self.error(
                "invalid_request",
                f"Invalid method {_short(method)}: only 'POST' is supported.",
                line=lineno,
                param="method",
            )
        url = request.get("url")
        if url is not None and (not isinstance(url, str) or normalize_url(url) != self.endpoint):
            self.error(
                "invalid_url",
                "The URL provided for this request does not match the batch endpoint "
                f"({self.endpoint}).",
                line=lineno,
                param="url",
            )
        body = request.get("body")
        if body is None:
            return
        if not isinstance(body, dict):
            self.error(
                "invalid_request",
                f"'body' must be a JSON object, but it is a JSON {_json_type(body)}.",
                line=lineno,
                param="body",
            )
            return
        self._check_body(lineno, body)

    def _check_custom_id(self, lineno: int, custom_id: Any) -> None:
        if not isinstance(custom_id, str) or not custom_id:
            self.error(
                "invalid_request",
                f"'custom_id' must be a non-empty string, got {_short(custom_id)}.",
                line=lineno,
                param="custom_id",
            )
        elif custom_id in self._custom_ids:
            self.error(
                "duplicate_custom_id",
                f"The custom_id '{_clip(custom_id)}' is a duplicate of the custom_id of an earlier "
                "request; every request in a batch needs its own.",
                line=lineno,
                param="custom_id",
            )
        elif len(self._custom_ids) <= self.max_requests:
            self._custom_ids.add(custom_id)

    def _check_body(self, lineno: int, body: dict[str, Any]) -> None:
        if body.get("stream") is True:
            self.error(
                "streaming_unsupported",
                "Streaming is not supported in the Batch API; remove 'stream' from the body.",
                line=lineno,
                param="body.stream",
            )
        model = body.get("model")
        if model is None:
            self.error(
                "invalid_request", "Model parameter is required.", line=lineno, param="body.model"
            )
        elif not isinstance(model, str):
            self.error(
                "invalid_request",
                f"Model parameter must be a string, got {_short(model)}.",
                line=lineno,
                param="body.model",
            )
        elif model not in self.models:
            self.error(
                "model_not_found",
                f"The provided model '{_clip(model)}' is not supported by the Batch API "
                "of this server (it is not in the routing table).",
                line=lineno,
                param="body.model",
            )
        elif self.result.model is None:
            self.result.model = model
        elif model != self.result.model:
            self.error(
                "model_mismatch",
                f"The model '{_clip(model)}' of this request does not match the model "
                f"'{self.result.model}' of the rest of the file; a batch serves one model.",
                line=lineno,
                param="body.model",
            )
        for name in self.required_body:
            if body.get(name) is None:
                label = _FIELD_NAMES.get(name, name.capitalize())
                self.error(
                    "invalid_request",
                    f"{label} parameter is required.",
                    line=lineno,
                    param=f"body.{name}",
                )
        messages = body.get("messages")
        bad_messages = messages is not None and (not isinstance(messages, list) or not messages)
        if "messages" in self.required_body and bad_messages:
            self.error(
                "invalid_request",
                "'messages' must be a non-empty array of message objects.",
                line=lineno,
                param="body.messages",
            )

    def file_error(self, code: str, message: str) -> None:
        """An error about the whole file: always listed, whatever the cap."""
        self.result.error_count += 1
        self.result.errors.append({"code": code, "message": message, "param": None, "line": None})

    def finish(self) -> ValidationResult:
        line_errors = self.result.error_count
        if self._lines == 0:
            self.file_error(
                "empty_file",
                "The input file is empty. Please ensure the batch contains at least one request.",
            )
        elif self._lines > self.max_requests:
            self.file_error(
                "too_many_tasks",
                f"The input file has {self._lines} requests; a batch may have at most "
                f"{self.max_requests}. Split it into several batches.",
            )
        listed = len(self.result.errors)
        if line_errors > self.max_errors:
            self.result.errors.append(
                {
                    "code": "too_many_errors",
                    "message": f"{self.result.error_count} errors in total; only the first "
                    f"{listed} are listed.",
                    "param": None,
                    "line": None,
                }
            )
        if self.result.error_count:
            self.result.total = 0
            self.result.model = None
        return self.result


def validate_stream(
    fh: BinaryIO,
    *,
    endpoint: str,
    models: Collection[str],
    max_requests: int,
    max_errors: int = 1000,
    max_line_bytes: int = 32 * 1024 * 1024,
    should_stop: Callable[[], bool] | None = None,
) -> ValidationResult:
    """Validate a whole input file from a blocking binary reader (run it off the event loop)."""
    validator = Validator(
        endpoint=endpoint,
        models=models,
        max_requests=max_requests,
        max_errors=max_errors,
        max_line_bytes=max_line_bytes,
    )
    for lineno, raw in iter_lines(fh, max_line_bytes):
        validator.feed(lineno, raw)
        if should_stop is not None and lineno % _CHECK_STOP_EVERY == 0 and should_stop():
            validator.result.stopped = True
            return validator.result
    return validator.finish()


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


def _short(value: Any, limit: int = 60) -> str:
    """``value`` as JSON for an error message, cut to ``limit`` characters."""
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads deeper)
        text = "[...]" if isinstance(value, list) else "{...}"
    return _clip(text, limit)


def _clip(text: str, limit: int = _MAX_QUOTED) -> str:
    """A client-supplied string quoted in an error message, cut so that messages stay small."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
