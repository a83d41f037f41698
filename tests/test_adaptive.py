"""Adaptive concurrency (:mod:`batchd.engine.adaptive`): the limit found without being told,
on a simulated upstream (a hidden capacity that answers 429 above it, or a queue whose latency
grows), its bounds, one cut per round trip; and end to end, ``adaptive = true`` against the
fake upstream's hidden capacity: far fewer 429s than a fixed ``max_concurrency`` above it."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator

import pytest

from batchd.engine.adaptive import INITIAL, AdaptiveLimit
from batchd.engine.limits import ModelLimiter, UpstreamGate
from batchd.providers.base import DispatchLimits
from tests.engine_support import Served, chat_body, request_line, served, to_jsonl, wait_for_batch

LATENCY = 0.05


class Clock:
    def __init__(self, now: list[float]) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now[0]


def run_rounds(
    limit: AdaptiveLimit,
    ceiling: int,
    rounds: int,
    answer: Callable[[int], list[tuple[bool, float]]],
) -> list[int]:
    """Each round trip, ``limit.value`` requests go out and ``answer`` says how each went (on
    the limit's own simulated clock, which goes on from one call to the next)."""
    clock = [limit.clock()] if isinstance(limit.clock, Clock) else [0.0]
    limit.clock = Clock(clock)
    seen = []
    for _ in range(rounds):
        value = limit.value(ceiling)
        seen.append(value)
        clock[0] += LATENCY
        for overloaded, latency in answer(value):
            limit.observe(overloaded, None if overloaded else latency, ceiling)
    return seen


def capacity(n: int) -> Callable[[int], list[tuple[bool, float]]]:
    return lambda sent: [(i >= n, LATENCY) for i in range(sent)]


def test_it_settles_under_a_hidden_capacity() -> None:
    seen = run_rounds(AdaptiveLimit(256), 256, 400, capacity(64))
    late = seen[100:]
    assert 0.6 * 64 <= statistics.mean(late) <= 1.1 * 64, statistics.mean(late)
    rejected = sum(max(0, value - 64) for value in late)
    assert rejected / sum(late) < 0.05  # a 429 now and then: the probe for more room


def test_it_follows_the_capacity_when_it_changes() -> None:
    limit = AdaptiveLimit(256)
    run_rounds(limit, 256, 200, capacity(64))
    seen = run_rounds(limit, 256, 300, capacity(16))
    assert statistics.mean(seen[100:]) <= 1.1 * 16
    seen = run_rounds(limit, 256, 600, capacity(100))
    assert statistics.mean(seen[-100:]) >= 0.6 * 100


def test_rising_latency_stops_it_before_any_429() -> None:
    """An upstream that queues instead of refusing: the latency doubles past 32 in flight."""

    def queueing(sent: int) -> list[tuple[bool, float]]:
        return [(False, LATENCY * max(1.0, sent / 32))] * sent

    seen = run_rounds(AdaptiveLimit(256), 256, 400, queueing)
    assert 32 <= statistics.mean(seen[100:]) <= 2.5 * 32


def test_bounds_and_one_cut_per_round_trip() -> None:
    limit = AdaptiveLimit(10, floor=4)
    assert limit.value(10) == min(10, INITIAL)
    now = [0.0]
    limit.clock = lambda: now[0]
    limit.observe(False, 0.1, 10)  # a round trip of 0.1 s
    before = limit.limit
    for _ in range(5):  # five 429s of one round trip: one cut
        limit.observe(True, None, 10)
    assert limit.cuts == 1
    assert limit.limit == pytest.approx(before * 0.7)
    for _ in range(20):
        now[0] += 1.0
        limit.observe(True, None, 10)
    assert limit.value(10) == 4  # never under the floor
    for _ in range(1000):
        limit.observe(False, 0.1, 10)
    assert limit.value(10) == 10  # nor over the ceiling
    assert limit.value(6) == 6  # a smaller share caps it
    assert limit.value(0) == 0  # a paused engine sends nothing


def test_a_model_limiter_resizes_its_slots() -> None:
    limiter = ModelLimiter(
        "m",
        DispatchLimits(max_concurrency=100, adaptive=True, min_concurrency=2),
        UpstreamGate("u"),
    )
    assert limiter.slots.limit == INITIAL
    for _ in range(50):
        limiter.observe(False, 0.01)
    assert limiter.slots.limit == INITIAL + 50
    limiter.set_ceiling(0)
    assert limiter.slots.limit == 0
    limiter.set_ceiling(100)
    limiter.observe(True, None)
    assert limiter.slots.limit == int((INITIAL + 50) * 0.7)
    fixed = ModelLimiter("f", DispatchLimits(max_concurrency=100), UpstreamGate("u"))
    fixed.observe(True, None)
    assert fixed.slots.limit == 100


# -- end to end ---------------------------------------------------------------------------------

REQUESTS = 600


def rejected_429s(env: Served) -> int:
    lines = [request_line(f"r{i}", chat_body(f"hello {i}")) for i in range(REQUESTS)]
    file_id = env.client.files.create(file=("in.jsonl", to_jsonl(lines)), purpose="batch").id
    batch_id = env.client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    batch = wait_for_batch(env.client, env.server, batch_id, timeout=120)
    assert batch["request_counts"]["completed"] == REQUESTS
    return int(env.upstream.stats(digests=False)["by_outcome"].get("429", 0))


@pytest.fixture(params=[False, True], ids=["fixed", "adaptive"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("adaptive")
    route = {"max_concurrency": 96, "adaptive": request.param, "timeout": 10.0}
    with served(
        root,
        route,
        {"latency_ms": 20, "capacity": 16},
        max_attempts=50,
        retry_base_seconds=0.01,
        retry_cap_seconds=0.05,
    ) as env:
        yield env


RESULTS: dict[str, int] = {}


def test_adaptive_sends_far_fewer_429s(env: Served, request: pytest.FixtureRequest) -> None:
    mode = request.node.callspec.id
    RESULTS[mode] = rejected_429s(env)
    if len(RESULTS) == 2:
        assert RESULTS["adaptive"] * 4 < RESULTS["fixed"], RESULTS
