"""Batch priorities: ``metadata["batchd_priority"]`` = ``high``, ``normal`` (the default) or
``low``; how the engine shares a model's slots between them is :mod:`batchd.engine.fairness`."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["PRIORITIES", "PRIORITY_KEY", "Priority", "check_priority", "priority_of"]

Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
#: The metadata key of a batch's priority.
PRIORITY_KEY = "batchd_priority"


def priority_of(metadata: dict[str, str] | None) -> Priority:
    """A batch's priority from its metadata (``normal`` when it names none)."""
    value = (metadata or {}).get(PRIORITY_KEY, "normal")
    for priority in PRIORITIES:
        if value == priority:
            return priority
    return "normal"


def check_priority(metadata: dict[str, str] | None) -> str | None:
    """Why the priority in ``metadata`` is not one, or ``None`` when it is fine (or absent)."""
    value = (metadata or {}).get(PRIORITY_KEY)
    if value is None or value in PRIORITIES:
        return None
    names = ", ".join(f"'{p}'" for p in PRIORITIES)
    return f"Invalid value for metadata '{PRIORITY_KEY}': {value!r}. Supported values are: {names}."
