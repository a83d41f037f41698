"""How batchd's processes log: plain text or one JSON object per line, and the access log.

``log_format = "text"`` (the default) writes ``time LEVEL logger: message``; ``"json"`` writes
every record (batchd's, uvicorn's, the libraries') as one JSON object per line with
``timestamp`` (ISO 8601, UTC, milliseconds), ``level``, ``logger`` and ``message``, the
``exception`` when there is one, and the fields a record carries in ``extra={"fields": {...}}``
as keys of their own (the access log's ``method``, ``path``, ``status``…). A formatter of
30 lines over orjson (already a dependency, and what the API writes JSON with) rather than
python-json-logger: nothing to configure, no new package, and the fields are exactly these.

The access log (logger ``batchd.access``, INFO) has one line per HTTP request, written by
:class:`batchd.api.access.AccessLogMiddleware` once the answer is sent: the client's address,
the method, the path (without its query string), the status, the latency in milliseconds, the
request id (``x-request-id``) and the project of the key, when one was checked. Never a header
(the API key is in one), never a body.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

import orjson

__all__ = [
    "ACCESS_LOGGER",
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "configure_logging",
    "formatter",
    "is_loopback",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
ACCESS_LOGGER = "batchd.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(str(key), value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``log_format`` (``text`` or ``json``)."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")


def configure_logging(level: str, log_format: str, *, stream: IO[str] | None = None) -> None:
    """The root logger at ``level`` with one handler to ``stream`` (stderr) in ``log_format``;
    uvicorn's loggers (which keep handlers of their own) write through it too."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, 127.0.0.0/8, ``::1``); a host
    name that is not ``localhost`` may resolve to anything, so it is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
