"""When to try a failed request again: a :class:`RetryStrategy` object returning a decision.

Backoff is exponential with full jitter: before attempt ``n + 1`` the engine waits a uniform draw
in ``[0, min(cap, base * 2 ** (n - 1))]``, never less than the upstream's ``Retry-After``. A
request is not retried when its result is not retryable, when it has had ``max_attempts``
attempts, or when the wait would end at or after the batch's deadline.

Pass a seeded :class:`random.Random` as ``rng`` for deterministic decisions in tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from batchd.providers.base import ProviderResult

__all__ = ["RetryDecision", "RetryStrategy"]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Whether to retry, and after how many seconds."""

    retry: bool
    delay: float = 0.0


_STOP = RetryDecision(retry=False, delay=0.0)


@dataclass(frozen=True)
class RetryStrategy:
    """Exponential backoff with full jitter, honouring ``Retry-After`` and a deadline."""

    max_attempts: int = 5
    """Attempts in all, the first one included."""
    base: float = 0.5
    """Seconds: the upper bound of the first wait."""
    cap: float = 60.0
    """Seconds: the largest upper bound of a jittered wait."""
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base <= 0:
            raise ValueError("base must be positive")
        if self.cap < self.base:
            raise ValueError("cap must not be smaller than base")

    def backoff(self, attempt: int) -> float:
        """A jittered wait after failed attempt ``attempt`` (1-based), ignoring Retry-After."""
        exponent = min(max(attempt, 1) - 1, 64)  # 2**64 * base is past any cap
        return self.rng.uniform(0.0, min(self.cap, self.base * 2.0**exponent))

    def decide(
        self, attempt: int, result: ProviderResult, now: float, deadline: float | None
    ) -> RetryDecision:
        """What to do after attempt ``attempt`` (1-based) ended with ``result``.

        ``now`` and ``deadline`` are on the same clock (e.g. ``time.monotonic()``); a ``None``
        deadline means no deadline.
        """
        if not result.retryable or attempt >= self.max_attempts:
            return _STOP
        delay = self.backoff(attempt)
        if result.retry_after is not None:
            delay = max(delay, result.retry_after)
        if deadline is not None and now + delay >= deadline:
            return _STOP
        return RetryDecision(retry=True, delay=delay)
