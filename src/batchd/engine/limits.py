"""How hard the engine drives each model: concurrency, RPM/TPM budgets and upstream backoff.

One :class:`ModelLimiter` per configured model, shared by every batch of that model:

- a semaphore of ``max_concurrency`` slots: a slot is held from sending a request until its result
  is durable in the journal, so at most that many results of the model can be lost to a crash;
- token buckets for ``rpm`` and ``tpm`` (refilled continuously, full at start); a request's token
  cost is estimated before it is sent (prompt bytes / 4 plus the completion budget it asks for)
  and corrected with the ``usage`` of its response;
- an :class:`UpstreamGate` shared by every model with the same upstream: a 429 pauses them all
  until the upstream's ``Retry-After`` (or a backoff) has passed, instead of letting every
  in-flight request hit the limit again; and, when a route sets ``upstream_max_concurrency``,
  a semaphore bounding the requests in flight to that upstream over all its models.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from batchd.engine.adaptive import AdaptiveLimit
from batchd.engine.fairness import DEFAULT_FLOW, Flow, Usage
from batchd.providers.base import DispatchLimits, Provider

__all__ = [
    "Limiters",
    "ModelLimiter",
    "Slots",
    "TokenBucket",
    "UpstreamGate",
    "estimate_tokens",
]

log = logging.getLogger("batchd.engine")

Clock = Callable[[], float]


class TokenBucket:
    """``per_minute`` units a minute, refilled continuously; starts full. Debt is allowed:
    :meth:`adjust` may take more than is there, and later takers wait until it is paid back."""

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    @property
    def available(self) -> float:
        self._refill()
        return self._tokens

    async def take(self, amount: float) -> None:
        """Wait until ``amount`` (at most the capacity) is available, then take it."""
        amount = min(amount, self.capacity)
        while True:
            self._refill()
            if self._tokens >= amount:
                self._tokens -= amount
                return
            await asyncio.sleep((amount - self._tokens) / self.rate)

    def adjust(self, amount: float) -> None:
        """Take ``amount`` more (or give back a negative amount) without waiting."""
        self._refill()
        self._tokens = min(self.capacity, self._tokens - amount)

    def rescale(self, per_minute: int) -> None:
        """Change the budget to ``per_minute`` (a share of a limit held by several engines):
        what is available now is capped by the new capacity, never raised."""
        self._refill()
        self.capacity = float(max(1, per_minute))
        self.rate = self.capacity / 60.0
        self._tokens = min(self._tokens, self.capacity)


class Slots:
    """A semaphore whose size can change while it is in use, shared fairly between the batches
    that wait for it (:mod:`batchd.engine.fairness`): ``async with slots.take(flow):`` holds one
    (``async with slots:`` as nobody in particular).

    :meth:`resize` takes effect for the next acquisitions: holders above a smaller size keep
    their slot until they release it, then nobody new gets one until the count is below it."""

    __slots__ = ("in_use", "limit", "usage")

    def __init__(self, limit: int, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self.in_use = 0
        self.usage = Usage(clock)

    def take(self, flow: Flow = DEFAULT_FLOW) -> _Take:
        """``async with slots.take(flow):`` holds a slot for ``flow`` while the block runs."""
        return _Take(self, flow)

    async def __aenter__(self) -> None:
        await self._acquire(DEFAULT_FLOW)

    async def __aexit__(self, *_exc: object) -> None:
        self._release()

    async def _acquire(self, flow: Flow) -> None:
        if self.in_use < self.limit and not self.usage.waiting:
            self.in_use += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.usage.wait(flow, waiter)
        try:
            await waiter  # _wake counted the slot as ours before waking us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()
            else:
                self.usage.drop(flow, waiter)
            raise

    def _release(self) -> None:
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self.in_use < self.limit and (chosen := self.usage.next()) is not None:
            waiter = chosen[1]
            assert isinstance(waiter, asyncio.Future)
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()


class _Take:
    """A slot held for a flow (:meth:`Slots.take`): charged when given, settled when given
    back."""

    __slots__ = ("flow", "since", "slots")

    def __init__(self, slots: Slots, flow: Flow) -> None:
        self.slots, self.flow, self.since = slots, flow, 0.0

    async def __aenter__(self) -> None:
        await self.slots._acquire(self.flow)
        self.since = self.slots.usage.granted(self.flow)

    async def __aexit__(self, *_exc: object) -> None:
        self.slots.usage.released(self.flow, self.since)
        self.slots._release()


class UpstreamGate:
    """A pause shared by every model of one upstream, set when it answers 429."""

    def __init__(
        self, name: str, clock: Clock = time.monotonic, max_concurrency: int | None = None
    ) -> None:
        self.name = name
        self._clock = clock
        self._resume_at = 0.0
        self.slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        """Requests in flight to this upstream over all its models, when bounded."""

    @property
    def paused_for(self) -> float:
        return max(0.0, self._resume_at - self._clock())

    def pause(self, seconds: float) -> None:
        resume_at = self._clock() + seconds
        if resume_at > self._resume_at:
            if self.paused_for == 0.0:
                log.info("upstream %s: rate limited, pausing it for %.2fs", self.name, seconds)
            self._resume_at = resume_at

    async def wait(self) -> None:
        # A deadline that a later 429 may push back, not an event: sleep until it holds.
        while (remaining := self._resume_at - self._clock()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(remaining)


def _completion_budget(body: Mapping[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            choices = body.get("n")
            n = choices if isinstance(choices, int) and choices > 0 else 1
            return value * n
    return 0


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """A cheap upper-ish estimate of a request's tokens: its JSON bytes / 4, plus the
    completion tokens it allows. Only computed when a model has a ``tpm`` budget."""
    return len(orjson.dumps(body)) // 4 + _completion_budget(body) + 1


class ModelLimiter:
    """The concurrency slots, budgets and upstream gate of one model."""

    def __init__(self, model: str, limits: DispatchLimits, gate: UpstreamGate) -> None:
        self.model = model
        self.limits = limits
        self.gate = gate
        self.ceiling = limits.max_concurrency
        """The most slots: the route's ``max_concurrency``, or this engine's share of it."""
        self.adaptive = (
            AdaptiveLimit(limits.max_concurrency, limits.min_concurrency)
            if limits.adaptive
            else None
        )
        self.slots = Slots(self._limit())
        self.requests = TokenBucket(limits.rpm) if limits.rpm else None
        self.tokens = TokenBucket(limits.tpm) if limits.tpm else None

    def share(self, part: int, parts: int) -> tuple[int, int | None, int | None]:
        """Take share ``part`` (0-based) of ``parts`` equal shares of this model's limits (when
        ``parts`` engines share them): the concurrency, rpm and tpm it gets. Shares add up to the
        limit; each is at least 1, so with more engines than slots the sum exceeds the limit."""

        def of(limit: int) -> int:
            return max(1, limit // parts + (1 if part < limit % parts else 0))

        limits = self.limits
        self.set_ceiling(of(limits.max_concurrency))
        rpm = tpm = None
        if self.requests is not None and limits.rpm:
            rpm = of(limits.rpm)
            self.requests.rescale(rpm)
        if self.tokens is not None and limits.tpm:
            tpm = of(limits.tpm)
            self.tokens.rescale(tpm)
        return self.ceiling, rpm, tpm

    def set_ceiling(self, ceiling: int) -> None:
        """At most ``ceiling`` slots from now on (0: send nothing)."""
        self.ceiling = ceiling
        self.slots.resize(self._limit())

    def observe(self, overloaded: bool, latency: float | None) -> None:
        """An answer of the upstream, for the adaptive limit (when the route has one)."""
        if self.adaptive is not None:
            self.adaptive.observe(overloaded, latency, self.ceiling)
            limit = self._limit()
            if limit != self.slots.limit:
                self.slots.resize(limit)

    def _limit(self) -> int:
        return self.ceiling if self.adaptive is None else self.adaptive.value(self.ceiling)

    @property
    def ready(self) -> bool:
        """Whether a request may go now without waiting for anything (the common case: no
        budgets and no pause), so the hot path need not await :meth:`before_send`."""
        return self.requests is None and self.tokens is None and self.gate.paused_for == 0.0

    def cost(self, body: Mapping[str, Any]) -> int:
        """The token estimate of ``body`` when this model has a token budget, else 0."""
        return estimate_tokens(body) if self.tokens is not None else 0

    async def before_send(self, cost: int) -> None:
        """Wait for the upstream gate and the budgets; call with a slot held."""
        await self.gate.wait()
        if self.requests is not None:
            await self.requests.take(1)
        if self.tokens is not None and cost:
            await self.tokens.take(cost)
        await self.gate.wait()  # a 429 may have arrived while waiting for a budget

    def after_response(self, cost: int, used: int | None) -> None:
        """Correct the token budget with what the response says it used."""
        if self.tokens is not None and cost and used is not None:
            self.tokens.adjust(used - cost)


class Limiters:
    """One :class:`ModelLimiter` per model; one :class:`UpstreamGate` per upstream."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        every = {name: provider.limits() for name, provider in providers.items()}
        bounds: dict[str, int] = {}
        for name, limits in every.items():
            key = limits.upstream or name
            if limits.upstream_max_concurrency is not None:
                bounds[key] = min(
                    bounds.get(key, limits.upstream_max_concurrency),
                    limits.upstream_max_concurrency,
                )
        gates: dict[str, UpstreamGate] = {}
        self._limiters: dict[str, ModelLimiter] = {}
        for name, limits in every.items():
            key = limits.upstream or name
            gate = gates.get(key)
            if gate is None:
                gate = gates[key] = UpstreamGate(key, max_concurrency=bounds.get(key))
            self._limiters[name] = ModelLimiter(name, limits, gate)

    def __getitem__(self, model: str) -> ModelLimiter:
        return self._limiters[model]

    def get(self, model: str) -> ModelLimiter | None:
        return self._limiters.get(model)

    def models(self) -> list[str]:
        """The models limited, by route name."""
        return sorted(self._limiters)
