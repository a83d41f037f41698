"""``POST /v1/files`` bodies: multipart parsed as it streams in, the file part written straight to
storage (hashed and counted on the way), so an upload never sits in memory."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request

from batchd.api.params import parse_integer
from batchd.config import Settings
from batchd.core.files import Ingest
from batchd.errors import APIError, InvalidRequest, StorageFault
from batchd.service.files import UploadCap, too_large
from batchd.storage import BlobTooLarge

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


@dataclass
class ParsedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    # The file's bytes, stored (and, for a batch file, validated and indexed) as they stream in.
    ingest: Ingest | None = None


class _Handler:
    """python-multipart callbacks: fields are collected (size-capped), the file part is streamed."""

    def __init__(self, new_ingest: Callable[[str | None], Ingest]) -> None:
        self.new_ingest = new_ingest
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
            if self.result.ingest is not None:
                raise InvalidRequest(
                    "Only one file may be uploaded per request.", param="file", code="invalid_value"
                )
            self._in_file = True
            self.result.filename = sanitize_filename(
                filename.decode("utf-8", "replace") if filename is not None else "upload"
            )
            self.result.ingest = self.new_ingest(self.result.fields.get("purpose"))
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
        """Store (and validate) the file bytes parsed so far. The blob is hashed and written in
        a thread of its own, so that this work and the validation overlap."""
        pieces, self._file_data = self._file_data, []
        ingest = self.result.ingest
        if ingest is None:
            return
        for piece in pieces:
            ingest.write(piece)

    def on_part_end(self) -> None:
        if self._field is not None:
            self.result.fields[self._field] = self._value.decode("utf-8", "replace")
        self._in_file = False
        self._field = None


async def parse_upload(
    request: Request,
    settings: Settings,
    new_ingest: Callable[[str | None], Ingest],
    cap: UploadCap | None = None,
) -> ParsedUpload:
    """Parse a multipart upload; the file part goes to ``new_ingest(purpose)`` as it arrives.
    On error, the partial blob is discarded and the rest of the body is drained so that the
    client reads a clean error response."""
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
    handler = _Handler(new_ingest)
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
    except (APIError, BlobTooLarge, StorageFault, ValueError) as exc:
        if handler.result.ingest is not None:
            await handler.result.ingest.abort()
        async for _ in stream:  # drain, so that the client reads the response
            pass
        if isinstance(exc, APIError | StorageFault):
            raise
        if isinstance(exc, BlobTooLarge):
            if cap is not None and cap.error is not None and exc.limit == cap.limit:
                raise cap.error from None
            raise too_large(exc.limit, handler.result.fields.get("purpose")) from None
        raise InvalidRequest(f"Malformed multipart body: {exc}", code="invalid_value") from None
    except BaseException:
        if handler.result.ingest is not None:
            await handler.result.ingest.abort()
        raise
    return handler.result
