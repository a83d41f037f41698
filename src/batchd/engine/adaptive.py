"""Adaptive concurrency: how many requests a model may have in flight, learnt from its answers.

A route with ``adaptive = true`` does not trust its ``max_concurrency`` to be what the upstream
can take: :class:`AdaptiveLimit` moves the limit between ``min_concurrency`` and it, AIMD style
(as TCP, and Netflix's ``concurrency-limits`` and llm-d's flow control do):

- it starts at :data:`INITIAL` (or the ceiling, if lower) and, until the first sign of overload,
  grows by one per answer (doubling every round trip, TCP's slow start);
- a 429, a 503 or a timeout cuts it to :data:`BACKOFF` of itself, at most once per round trip
  (the answers of requests sent before the cut say nothing new);
- latency rising to twice the least seen lately (the queue building up in the upstream before
  it refuses anything) cuts it by :data:`EASE`, at most once per round trip;
- otherwise it grows by one per round trip (1/limit per answer).

So it settles just under the upstream's capacity without being told it, with few 429s, and
follows the capacity when it changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["BACKOFF", "EASE", "INITIAL", "AdaptiveLimit"]

INITIAL = 16
BACKOFF = 0.7
EASE = 0.9
_FAST = 0.2  # the weight of an answer in the short-run latency average
_DRIFT = 0.01  # how fast (per second) the baseline latency may rise
_RISING = 2.0


class AdaptiveLimit:
    """The learnt concurrency of one model (see the module docstring)."""

    def __init__(
        self, ceiling: int, floor: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.floor = max(1, min(floor, ceiling))
        self.limit = float(max(self.floor, min(ceiling, INITIAL)))
        self.slow_start = True
        self.clock = clock
        self.latency: float | None = None  # short-run average, the round trip
        self.baseline: float | None = None  # the least latency lately
        self._seen_at = 0.0
        self._cut_at = float("-inf")
        self.cuts = 0

    def value(self, ceiling: int) -> int:
        """The limit now, within ``ceiling`` (the route's, or this engine's share of it)."""
        return max(min(self.floor, ceiling), min(ceiling, int(self.limit)))

    def observe(self, overloaded: bool, latency: float | None, ceiling: int) -> None:
        """An answer: ``overloaded`` (429, 503, timeout), else how long it took, if known."""
        now = self.clock()
        round_trip = self.latency or 0.0
        if overloaded:
            if now - self._cut_at >= round_trip:
                self._cut(now, BACKOFF)
            return
        if latency is not None:
            self.latency = (
                latency if self.latency is None else self.latency + _FAST * (latency - self.latency)
            )
            baseline = self._least_latency(now, latency)
            if self.latency > _RISING * baseline and now - self._cut_at >= round_trip:
                self._cut(now, EASE)
                return
        growth = 1.0 if self.slow_start else 1.0 / self.limit
        self.limit = max(self.floor, min(float(ceiling), self.limit + growth))

    def _least_latency(self, now: float, latency: float) -> float:
        """The baseline: the least latency seen, drifting up by :data:`_DRIFT` a second so that
        an upstream that got slower for good becomes the new normal."""
        if self.baseline is None:
            self.baseline = latency
        else:
            elapsed = max(0.0, now - self._seen_at)
            self.baseline = min(latency, self.baseline * (1.0 + _DRIFT) ** elapsed)
        self._seen_at = now
        return self.baseline

    def _cut(self, now: float, factor: float) -> None:
        self.limit = max(float(self.floor), self.limit * factor)
        self.slow_start = False
        self._cut_at = now
        self.cuts += 1
