"""Parsing of query parameters with OpenAI's error codes (rather than FastAPI's 422s)."""

from __future__ import annotations

from collections.abc import Collection

from batchd.errors import InvalidRequest

__all__ = ["parse_choice", "parse_limit"]


def parse_limit(raw: str | None, *, default: int, maximum: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"Invalid type for 'limit': expected an integer, but got {raw!r}.",
            param="limit",
            code="invalid_type",
        ) from None
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
