"""``POST /v1/files`` bodies: multipart parsed as it streams in, the file part written straight to
storage (hashed and counted on the way), so an upload never sits in memory."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request

from batchd.api.params import parse_integer
from batchd.config import Settings
from batchd.errors import APIError, InvalidRequest, PayloadTooLarge
from batchd.storage import BlobTooLarge, BlobWriter, Storage
from batchd.validation import UploadValidator

__all__ = ["ParsedUpload", "parse_upload", "sanitize_filename"]

_MAX_FIELD_BYTES = 64 * 1024
_MAX_FIELDS = 16
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def sanitize_filename(raw: str) -> str:
    """The last path component, without control, format (bidi overrides, zero-width) or line
    separator characters, at most 255 characters."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in _UNSAFE_CATEGORIES).strip()
    if name in ("", ".", ".."):
        name = "upload"
    return name[:255]


def too_large(limit: int, purpose: str | None) -> PayloadTooLarge:
    what = f"files with purpose '{purpose}'" if purpose else "uploaded files"
    size = f"{limit} bytes" if limit < 1024 * 1024 else f"{limit / (1024 * 1024):g} MiB"
    return PayloadTooLarge(
        f"The file is too large: {what} may be at most {size}. Split it into smaller files.",
        param="file",
        code="file_too_large",
    )


@dataclass
class ParsedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    writer: BlobWriter | None = None
    # Validates a batch file as it streams in, so that creating the batch need not read it again.
    validator: UploadValidator | None = None


class _Handler:
    """python-multipart callbacks: fields are collected (size-capped), the file part is streamed."""

    def __init__(self, storage: Storage, settings: Settings, cap: UploadCap | None) -> None:
        self.storage = storage
        self.settings = settings
        self.cap = cap
        self.result = ParsedUpload()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._field: str | None = None
        self._value = bytearray()
        self._in_file = False
        self._file_data: list[bytes] = []  # file bytes parsed but not yet written

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._headers = {}
        self._field = None
        self._value = bytearray()
        self._in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if name == "file":
            if self.result.writer is not None:
                raise InvalidRequest(
                    "Only one file may be uploaded per request.", param="file", code="invalid_value"
                )
            self._in_file = True
            self.result.filename = sanitize_filename(
                filename.decode("utf-8", "replace") if filename is not None else "upload"
            )
            purpose = self.result.fields.get("purpose")
            limit = self.settings.max_file_bytes(purpose)
            if self.cap is not None:
                limit = min(limit, self.cap.limit)
            self.result.writer = self.storage.writer(max_bytes=limit, background=True)
            if purpose == "batch":
                self.result.validator = UploadValidator.for_settings(self.settings)
        else:
            if len(self.result.fields) >= _MAX_FIELDS:
                raise InvalidRequest("Too many form fields.", code="invalid_value")
            self._field = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._file_data.append(data[start:end])
        else:
            self._value += data[start:end]
            if len(self._value) > _MAX_FIELD_BYTES:
                raise InvalidRequest(
                    f"Form field '{self._field}' is too long.",
                    param=self._field,
                    code="invalid_value",
                )

    def flush(self) -> None:
        """Write (and validate) the file bytes parsed so far. The writer hashes and writes in a
        thread of its own, so that this work and the validation overlap."""
        pieces, self._file_data = self._file_data, []
        writer, validator = self.result.writer, self.result.validator
        if writer is None:
            return
        for piece in pieces:
            writer.write(piece)
            if validator is not None:
                validator.feed(piece)

    def on_part_end(self) -> None:
        if self._field is not None:
            self.result.fields[self._field] = self._value.decode("utf-8", "replace")
        self._in_file = False
        self._field = None


@dataclass(frozen=True, slots=True)
class UploadCap:
    """A project's bound on the file of an upload, below the server's own: ``limit`` bytes;
    ``error`` is raised past it (``None``: the usual "file too large")."""

    limit: int
    error: APIError | None = None


async def parse_upload(
    request: Request, storage: Storage, settings: Settings, cap: UploadCap | None = None
) -> ParsedUpload:
    """Parse a multipart upload. On error, the partial blob is discarded and the rest of the
    body is drained so that the client reads a clean error response."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "Expected a multipart/form-data body with the fields 'file' and 'purpose'.",
            code="invalid_content_type",
        )
    limit = settings.max_file_bytes(None)
    declared = parse_integer(request.headers.get("content-length", ""))
    if declared is not None and declared > limit + _MAX_FIELD_BYTES:
        raise too_large(limit, None)
    handler = _Handler(storage, settings, cap)
    parser = MultipartParser(boundary, handler.callbacks())
    stream = request.stream()
    try:
        async for chunk in stream:
            parser.write(chunk)
            handler.flush()
        parser.finalize()
        handler.flush()
        if parser.state != MultipartState.END:
            raise ValueError(
                "it ends before its closing boundary (cut short?); send the upload again"
            )
    except (APIError, BlobTooLarge, ValueError) as exc:
        if handler.result.writer is not None:
            await handler.result.writer.abort()
        async for _ in stream:  # drain, so that the client reads the response
            pass
        if isinstance(exc, APIError):
            raise
        if isinstance(exc, BlobTooLarge):
            if cap is not None and cap.error is not None and exc.limit == cap.limit:
                raise cap.error from None
            raise too_large(exc.limit, handler.result.fields.get("purpose")) from None
        raise InvalidRequest(f"Malformed multipart body: {exc}", code="invalid_value") from None
    except BaseException:
        if handler.result.writer is not None:
            await handler.result.writer.abort()
        raise
    return handler.result
