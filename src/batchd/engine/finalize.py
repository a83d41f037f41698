"""Writing output and error files (blocking code, run in a worker thread)."""

from __future__ import annotations

from typing import Any

import orjson

from batchd.ids import new_batch_request_id
from batchd.storage import BlobInfo, Storage
from batchd.validation import LineTooLong, iter_lines

__all__ = ["CANCELLED", "EXPIRED", "error_line", "write_unexecuted"]

CANCELLED = ("batch_cancelled", "The batch was cancelled before this request executed.")
EXPIRED = (
    "batch_expired",
    "This request could not be executed before the completion window expired.",
)


def error_line(custom_id: str, code: str, message: str) -> bytes:
    """One line of an error file for a request that got no HTTP response."""
    line: dict[str, Any] = {
        "id": new_batch_request_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
    return orjson.dumps(line) + b"\n"


def write_unexecuted(
    storage: Storage,
    input_key: str,
    output_key: str,
    reason: tuple[str, str],
    *,
    max_line_bytes: int,
) -> tuple[BlobInfo, int] | None:
    """Write one ``reason`` error line per request of a validated input file, in input order.

    Returns the blob and its line count, or ``None`` when the input has no requests.
    """
    code, message = reason
    writer = storage.writer()
    count = 0
    try:
        with storage.open_binary(input_key) as fh:
            for _lineno, raw in iter_lines(fh, max_line_bytes):
                if isinstance(raw, LineTooLong) or not raw.strip():
                    continue
                custom_id = orjson.loads(raw)["custom_id"]
                writer.write(error_line(custom_id, code, message))
                count += 1
        if count == 0:
            writer.abort_sync()
            return None
        return writer.commit_sync(output_key), count
    except BaseException:
        writer.abort_sync()
        raise
