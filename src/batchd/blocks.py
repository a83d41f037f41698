"""Lines gathered into blocks of about 1 MiB, for the bodies of the partial results
(:mod:`batchd.engine.partial` from the journal, :mod:`batchd.store.partial` from the rows)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["BLOCK", "LineBlocks"]

BLOCK = 1024 * 1024
"""A block is yielded once it holds this many bytes or more."""


class LineBlocks:
    """Lines added in batches; :meth:`add` gives a block once a batch brings what is gathered to
    :data:`BLOCK` bytes, and :meth:`rest` what is left at the end."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, lines: Iterable[bytes]) -> bytes | None:
        for line in lines:
            self._parts.append(line)
            self._size += len(line)
        if self._size < BLOCK:
            return None
        return self.rest()

    def rest(self) -> bytes | None:
        """What is gathered, as one block (``None`` when nothing is), and start again."""
        if not self._parts:
            return None
        block = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        return block
