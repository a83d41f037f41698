"""Store records for the tests below the API (the store, shared work, webhooks)."""

from __future__ import annotations

from typing import Any

from batchd.store import BatchRecord

__all__ = ["batch_record"]


def batch_record(i: int, **fields: Any) -> BatchRecord:
    """Batch ``i``: ``batch_<i in 32 hex digits>`` on the input file ``file-<i in 24 digits>``,
    a ``validating`` chat batch created at 1000; ``fields`` set or replace any field."""
    values: dict[str, Any] = {
        "id": f"batch_{i:032x}",
        "endpoint": "/v1/chat/completions",
        "input_file_id": f"file-{i:024d}",
        "completion_window": "24h",
        "status": "validating",
        "created_at": 1000,
    }
    return BatchRecord(**{**values, **fields})
