"""Streaming validation of a batch input file.

One pass, line by line, with memory bounded by the longest line and the set of ``custom_id``\\ s
(itself bounded by the request limit). Every bad line is reported with its 1-based number, the
offending ``param`` and the code of the OpenAI/Azure error catalogue; the list is capped at
``max_errors`` entries plus one summary entry. A file whose first line shows that it is not
JSONL at all (a CSV table, a pretty-printed JSON document, a Parquet file: :func:`not_jsonl`)
gets one ``invalid_json_line`` error that says so, and its other lines are not read.

Tolerated: a UTF-8 byte-order mark, CRLF line ends, blank lines, a missing final newline.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson
import simdjson

from batchd.config import ModelNames, Settings
from batchd.core.request_index import RequestIndexWriter
from batchd.protocol import BATCH_ENDPOINTS, MESSAGES_ENDPOINT

__all__ = [
    "BOM",
    "LineSplitter",
    "LineTooLong",
    "UploadValidator",
    "ValidationResult",
    "Validator",
    "first_line_not_jsonl",
    "index_stream",
    "iter_lines",
    "max_requests_for",
    "normalize_url",
    "not_jsonl",
    "validate_stream",
    "validation_key",
]

BYTES_PER_TOKEN = 4  # the enqueued-token estimate of a request line (see ValidationResult)
BOM = b"\xef\xbb\xbf"
_REQUIRED_KEYS = ("custom_id", "method", "url", "body")
_FIELD_NAMES = {
    "messages": "Messages",
    "input": "Input",
    "prompt": "Prompt",
    "max_tokens": "The 'max_tokens'",
}
_CHECK_STOP_EVERY = 1024
_MAX_QUOTED = 100


_MAGIC = (
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "a ZIP archive, e.g. an Excel workbook"),
    (b"\x1f\x8b", "a gzip-compressed file: decompress it first"),
    (b"%PDF", "a PDF document"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
_NOT_JSONL_HINT = (
    'A batch file has one JSON request per line: {"custom_id": ..., "method": "POST", '
    '"url": ..., "body": {...}}. `batchd prepare` turns a table (CSV, TSV, JSONL or Parquet) '
    "into one."
)


def not_jsonl(lineno: int, raw: bytes) -> str | None:
    """The error message for a file whose first non-blank line, line ``lineno``, is ``raw``
    (which is not valid JSON) when that line shows the file is of another kind altogether: a
    table (CSV or TSV: separators, no braces), a JSON document over several lines (a line
    ``{`` or ``[`` alone), or a binary format (Parquet, ZIP, gzip, ...). ``None`` for a line
    that may be a broken request, whose errors are then reported line by line."""
    kind = next((name for magic, name in _MAGIC if raw.startswith(magic)), None)
    if kind is None:
        try:
            text = raw.decode("utf-8").strip(" \t\r\ufeff")
        except UnicodeDecodeError:
            return None
        if text in ("{", "["):
            what = "an object" if text == "{" else "an array"
            kind = f"a JSON document with {what} over several lines, not one request per line"
        elif (
            not any(char < " " and char != "\t" for char in text)
            and not text.startswith("[")
            and "{" not in text
            and any(char.isalnum() for char in text)
        ):
            if "\t" in text:
                kind = "a TSV table"
            elif "," in text or ";" in text:
                kind = "a CSV table"
    if kind is None:
        return None
    return (
        f"The input file is not JSONL: line {lineno} is not a JSON object (it looks like "
        f"{kind}). {_NOT_JSONL_HINT}"
    )


def first_line_not_jsonl(fh: BinaryIO, max_line_bytes: int = 1024 * 1024) -> str | None:
    """:func:`not_jsonl` for the first non-blank line of a blocking binary reader (a line over
    ``max_line_bytes`` is not read: ``None``)."""
    for lineno, _, raw in iter_lines(fh, max_line_bytes, chunk_size=64 * 1024):
        if isinstance(raw, LineTooLong):
            return None
        if raw.strip():
            try:
                orjson.loads(raw)
            except orjson.JSONDecodeError:
                return not_jsonl(lineno, raw)
            return None
    return None


def normalize_url(url: str) -> str:
    """Azure-style ``/chat/completions`` is the same endpoint as ``/v1/chat/completions``."""
    if url.startswith("/") and not url.startswith("/v1/"):
        return "/v1" + url
    return url


def max_requests_for(settings: Settings, endpoint: str) -> int:
    """How many requests a batch of ``endpoint`` may have: ``message_batch_max_requests`` for
    Messages (Anthropic's 100,000), ``max_requests_per_batch`` (OpenAI's 50,000) otherwise."""
    if normalize_url(endpoint) == MESSAGES_ENDPOINT:
        return settings.message_batch_max_requests
    return settings.max_requests_per_batch


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line longer than the per-request limit; its bytes were skipped, not read into memory."""

    length: int


class LineSplitter:
    """Splits a byte stream fed in chunks of any size into lines (push-based).

    :meth:`feed` returns the lines a chunk completes, :meth:`close` the last one, each as
    ``(line_number, offset, raw_line)``: ``raw_line`` without its ``\\n`` or ``\\r\\n`` end (and
    without a leading BOM on line 1), ``offset`` where it starts in the stream, so that
    ``stream[offset:offset + len(raw_line)] == raw_line`` (for a :class:`LineTooLong`, where its
    line starts). A line whose content is longer than ``max_line_bytes`` comes as
    :class:`LineTooLong`; its bytes are counted, not kept, so memory stays bounded by the limit
    and the chunk size.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.lineno = 0  # lines completed so far
        self._parts: list[bytes] = []  # the pending, unterminated line
        self._pending = 0
        self._skipped: int | None = None  # length so far of a too-long pending line
        self._last = b""  # the last byte skipped (a "\r" before the "\n" is not content)
        self._fed = 0  # bytes fed so far
        self._start = 0  # where the pending line starts

    def feed(self, chunk: bytes) -> list[tuple[int, int, bytes | LineTooLong]]:
        chunk_start = self._fed
        self._fed += len(chunk)
        pieces = chunk.split(b"\n")
        if len(pieces) == 1:
            self._extend(chunk)
            return []
        out = [self._complete(pieces[0])]
        # The lines wholly inside this chunk: nothing pending, never line 1 (no BOM).
        lineno, limit = self.lineno, self.max_line_bytes
        position = chunk_start + len(pieces[0]) + 1
        for piece in pieces[1:-1]:
            lineno += 1
            start = position
            position += len(piece) + 1
            if piece.endswith(b"\r"):
                piece = piece[:-1]
            out.append((lineno, start, piece if len(piece) <= limit else LineTooLong(len(piece))))
        self.lineno = lineno
        self._start = position
        self._extend(pieces[-1])
        return out

    def close(self) -> list[tuple[int, int, bytes | LineTooLong]]:
        """The last line, when the stream does not end with a newline."""
        if self._skipped is not None:
            self.lineno += 1
            out: list[tuple[int, int, bytes | LineTooLong]] = [
                (self.lineno, self._start, LineTooLong(self._skipped))
            ]
        elif self._pending:
            self.lineno += 1
            out = [self._checked(b"".join(self._parts))]
        else:
            out = []
        self._reset()
        return out

    def _reset(self) -> None:
        self._parts = []
        self._pending = 0
        self._skipped = None
        self._last = b""

    def _checked(self, line: bytes) -> tuple[int, int, bytes | LineTooLong]:
        """The line (a BOM stripped from line 1); a too-long line's offset is where the line
        starts, BOM included."""
        bom = len(BOM) if self.lineno == 1 and line.startswith(BOM) else 0
        if len(line) - bom > self.max_line_bytes:
            return self.lineno, self._start, LineTooLong(len(line) - bom)
        return self.lineno, self._start + bom, line[bom:] if bom else line

    def _complete(self, piece: bytes) -> tuple[int, int, bytes | LineTooLong]:
        self.lineno += 1
        if self._skipped is not None:
            length = self._skipped + len(piece)
            if (piece[-1:] or self._last) == b"\r":
                length -= 1
            self._reset()
            return self.lineno, self._start, LineTooLong(length)
        line = b"".join((*self._parts, piece)) if self._parts else piece
        self._reset()
        if line.endswith(b"\r"):
            line = line[:-1]
        return self._checked(line)

    def _extend(self, rest: bytes) -> None:
        if not rest:
            return
        if self._skipped is not None:
            self._skipped += len(rest)
            self._last = rest[-1:]
            return
        self._parts.append(rest)
        self._pending += len(rest)
        # Past this, the line is too long whatever ends it ("\r\n", and a BOM on line 1).
        allowance = 1 + (len(BOM) if self.lineno == 0 else 0)
        if self._pending > self.max_line_bytes + allowance:
            head = b"".join(self._parts)
            bom = len(BOM) if self.lineno == 0 and head.startswith(BOM) else 0
            self._parts = []
            self._skipped = self._pending - bom
            self._last = rest[-1:]


def iter_lines(
    fh: BinaryIO, max_line_bytes: int, *, chunk_size: int = 1024 * 1024
) -> Iterator[tuple[int, int, bytes | LineTooLong]]:
    """The lines of a blocking binary reader, as :class:`LineSplitter` splits them:
    ``(line_number, offset, raw_line)``."""
    splitter = LineSplitter(max_line_bytes)
    while chunk := fh.read(chunk_size):
        yield from splitter.feed(chunk)
    yield from splitter.close()


@dataclass(slots=True)
class ValidationResult:
    """The outcome of validating one input file."""

    total: int = 0
    model: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    stopped: bool = False
    input_bytes: int = 0
    """Bytes of the accepted request lines: :attr:`estimated_tokens` comes from it."""

    @property
    def estimated_tokens(self) -> int:
        """The batch's prompt tokens, estimated at 4 bytes each (what the enqueued-token quota
        counts): over-estimates a little, since the JSON of each line is counted too."""
        return -(-self.input_bytes // BYTES_PER_TOKEN)

    @property
    def ok(self) -> bool:
        return self.error_count == 0 and not self.stopped

    def to_json(self, key: str) -> dict[str, Any]:
        """The result as the store keeps it, with the :func:`validation_key` it is valid for."""
        return {
            "key": key,
            "total": self.total,
            "model": self.model,
            "errors": self.errors,
            "error_count": self.error_count,
            "input_bytes": self.input_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ValidationResult:
        return cls(
            total=data["total"],
            model=data["model"],
            errors=data["errors"],
            error_count=data["error_count"],
            input_bytes=data.get("input_bytes", 0),
        )


class Validator:
    """Checks lines one at a time (:meth:`feed`), then reports (:meth:`finish`)."""

    def __init__(
        self,
        *,
        endpoint: str,
        models: ModelNames | Collection[str],
        max_requests: int,
        max_errors: int = 1000,
        max_line_bytes: int = 32 * 1024 * 1024,
        index: RequestIndexWriter | None = None,
    ) -> None:
        self.endpoint = normalize_url(endpoint)
        #: Gets every accepted request while the file has no error (see batchd.core.request_index).
        self.index = index
        self.required_body = BATCH_ENDPOINTS.get(self.endpoint, ())
        self.models = models if isinstance(models, ModelNames) else ModelNames.of(models)
        #: One route serves every request (``--model``): any model name, mixed ones too.
        self._any_model = self.models.force is not None
        self.max_requests = max_requests
        self.max_errors = max_errors
        self.max_line_bytes = max_line_bytes
        self.result = ValidationResult()
        self._custom_ids: set[str] = set()
        self._lines = 0  # non-blank lines: candidate requests
        self._needs_messages = "messages" in self.required_body
        self._parser = simdjson.Parser()
        self.not_jsonl = False
        """The first line showed the file is not JSONL (:func:`not_jsonl`): one error for the
        file, and the lines after it are not checked."""

    def error(self, code: str, message: str, *, line: int | None, param: str | None) -> None:
        self.result.error_count += 1
        if len(self.result.errors) < self.max_errors:
            self.result.errors.append(
                {"code": code, "message": message, "param": param, "line": line}
            )

    def feed(self, lineno: int, raw: bytes | LineTooLong, offset: int = 0) -> None:
        """Check line ``lineno``, which starts at byte ``offset`` of the file."""
        if self.not_jsonl:
            return
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
        custom_id = self._accept(raw)
        if custom_id is not None:
            self._lines += 1
            self._accepted(offset, raw, custom_id)
            return
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError:
            if not raw.strip():
                return  # blank line
            self._lines += 1
            message = not_jsonl(lineno, raw) if self._lines == 1 else None
            self.not_jsonl = message is not None
            self.error(
                "invalid_json_line",
                message or "This line is not parseable as valid JSON.",
                line=lineno,
                param=None,
            )
            return
        self._lines += 1
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
            self._accepted(offset, raw, request["custom_id"])

    def _accepted(self, offset: int, raw: bytes, custom_id: str) -> None:
        result = self.result
        result.total += 1
        result.input_bytes += len(raw)
        if self.index is not None and not result.error_count:
            assert result.model is not None
            self.index.add(offset, len(raw), custom_id, result.model)

    def _accept(self, raw: bytes) -> str | None:
        """The fast path for the common case, a valid request: accept it (with the side effects
        of the full checks) if it certainly passes them all, and return its ``custom_id``;
        otherwise return ``None`` without side effects, so that the full checks run on
        ``orjson.loads(raw)`` and report what is wrong.

        simdjson validates the whole line (UTF-8 included) but builds Python objects only for
        the fields read here, which makes it several times faster than a full parse. What it
        rejects (e.g. integers beyond 64 bits, which orjson accepts) takes the full path; what it
        accepts and orjson does not (a leading byte-order mark) is kept off it.
        """
        if raw.startswith(BOM):
            return None
        try:
            request = self._parser.parse(raw)
        except (ValueError, RuntimeError):
            return None
        if not isinstance(request, simdjson.Object):
            return None
        return self._accept_request(request)

    def _accept_request(self, request: simdjson.Object) -> str | None:
        """Keep in step with :meth:`_check_request`, :meth:`_check_custom_id` and
        :meth:`_check_body`: never accept a request that they would reject.

        Present keys are read by indexing (a missing one raises ``KeyError``: full checks);
        optional keys are looked up in the key list, because simdjson's ``get``/``in`` of an
        absent key is slow.
        """
        try:
            custom_id = request["custom_id"]
            body = request["body"]
            if not (
                isinstance(custom_id, str)
                and custom_id
                and isinstance(body, simdjson.Object)
                and request["method"] == "POST"
                # normalize_url is idempotent and self.endpoint is normalized, so equality
                # suffices; other spellings (Azure's "/chat/completions") take the full checks
                and request["url"] == self.endpoint
                and custom_id not in self._custom_ids
            ):
                return None
            # A key given twice: simdjson reads the first, orjson (full checks, runner) the last.
            body_keys = list(body.keys())  # faster than "stream" in body, which raises inside
            if _repeats_a_key(list(request.keys())) or _repeats_a_key(body_keys):
                return None
            if "stream" in body_keys and body["stream"] is True:
                return None
            model = body["model"]
            if model != self.result.model and not (
                isinstance(model, str)
                and (self._any_model or (self.result.model is None and model in self.models))
            ):
                return None
            for name in self.required_body:
                if body[name] is None:
                    return None
            if self._needs_messages:
                messages = body["messages"]
                if not isinstance(messages, simdjson.Array) or not len(messages):
                    return None
        except KeyError:
            return None
        if len(self._custom_ids) <= self.max_requests:
            self._custom_ids.add(custom_id)
        if self.result.model is None:
            self.result.model = model
        return custom_id

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
                f"of this server. {self.models.hint(_clip(model))}",
                line=lineno,
                param="body.model",
            )
        elif self.result.model is None:
            self.result.model = model
        elif model != self.result.model and not self._any_model:
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


def validation_key(settings: Settings, endpoint: str) -> str:
    """What a validation result depends on besides the file: reuse a result only if this matches."""
    parts = [
        2,  # the version of what a result holds (2: input_bytes)
        normalize_url(endpoint),
        settings.model_names.signature(),
        max_requests_for(settings, endpoint),
        settings.max_validation_errors,
        settings.max_request_bytes,
    ]
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:32]


class UploadValidator:
    """Validates a batch file while it is being uploaded, chunk by chunk, for the endpoint that
    its first request names; :meth:`finish` returns ``(endpoint, result)``, or ``None`` when the
    file does not name a batch endpoint in its first request (validation then waits for the
    batch, which knows its endpoint)."""

    def __init__(
        self,
        *,
        models: ModelNames | Collection[str],
        max_requests: int | Callable[[str], int],
        max_errors: int,
        max_line_bytes: int,
        index: RequestIndexWriter | None = None,
    ) -> None:
        """``max_requests``: a number, or the number for an endpoint."""
        self._splitter = LineSplitter(max_line_bytes)
        self._max_requests = max_requests
        self._new_validator = functools.partial(
            Validator,
            models=models,
            max_errors=max_errors,
            max_line_bytes=max_line_bytes,
            index=index,
        )
        self._validator: Validator | None = None
        self._abandoned = False

    @classmethod
    def for_settings(
        cls, settings: Settings, index: RequestIndexWriter | None = None
    ) -> UploadValidator:
        return cls(
            models=settings.model_names,
            max_requests=functools.partial(max_requests_for, settings),
            max_errors=settings.max_validation_errors,
            max_line_bytes=settings.max_request_bytes,
            index=index,
        )

    def feed(self, chunk: bytes) -> None:
        if not self._abandoned:
            for lineno, offset, raw in self._splitter.feed(chunk):
                self._line(lineno, offset, raw)

    def _line(self, lineno: int, offset: int, raw: bytes | LineTooLong) -> None:
        if self._validator is None:
            if isinstance(raw, LineTooLong):
                self._abandoned = True
                return
            if not raw.strip():
                return
            try:
                first = orjson.loads(raw)
            except orjson.JSONDecodeError:
                first = None
            url = first.get("url") if isinstance(first, dict) else None
            if not isinstance(url, str) or normalize_url(url) not in BATCH_ENDPOINTS:
                self._abandoned = True
                return
            limit = self._max_requests
            self._validator = self._new_validator(
                endpoint=url, max_requests=limit if isinstance(limit, int) else limit(url)
            )
        if not self._abandoned:
            self._validator.feed(lineno, raw, offset)

    def finish(self) -> tuple[str, ValidationResult] | None:
        if not self._abandoned:
            for lineno, offset, raw in self._splitter.close():
                self._line(lineno, offset, raw)
        if self._abandoned or self._validator is None:
            return None
        return self._validator.endpoint, self._validator.finish()


def validate_stream(
    fh: BinaryIO,
    *,
    endpoint: str,
    models: ModelNames | Collection[str],
    max_requests: int,
    max_errors: int = 1000,
    max_line_bytes: int = 32 * 1024 * 1024,
    should_stop: Callable[[], bool] | None = None,
    index: RequestIndexWriter | None = None,
) -> ValidationResult:
    """Validate a whole input file from a blocking binary reader (run it off the event loop);
    the accepted requests go to ``index`` while the file has no error."""
    validator = Validator(
        endpoint=endpoint,
        models=models,
        max_requests=max_requests,
        max_errors=max_errors,
        max_line_bytes=max_line_bytes,
        index=index,
    )
    for lineno, offset, raw in iter_lines(fh, max_line_bytes):
        validator.feed(lineno, raw, offset)
        if validator.not_jsonl:
            break  # one error for the whole file; its other lines are not read
        if should_stop is not None and lineno % _CHECK_STOP_EVERY == 0 and should_stop():
            validator.result.stopped = True
            return validator.result
    return validator.finish()


def index_stream(fh: BinaryIO, index: RequestIndexWriter, *, max_line_bytes: int) -> int:
    """Index the requests of an input file that validation already accepted, without checking
    them again (for a file validated before batchd kept request indexes); the number indexed.

    Blocking: run it off the event loop.
    """
    for lineno, offset, raw in iter_lines(fh, max_line_bytes):
        if isinstance(raw, LineTooLong):
            raise ValueError(f"input line {lineno} is longer than {max_line_bytes} bytes")
        if not raw.strip():
            continue
        request = orjson.loads(raw)
        index.add(offset, len(raw), request["custom_id"], request["body"]["model"])
    return index.finish()


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


def _repeats_a_key(keys: list[str]) -> bool:
    return len(set(keys)) != len(keys)
