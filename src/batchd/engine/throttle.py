"""Warnings about a fault that persists (a full disk, a store that does not answer), logged once
per interval per subject instead of at every retry, with the number of repeats held back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["Throttle"]


class Throttle:
    """``warning(subject, ...)`` logs at most once per ``every`` seconds for each subject;
    ``clear(subject)`` forgets it (the fault went away), so its next fault is logged at once."""

    def __init__(
        self,
        logger: logging.Logger,
        every: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # subject: (logged at, repeats held back)
        self._recovered: set[str] = set()  # subjects working again since their last warning

    def warning(self, subject: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``subject`` was logged less than ``every`` seconds ago;
        whether it was logged."""
        now = self.clock()
        self._recovered.discard(subject)
        last = self._last.get(subject)
        if last is not None and now - last[0] < self.every:
            self._last[subject] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        suffix = f" ({held} more since the last report)" if held else ""
        self.logger.warning(message + suffix, *args)
        self._last[subject] = (now, 0)
        return True

    def __contains__(self, subject: object) -> bool:
        """Whether ``subject`` has a fault on record (not cleared since)."""
        return subject in self._last

    def recovered(self, subject: str) -> bool:
        """Note that ``subject`` seems to work again, keeping its record (a fault again within
        the interval is not logged again); whether this is news since its last warning."""
        if subject in self._recovered or subject not in self._last:
            return False
        self._recovered.add(subject)
        return True

    def clear(self, subject: str) -> bool:
        """Forget ``subject``; whether it had a fault on record."""
        self._recovered.discard(subject)
        return self._last.pop(subject, None) is not None
