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


_Keys = tuple[tuple[str], tuple[str, str], tuple[str, str, str]]
_RESCALE = 2.0**64  # the scale at which the counters are brought back to 1 (no overflow)


@dataclass(slots=True)
class _Held:
    """A flow's slots: how many it holds and how long it holds one, on average."""

    keys: _Keys
    count: int = 0
    mean: float = _FIRST_HOLD
    seen: int = 0

    def learn(self, seconds: float) -> None:
        self.seen += 1
        self.mean += (seconds - self.mean) / min(self.seen, 32)  # a moving average


@dataclass
class Usage:
    """The recent use of a model's slots by class, project and batch, and who waits.

    The counters are kept scaled by ``2 ** ((t - epoch) / HALF_LIFE)``: adding a use at time
    ``t`` multiplies it by that scale once, and counters read at one time compare as they are,
    so the decay costs one ``exp2`` a grant instead of one per counter."""

    clock: Callable[[], float] = time.monotonic
    waiting: dict[Flow, collections.deque[tuple[int, object]]] = field(default_factory=dict)
    _use: dict[tuple[str, ...], float] = field(default_factory=dict)
    _held: dict[Flow, _Held] = field(default_factory=dict)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _releases: int = 0
    _all: _Held = field(default_factory=lambda: _Held((("",), ("", ""), ("", "", ""))))
    _epoch: float | None = None

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
        flows = list(self.waiting)
        if len(flows) > 1:
            use = self._use
            classes = {flow.priority for flow in flows}
            if len(classes) > 1:
                best = min(classes, key=lambda c: (use.get((c,), 0.0) / WEIGHTS[c], -WEIGHTS[c]))
                flows = [flow for flow in flows if flow.priority == best]
            projects = {flow.project for flow in flows}
            if len(projects) > 1:
                p = flows[0].priority
                chosen = min(projects, key=lambda project: use.get((p, project), 0.0))
                flows = [flow for flow in flows if flow.project == chosen]
            flows.sort(key=lambda f: (use.get(_keys(f)[2], 0.0), self.waiting[f][0][0]))
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
            held = self._held[flow] = _Held(_keys(flow), mean=self._all.mean)
        held.count += 1
        amount = held.mean * self._scale(now)
        use = self._use
        for key in held.keys:
            use[key] = use.get(key, 0.0) + amount
        return now

    def released(self, flow: Flow, since: float) -> None:
        """``flow`` gave back the slot it got at ``since``: its charge made exact."""
        now = self.clock()
        held = self._held[flow]
        seconds = now - since
        amount = (seconds - held.mean) * self._scale(now)
        held.learn(seconds)
        self._all.learn(seconds)
        held.count -= 1
        use = self._use
        for key in held.keys:
            use[key] = max(0.0, use.get(key, 0.0) + amount)
        self._releases += 1
        if self._releases % 256 == 0:
            self._forget(now)

    def _scale(self, now: float) -> float:
        if self._epoch is None:
            self._epoch = now
        scale = math.exp2((now - self._epoch) / HALF_LIFE)
        if scale > _RESCALE:
            for key in self._use:
                self._use[key] /= scale
            self._epoch, scale = now, 1.0
        return scale

    def _forget(self, now: float) -> None:
        """Drop what belongs to flows gone quiet (finished batches, idle projects)."""
        quiet = 1e-3 * self._scale(now)
        for key in [key for key, value in self._use.items() if value < quiet]:
            del self._use[key]
        for flow in [f for f, held in self._held.items() if not held.count]:
            if flow not in self.waiting and _keys(flow)[2] not in self._use:
                del self._held[flow]


def _keys(flow: Flow) -> _Keys:
    priority, project = flow.priority, flow.project
    return (priority,), (priority, project), (priority, project, flow.batch)
