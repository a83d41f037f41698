"""Records as the dashboard shows them: plain dicts for the templates and the live JSON."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from batchd.core.lifecycle import CANCELLABLE, TERMINAL, BatchEvent
from batchd.service.monitor import ErrorCounts, ModelState
from batchd.store import BatchRecord, FileRecord

__all__ = [
    "batch_view",
    "errors_view",
    "event_view",
    "file_view",
    "human_bytes",
    "model_view",
    "timestamp",
]


def timestamp(value: int | float | None) -> str:
    """A Unix time as ``2026-12-05 00:12:46 UTC`` (empty for ``None``)."""
    if value is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # unreachable


def _tokens(usage: dict[str, Any] | None) -> int:
    if not usage:
        return 0
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    return int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)


def batch_view(batch: BatchRecord, now: float) -> dict[str, Any]:
    """A batch's figures. ``avg_rps``/``avg_tps`` are the averages since it started running
    (the page shows them until two polls give a current rate, which the browser computes)."""
    done = batch.completed + batch.failed
    tokens = _tokens(batch.usage)
    running = batch.status in ("in_progress", "finalizing", "cancelling")
    started = batch.in_progress_at
    elapsed = max(0.0, now - started) if started is not None and running else None
    avg_rps = done / elapsed if elapsed else None
    avg_tps = tokens / elapsed if elapsed else None
    remaining = max(0, batch.total - done)
    eta = remaining / avg_rps if avg_rps and batch.status == "in_progress" else None
    return {
        "id": batch.id,
        "project": batch.project,
        "status": batch.status,
        "endpoint": batch.endpoint,
        "model": batch.model,
        "input_file_id": batch.input_file_id,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "created": timestamp(batch.created_at),
        "in_progress_at": batch.in_progress_at,
        "expires": timestamp(batch.expires_at),
        "total": batch.total,
        "completed": batch.completed,
        "failed": batch.failed,
        "done": done,
        "tokens": tokens,
        "running": running,
        "terminal": batch.status in TERMINAL,
        "cancellable": batch.status in CANCELLABLE,
        "avg_rps": round(avg_rps, 2) if avg_rps is not None else None,
        "avg_tps": round(avg_tps, 1) if avg_tps is not None else None,
        "eta_s": round(eta) if eta is not None else None,
        "metadata": batch.metadata or {},
        "errors": batch.errors or [],
    }


def event_view(event: BatchEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "from": event.from_status,
        "to": event.to_status,
        "at": timestamp(event.created_at),
    }


def file_view(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "project": record.project,
        "filename": record.filename,
        "purpose": record.purpose,
        "bytes": record.bytes,
        "size": human_bytes(record.bytes),
        "created": timestamp(record.created_at),
        "expires": timestamp(record.expires_at),
        "status": record.status,
    }


def _without_credentials(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=netloc))


def model_view(state: ModelState, *, upstream: bool) -> dict[str, Any]:
    """A route as the dashboard shows it; its upstream only with ``upstream`` (an admin key, or
    no keys at all), and never with credentials in it."""
    return {
        "name": state.name,
        "provider": state.provider,
        "aliases": list(state.aliases),
        "max_concurrency": state.max_concurrency,
        "share": state.share,
        "rpm": state.rpm,
        "tpm": state.tpm,
        "group_size": state.group_size,
        "upstream": _without_credentials(state.upstream) if upstream else None,
        "in_flight": state.in_flight,
        "paused_for": state.upstream_paused_for,
        "replicas": state.replicas or [],
    }


def errors_view(counts: ErrorCounts) -> dict[str, Any]:
    if counts.source == "unavailable":
        note = f"Not counted now: {counts.note}"
    elif not counts.complete:
        note = f"Counted over the first {counts.lines:,} error lines."
    elif counts.source == "partial":
        note = "From the error lines durable so far (partial results), refreshed every 5 s."
    else:
        note = ""
    return {
        "codes": [{"code": code, "count": count} for code, count in counts.counts.items()],
        "lines": counts.lines,
        "complete": counts.complete,
        "source": counts.source,
        "note": note,
    }
