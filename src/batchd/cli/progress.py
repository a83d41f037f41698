"""Progress of a batch on the terminal, shared by ``batchd run`` and ``batchd wait``.

:class:`ProgressDisplay` takes :class:`Snapshot` s (status and counts, as often as the caller
likes) and shows them:

* on a terminal, a live line drawn by ``rich``: status, a bar, done/total, failed, requests/s,
  tokens/s and the time left, redrawn in place;
* otherwise (a log file, CI, a pipe), a plain line every ``interval`` seconds and on every
  status change, so a log shows the batch moving without a line per request.

Rates are measured over this display's own lifetime (requests and tokens counted since its first
snapshot, divided by the seconds since), so a resumed run does not count what an earlier run did.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

__all__ = ["ProgressDisplay", "Snapshot", "format_duration"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where a batch stands."""

    status: str
    total: int
    completed: int
    failed: int
    tokens: int = 0
    """Tokens used so far (the responses' ``usage.total_tokens``), 0 when unknown."""

    @property
    def done(self) -> int:
        return self.completed + self.failed


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ProgressDisplay:
    """Shows :class:`Snapshot` s of one batch (see the module docstring). Use as a context
    manager; ``live`` forces the terminal display on or off (default: whether ``stream`` is a
    terminal)."""

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        live: bool | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self._stream = stream if stream is not None else sys.stderr
        self._live = self._stream.isatty() if live is None else live
        self._interval = interval
        self._clock = clock
        self._first: tuple[float, int, int] | None = None  # time, done, tokens
        self._last: Snapshot | None = None
        self._printed: Snapshot | None = None
        self._printed_at = -float("inf")
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressDisplay:
        if self._live:
            console = Console(file=self._stream, force_terminal=True)
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[line]}"),
                console=console,
                transient=False,
                refresh_per_second=4,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=None, line="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display (leaving its last state on screen), or print the last line."""
        if self._progress is not None:
            self._progress.refresh()
            self._progress.stop()
            self._progress = None
        elif self._last is not None and self._last is not self._printed:
            self._print(self._last, self._clock())

    def rates(self, snap: Snapshot, now: float) -> tuple[float | None, float | None]:
        """Requests/s and tokens/s since the first snapshot (None until measurable)."""
        if self._first is None:
            return None, None
        started, done, tokens = self._first
        elapsed = now - started
        if elapsed < 0.5:
            return None, None
        return (snap.done - done) / elapsed, (snap.tokens - tokens) / elapsed

    def line(self, snap: Snapshot, now: float) -> str:
        """The figures of ``snap``: done/total, failed, rates and time left."""
        req_rate, tok_rate = self.rates(snap, now)
        parts = [f"{snap.done:,}/{snap.total:,} done", f"{snap.failed:,} failed"]
        if req_rate is not None:
            parts.append(f"{req_rate:,.1f} req/s")
        if tok_rate is not None and snap.tokens:
            parts.append(f"{tok_rate:,.0f} tok/s")
        if req_rate and snap.total > snap.done and snap.status == "in_progress":
            parts.append(f"ETA {format_duration((snap.total - snap.done) / req_rate)}")
        return ", ".join(parts)

    def update(self, snap: Snapshot) -> None:
        now = self._clock()
        if self._first is None:
            self._first = (now, snap.done, snap.tokens)
        changed = self._last is None or self._last.status != snap.status
        self._last = snap
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                description=f"{self.label} {snap.status}",
                total=snap.total or None,
                completed=snap.done,
                line=self.line(snap, now),
            )
        elif changed or now - self._printed_at >= self._interval:
            self._print(snap, now)

    def _print(self, snap: Snapshot, now: float) -> None:
        self._printed, self._printed_at = snap, now
        print(f"{self.label} {snap.status}: {self.line(snap, now)}", file=self._stream, flush=True)
