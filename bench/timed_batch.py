"""One batch through a running ``batchd serve``, timed: upload, create, poll until it ends."""

from __future__ import annotations

import time
from typing import Any

import openai

__all__ = ["timed_batch"]

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


def timed_batch(
    client: openai.OpenAI, data: bytes, endpoint: str, poll: float = 0.05
) -> tuple[Any, float]:
    """The ended batch of ``data`` (a JSONL batch file) on ``endpoint``, and the seconds from the
    start of the upload to the end seen."""
    started = time.perf_counter()
    upload = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )
    while batch.status not in ENDED:
        time.sleep(poll)
        batch = client.batches.retrieve(batch.id)
    return batch, time.perf_counter() - started
