"""The servers behind one ``openai`` route: least-outstanding-requests choice, a circuit breaker
per server, a 429 that pauses only the server that sent it.

A route lists its servers in ``base_urls`` (or one in ``base_url``). Each :class:`Replica` has a
limit of requests in flight (its ``max_concurrency``) and a weight; a request goes to the replica
with the lowest ``in_flight / (limit * weight)`` among those that may take one, so a slower
server, whose requests stay in flight longer, gets fewer. When every replica is at its limit the
request waits for one to free a slot.

Health, per replica (a circuit breaker): ``failure_threshold`` failures in a row (no answer, a
timeout, a 5xx) eject it (*open*) for ``eject_seconds`` (doubled at each new ejection, up to
``max_eject_seconds``); then one request probes it (*half-open*): an answer readmits it
(*closed*), a failure ejects it again. A 429 pauses only that replica, for its ``Retry-After``.
When every replica is ejected or paused, requests still go to the one that comes back first, so
that a route never stops on its own; the engine's retries and backoff take it from there.

Prefix affinity (opt-in, ``prefix_affinity = true``): requests whose prompts start with the same
text (the same system prompt, the same document) prefer the same replica (rendezvous hashing of
the prefix over the replicas' names), so that its prefix cache stays warm, unless that replica
is busier than the least loaded one by more than a quarter of its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Breaker", "Replica", "ReplicaSet", "ReplicaState", "prefix_hash"]

log = logging.getLogger("batchd.providers")

# How much busier (in flight / limit) than the least loaded replica the preferred replica of a
# prompt prefix may be and still get the request.
_AFFINITY_SLACK = 0.25


def prefix_hash(text: str) -> int:
    """A stable 64-bit hash of a prompt's prefix (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _rank(key: int, name: str) -> int:
    """Rendezvous (highest random weight) hashing: each replica's rank for ``key``; adding or
    removing a replica moves only the keys that ranked it first."""
    return prefix_hash(f"{key}:{name}")


ReplicaState = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class Breaker:
    """When a replica is ejected and readmitted (see the module docstring)."""

    failure_threshold: int = 5
    eject_seconds: float = 5.0
    max_eject_seconds: float = 60.0


@dataclass(eq=False, slots=True)
class Replica:
    """One server of a route, with its own limit, weight and health."""

    name: str
    """``host:port`` (never the URL: it may carry a password)."""
    limit: int
    weight: float = 1.0
    in_flight: int = 0
    state: ReplicaState = "closed"
    failures: int = 0
    """Failures in a row."""
    open_until: float = 0.0
    ejections: int = 0
    paused_until: float = 0.0
    probing: bool = False
    sent: int = 0
    """Requests sent to it (answered or not), for ``/health`` and the benchmarks."""
    transport: object = field(default=None, repr=False)
    """What the provider needs to send to it (URLs, headers, client)."""

    def describe(self, now: float) -> dict[str, object]:
        return {
            "replica": self.name,
            "state": self.state,
            "in_flight": self.in_flight,
            "limit": self.limit,
            "sent": self.sent,
            "paused_for": round(max(0.0, self.paused_until - now), 3),
        }


class ReplicaSet:
    """The replicas of a route; :meth:`acquire` one for a request, :meth:`release` it after."""

    def __init__(
        self,
        route: str,
        replicas: list[Replica],
        breaker: Breaker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("a route needs at least one replica")
        self.route = route
        self.replicas = replicas
        self.breaker = breaker or Breaker()
        self._clock = clock
        self._freed = asyncio.Event()
        self.on_change: Callable[[Replica, float | None], None] | None = None
        """Told ``(replica, seconds)`` when this set ejects a replica, ``(replica, None)``
        when it readmits one (shared mode: every engine hears of it)."""
        self.observer: Callable[[str, int | None, float], None] | None = None
        """Told ``(replica, HTTP status or None, seconds)`` of each attempt that
        :meth:`release` is given the start of (the metrics)."""

    def __len__(self) -> int:
        return len(self.replicas)

    def _usable(self, replica: Replica, now: float) -> bool:
        if replica.in_flight >= replica.limit or replica.paused_until > now:
            return False
        if replica.state == "open":
            if now < replica.open_until:
                return False
            replica.state = "half_open"  # its ejection is over: one request probes it
            replica.probing = False
        return not (replica.state == "half_open" and replica.probing)

    def _choose(self, exclude: Collection[Replica], affinity: int | None) -> Replica | None:
        now = self._clock()
        best: Replica | None = None
        best_score = 0.0
        usable: list[Replica] = []
        for replica in self.replicas:
            if replica in exclude or not self._usable(replica, now):
                continue
            usable.append(replica)
            score = replica.in_flight / (replica.limit * replica.weight)
            if best is None or score < best_score:
                best, best_score = replica, score
        if affinity is not None and len(usable) > 1:
            # the replica the prompt's prefix hashes to first (rendezvous hashing), unless it
            # is much busier than the least loaded one (bounded load)
            for replica in sorted(usable, key=lambda r: _rank(affinity, r.name), reverse=True):
                score = replica.in_flight / (replica.limit * replica.weight)
                if score <= best_score + _AFFINITY_SLACK:
                    return replica
        if best is None and not any(self._healthy(r, now) for r in self.replicas):
            # every replica is ejected or paused: the one that comes back first (with a free
            # slot) still takes requests, so that the route keeps trying
            waiting = [r for r in self.replicas if r not in exclude and r.in_flight < r.limit]
            if waiting:
                best = min(waiting, key=lambda r: max(r.open_until, r.paused_until))
        return best

    def _healthy(self, replica: Replica, now: float) -> bool:
        open_now = replica.state == "open" and now < replica.open_until
        return not open_now and replica.paused_until <= now

    def pick(
        self, exclude: Collection[Replica] = (), affinity: int | None = None
    ) -> Replica | None:
        """The replica a request goes to now (its slot taken), or ``None`` when all are busy.
        ``affinity`` (a hash of the prompt's prefix) prefers the same replica for the same
        prefix, so that its prefix cache stays warm."""
        replica = self._choose(exclude, affinity)
        if replica is not None:
            replica.in_flight += 1
            replica.sent += 1
            if replica.state == "half_open":
                replica.probing = True
        return replica

    async def acquire(
        self, exclude: Collection[Replica] = (), affinity: int | None = None
    ) -> Replica | None:
        """:meth:`pick`, waiting for a slot when every usable replica is at its limit; ``None``
        when only ``exclude`` is left."""
        if len(exclude) >= len(self.replicas):
            return None
        while (replica := self.pick(exclude, affinity)) is None:
            self._freed.clear()
            with contextlib.suppress(TimeoutError):  # an ejection or a pause may end meanwhile
                await asyncio.wait_for(self._freed.wait(), 0.25)
        return replica

    def release(
        self,
        replica: Replica,
        outcome: Literal["ok", "failed", "rate_limited"],
        retry_after: float | None = None,
        started: float | None = None,
        status: int | None = None,
    ) -> None:
        """The request on ``replica`` ended: an answer (``ok``, any status but 429 and 5xx), no
        answer or a 5xx (``failed``), or a 429 (``rate_limited``, paused ``retry_after``).
        ``started`` (``time.perf_counter()`` when it was sent) and ``status`` (its answer's)
        go to :attr:`observer`."""
        replica.in_flight -= 1
        if started is not None and self.observer is not None:
            self.observer(replica.name, status, time.perf_counter() - started)
        now = self._clock()
        was_probe = replica.state == "half_open" and replica.probing
        replica.probing = False
        if outcome == "ok":
            replica.failures = 0
            if replica.state != "closed":
                replica.state = "closed"
                replica.ejections = 0
                log.info("model %s: replica %s readmitted", self.route, replica.name)
                if self.on_change is not None:
                    self.on_change(replica, None)
        elif outcome == "rate_limited":
            pause = retry_after if retry_after is not None else 1.0
            replica.paused_until = max(replica.paused_until, now + pause)
            if replica.state == "half_open":
                replica.state = "closed"  # it answered
        else:
            replica.failures += 1
            tripped = was_probe or replica.failures >= self.breaker.failure_threshold
            if tripped and replica.state != "open":
                replica.ejections += 1
                seconds = min(
                    self.breaker.eject_seconds * 2 ** (replica.ejections - 1),
                    self.breaker.max_eject_seconds,
                )
                replica.state = "open"
                replica.open_until = now + seconds
                if self.on_change is not None:
                    self.on_change(replica, seconds)
                log.warning(
                    "model %s: replica %s ejected for %gs after %d failures in a row",
                    self.route,
                    replica.name,
                    seconds,
                    replica.failures,
                )
        self._freed.set()

    def eject_for(self, name: str, seconds: float) -> None:
        """Another engine ejected replica ``name`` for ``seconds`` more: do the same here (a
        probe when it ends readmits it, as for an ejection of this set's own)."""
        now = self._clock()
        for replica in self.replicas:
            if replica.name != name or seconds <= 0:
                continue
            if replica.state == "open" and replica.open_until >= now + seconds:
                continue
            if replica.state == "closed":
                log.info(
                    "model %s: replica %s ejected by another engine for %.0fs",
                    self.route,
                    name,
                    seconds,
                )
            replica.state = "open"
            replica.probing = False
            replica.open_until = now + seconds

    def describe(self) -> list[dict[str, object]]:
        """Each replica's state, for ``/health``."""
        now = self._clock()
        return [replica.describe(now) for replica in self.replicas]
