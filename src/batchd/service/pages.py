"""Pages of a list, and the ``after`` cursor that picks where the next one starts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from batchd.errors import InvalidRequest

__all__ = ["Page", "resolve_cursor"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list, newest or oldest first as asked; ``has_more`` when more follow."""

    data: list[T]
    has_more: bool


async def resolve_cursor(
    after: str | None,
    *,
    kind: str,
    well_formed: Callable[[str], bool],
    lookup: Callable[[str], Awaitable[int | None]],
    param: str = "after",
) -> int | None:
    """The store sequence number of the ``after`` cursor object, or a 400 naming the bad id
    (and ``param``, the query parameter that gave it)."""
    if after is None:
        return None
    seq = await lookup(after) if well_formed(after) else None
    if seq is None:
        raise InvalidRequest(
            f"Invalid '{param}': no {kind} with id {after!r}.", param=param, code="invalid_value"
        )
    return seq
