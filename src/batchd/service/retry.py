"""Retrying the failures of a batch: a new batch of the requests that ended in its error file.

``POST /v1/batches/{id}/retry`` and ``batchd retry BATCH_ID`` (batchd extensions) read the ended
batch's error file, keep the ``custom_id``\\ s whose failure may pass on another try
(:func:`retryable`: HTTP 408, 409, 429 and 5xx answers, timeouts, connection errors, unreadable
answers, requests cut off by a cancel or the deadline, a model that was not routed), or every
one with ``all_errors``, copy their lines from the batch's input file into a new input file (line
for line, so nothing about a request changes) and create a batch on it with the same endpoint,
completion window and metadata, plus ``batchd_retry_of`` naming the batch it retries. Both files
are streamed: memory holds the set of ``custom_id``\\ s to retry, not the files.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import PurePath
from typing import Any

import orjson

from batchd.core.lifecycle import TERMINAL
from batchd.errors import Conflict, InvalidRequest, NotFound
from batchd.service.batches import MAX_METADATA_PAIRS, BatchService, NewBatch
from batchd.service.files import FileService
from batchd.store import BatchRecord, FileRecord

__all__ = ["RETRY_OF", "retry_batch", "retryable"]

#: The metadata key of a retry batch: the id of the batch whose failures it runs again.
RETRY_OF = "batchd_retry_of"

#: Error codes (``response: null`` lines) that another try may turn into an answer.
RETRYABLE_CODES = frozenset(
    {
        "request_timeout",
        "connection_error",
        "invalid_upstream_response",
        "server_error",
        "provider_closed",
        "batch_cancelled",
        "batch_expired",
        "model_not_found",  # the route was missing; the message says to add it and retry
    }
)
_RETRYABLE_STATUSES = frozenset({408, 409, 429})


def retryable(line: Any) -> bool:
    """Whether an error-file line's failure may pass on another try."""
    if not isinstance(line, dict):
        return False
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict):
        status = response.get("status_code")
        return isinstance(status, int) and (status in _RETRYABLE_STATUSES or status >= 500)
    return isinstance(error, dict) and error.get("code") in RETRYABLE_CODES


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The lines of a streamed file, each with its ``\\n`` (the last one given one)."""
    rest = b""
    async for chunk in chunks:
        data = rest + chunk
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            yield data[start : end + 1]
            start = end + 1
        rest = data[start:]
    if rest:
        yield rest + b"\n"


async def retry_batch(
    batches: BatchService, files: FileService, project: str, batch_id: str, *, all_errors: bool
) -> BatchRecord:
    """A new batch of ``batch_id``'s retryable failures (every failure with ``all_errors``)."""
    batch = await batches.get(project, batch_id)
    if batch.status not in TERMINAL:
        raise Conflict(
            f"Batch {batch_id} is {batch.status}: retry its failures once it has ended (cancel it "
            "first to retry now).",
            code="batch_not_ended",
        )
    how = "failed request" if all_errors else "retryable failure"
    if batch.error_file_id is None:
        raise InvalidRequest(
            f"Batch {batch_id} has no error file: there is no {how} to retry.",
            code="nothing_to_retry",
        )
    wanted: set[str] = set()
    failures = 0
    _, chunks = await _content(files, project, batch.error_file_id, "error", batch)
    async for line in _lines(chunks):
        if line.strip():
            record = orjson.loads(line)
            failures += 1
            if all_errors or retryable(record):
                wanted.add(record["custom_id"])
    if not wanted:
        raise InvalidRequest(
            f"Batch {batch_id} has no {how} to retry: none of its {failures} failures is "
            "retryable (they are 4xx answers and errors another try would repeat). Fix the "
            "requests, or retry them all with all_errors (batchd retry --all-errors).",
            code="nothing_to_retry",
        )
    source, chunks = await _content(files, project, batch.input_file_id, "input", batch)
    ingest = files.ingest("batch", await files.upload_cap(project))
    try:
        async for line in _lines(chunks):
            if line.strip() and orjson.loads(line).get("custom_id") in wanted:
                ingest.write(line)
    except BaseException:
        await ingest.abort()
        raise
    name = PurePath(source.filename)
    retry_input = await files.create(
        project, ingest, filename=f"{name.stem}.retry{name.suffix or '.jsonl'}", purpose="batch"
    )
    metadata = {key: value for key, value in (batch.metadata or {}).items() if key != RETRY_OF}
    if len(metadata) >= MAX_METADATA_PAIRS:
        raise InvalidRequest(
            f"Batch {batch_id} has {len(metadata)} metadata pairs, the most a batch may have, so "
            f"its retry has no room for '{RETRY_OF}'; create the batch on {retry_input.id} "
            "yourself.",
            code="invalid_metadata",
        )
    new = NewBatch(
        input_file_id=retry_input.id,
        endpoint=batch.endpoint,
        completion_window=batch.completion_window,
        metadata={**metadata, RETRY_OF: batch.id},
        output_expires_after=batch.output_expires_after,
        deadline=batch.expires_at is not None,
        dialect=batch.dialect,
    )
    return await batches.create(project, new)


async def _content(
    files: FileService, project: str, file_id: str, which: str, batch: BatchRecord
) -> tuple[FileRecord, AsyncIterator[bytes]]:
    try:
        return await files.content(project, file_id)
    except NotFound:
        raise NotFound(
            f"The {which} file {file_id} of batch {batch.id} is gone (expired or deleted), so "
            "its failed requests cannot be retried from it.",
            code="file_not_found",
        ) from None
