"""Who gets a model's next free slot: priorities, then projects, then batches, by recent use.

Every batch running on a model waits for the model's concurrency slots (:class:`Slots`) as a
:class:`Flow`: its priority (``metadata["batchd_priority"]``: ``high``, ``normal`` or ``low``),
its project and its id. When a slot frees, it goes to a waiting flow chosen level by level:

1. the priority class whose recent use, divided by its weight (high 4, normal 2, low 1), is
   lowest: saturated classes share the slots 4:2:1, and a class that waits alone gets them all;
2. within it, the project with the least recent use;
3. within that, the batch with the least recent use; then its oldest waiter.

"Recent use" is slot-seconds with a half-life of :data:`HALF_LIFE` seconds: a slot is charged
when it is given (the flow's average holding time so far; for a new flow, the model's) and
corrected when it is given back (the time it was really held), so that flows that run side by
side share the slots equally over time whatever their requests cost. A batch of a project that
has not used the model lately has none, so it gets the slots it asks for until its use catches
up with the busy project's: a 100-request batch arriving beside a 1,000,000-request one runs at
nearly the speed it would alone (``bench/fairness.py``), and two long batches of two projects
end up with half each.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batchd.core.priority import Priority

__all__ = ["DEFAULT_FLOW", "HALF_LIFE", "WEIGHTS", "Flow", "Usage"]

#: The share of each priority class when all of them wait for slots.
WEIGHTS: dict[Priority, float] = {"high": 4.0, "normal": 2.0, "low": 1.0}
#: Seconds after which a slot-second of use counts half.
HALF_LIFE = 30.0
_FIRST_HOLD = 1.0  # seconds charged for a slot before any was given back on the model


@dataclass(frozen=True, slots=True)
class Flow:
    """What waits for a slot: a batch (or a range of one), with its project and priority."""

    batch: str
    project: str = "default"
    priority: Priority = "normal"


DEFAULT_FLOW = Flow("")


@dataclass(slots=True)
class _Decayed:
    value: float = 0.0
    stamp: float = 0.0

    def at(self, now: float) -> float:
        if now > self.stamp:
            self.value *= math.exp2((self.stamp - now) / HALF_LIFE)
            self.stamp = now
        return self.value

    def add(self, now: float, amount: float) -> None:
        self.value = max(0.0, self.at(now) + amount)


@dataclass(slots=True)
class _Held:
    """A flow's slots: how many it holds and how long it holds one, on average."""

    count: int = 0
    mean: float = _FIRST_HOLD
    seen: int = 0

    def learn(self, seconds: float) -> None:
        self.seen += 1
        self.mean += (seconds - self.mean) / min(self.seen, 32)  # a moving average


@dataclass
class Usage:
    """The recent use of a model's slots by class, project and batch, and who waits."""

    clock: Callable[[], float] = time.monotonic
    waiting: dict[Flow, collections.deque[tuple[int, object]]] = field(default_factory=dict)
    _use: dict[tuple[str, ...], _Decayed] = field(default_factory=dict)
    _held: dict[Flow, _Held] = field(default_factory=dict)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _releases: int = 0
    _all: _Held = field(default_factory=_Held)  # how long any slot of the model is held

    def wait(self, flow: Flow, waiter: object) -> None:
        self.waiting.setdefault(flow, collections.deque()).append((next(self._order), waiter))

    def drop(self, flow: Flow, waiter: object) -> None:
        queue = self.waiting.get(flow)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(next(item for item in queue if item[1] is waiter))
            if not queue:
                del self.waiting[flow]

    def next(self) -> tuple[Flow, object] | None:
        """The flow whose waiter gets the next slot, and that waiter (taken off the queue)."""
        if not self.waiting:
            return None
        now = self.clock()
        flows = list(self.waiting)
        if len(flows) > 1:
            classes = {flow.priority for flow in flows}
            if len(classes) > 1:
                best = min(classes, key=lambda c: (self._at((c,), now) / WEIGHTS[c], -WEIGHTS[c]))
                flows = [flow for flow in flows if flow.priority == best]
            projects = {flow.project for flow in flows}
            if len(projects) > 1:
                p = flows[0].priority
                chosen = min(projects, key=lambda project: self._at((p, project), now))
                flows = [flow for flow in flows if flow.project == chosen]
            flows.sort(key=lambda f: (self._at(_keys(f)[2], now), self.waiting[f][0][0]))
        flow = flows[0]
        queue = self.waiting[flow]
        _, waiter = queue.popleft()
        if not queue:
            del self.waiting[flow]
        return flow, waiter

    def granted(self, flow: Flow) -> float:
        """Charge ``flow`` for a slot given now; the time to pass to :meth:`released`."""
        now = self.clock()
        held = self._held.get(flow)
        if held is None:  # a new flow is charged what a slot is held for on this model
            held = self._held[flow] = _Held(mean=self._all.mean)
        held.count += 1
        for key in _keys(flow):
            self._use.setdefault(key, _Decayed(stamp=now)).add(now, held.mean)
        return now

    def released(self, flow: Flow, since: float) -> None:
        """``flow`` gave back the slot it got at ``since``: its charge made exact."""
        now = self.clock()
        held = self._held[flow]
        correction = (now - since) - held.mean
        held.learn(now - since)
        self._all.learn(now - since)
        held.count -= 1
        for key in _keys(flow):
            self._use.setdefault(key, _Decayed(stamp=now)).add(now, correction)
        self._releases += 1
        if self._releases % 256 == 0:
            self._forget(now)

    def _at(self, key: tuple[str, ...], now: float) -> float:
        use = self._use.get(key)
        return 0.0 if use is None else use.at(now)

    def _forget(self, now: float) -> None:
        """Drop what belongs to flows gone quiet (finished batches, idle projects)."""
        for key in [key for key, use in self._use.items() if use.at(now) < 1e-3]:
            del self._use[key]
        for flow in [f for f, held in self._held.items() if not held.count]:
            if flow not in self.waiting and _keys(flow)[2] not in self._use:
                del self._held[flow]


def _keys(flow: Flow) -> tuple[tuple[str], tuple[str, str], tuple[str, str, str]]:
    priority, project = flow.priority, flow.project
    return (priority,), (priority, project), (priority, project, flow.batch)
