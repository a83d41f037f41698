"""Parsing of query parameters and JSON bodies with OpenAI's error codes (rather than FastAPI's
422s)."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import orjson
from starlette.requests import Request

from batchd.errors import InvalidRequest, PayloadTooLarge

__all__ = [
    "EXPIRY_SECONDS_SCHEMA",
    "MAX_EXPIRY",
    "MIN_EXPIRY",
    "anthropic_page",
    "check_expiry_seconds",
    "one_cursor",
    "parse_choice",
    "parse_integer",
    "parse_limit",
    "read_json_object",
]

# expires_after / output_expires_after: 1 hour to 30 days after the file is created.
MIN_EXPIRY, MAX_EXPIRY = 3600, 30 * 24 * 3600
EXPIRY_SECONDS_SCHEMA: dict[str, Any] = {
    "type": "integer",
    "minimum": MIN_EXPIRY,
    "maximum": MAX_EXPIRY,
}


_INTEGER = re.compile(r"[ \t]*[+-]?[0-9]+[ \t]*")


def parse_integer(raw: str) -> int | None:
    """``raw`` as an integer, if it is one in ASCII digits (``int()`` would also take ``1_000``
    and the digits of other scripts); ``None`` otherwise."""
    return int(raw) if _INTEGER.fullmatch(raw) else None


def check_expiry_seconds(value: int, *, param: str) -> int:
    if not MIN_EXPIRY <= value <= MAX_EXPIRY:
        raise InvalidRequest(
            f"Invalid '{param}': {value}. Expected a value between {MIN_EXPIRY} (1 hour) and "
            f"{MAX_EXPIRY} (30 days).",
            param=param,
            code="invalid_value",
        )
    return value


def parse_limit(raw: str | None, *, default: int, maximum: int) -> int:
    if raw is None:
        return default
    value = parse_integer(raw)
    if value is None:
        raise InvalidRequest(
            f"Invalid type for 'limit': expected an integer, but got {raw!r}.",
            param="limit",
            code="invalid_type",
        )
    if value < 1:
        raise InvalidRequest(
            f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but got "
            f"{value} instead.",
            param="limit",
            code="integer_below_min_value",
        )
    if value > maximum:
        raise InvalidRequest(
            f"Invalid 'limit': integer above maximum value. Expected a value <= {maximum}, but "
            f"got {value} instead.",
            param="limit",
            code="integer_above_max_value",
        )
    return value


def one_cursor(after_id: str | None, before_id: str | None) -> None:
    """Anthropic's lists page from ``after_id`` or ``before_id``, not both."""
    if after_id is not None and before_id is not None:
        raise InvalidRequest("Specify at most one of after_id and before_id.", param="before_id")


def anthropic_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A page of Anthropic's lists: ``first_id`` and ``last_id`` those of ``data``'s ends."""
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def parse_choice(raw: str | None, *, name: str, choices: Collection[str], default: str) -> str:
    if raw is None:
        return default
    if raw not in choices:
        supported = ", ".join(f"'{c}'" for c in choices)
        raise InvalidRequest(
            f"Invalid value for '{name}': {raw!r}. Supported values are: {supported}.",
            param=name,
            code="invalid_value",
        )
    return raw


async def read_json_object(
    request: Request, *, max_bytes: int, empty_is_object: bool = False
) -> dict[str, Any]:
    """The request's JSON object, read up to ``max_bytes`` (413 ``request_too_large`` above);
    400 ``invalid_json``/``invalid_type`` otherwise. ``empty_is_object``: no body means ``{}``."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(
                f"The request body is larger than {max_bytes} bytes.", code="request_too_large"
            )
    if empty_is_object and not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The OpenAI API expects a JSON "
            "payload.",
            code="invalid_json",
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    return value
