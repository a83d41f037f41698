"""Sharing a model's slots between batches (:mod:`batchd.engine.fairness`): simulated on a
fake clock (priority classes 4:2:1, projects equal whatever their number of batches, slot-time
not grants, a new small batch served at nearly its speed alone), the :class:`Slots` that use it
under asyncio, and end to end: ``metadata["batchd_priority"]`` checked at create, ``batchd
submit --priority``, and a small batch of one project finishing while another project's large
batch keeps the model busy."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from batchd.core.priority import PRIORITY_KEY, check_priority, priority_of
from batchd.engine.fairness import Flow, Usage
from batchd.engine.limits import Slots
from tests.engine_support import chat_body, model_route, request_line, to_jsonl, wait_for_batch
from tests.serverproc import BatchdServer, batchd, write_config
from tests.upstream.process import UpstreamProcess

# -- the policy, simulated ------------------------------------------------------------------------


@dataclass
class Demand:
    """A flow that keeps ``waiters`` requests waiting (``total`` in all; None: endless), each
    holding its slot ``hold`` seconds."""

    flow: Flow
    hold: float
    waiters: int
    total: int | None = None
    start: float = 0.0


def simulate(
    slots: int, demands: list[Demand], until: float
) -> tuple[Counter[Flow], dict[Flow, float]]:
    """Run the demands on ``slots`` slots until ``until`` (simulated seconds): each flow's
    slot-seconds, and when each finite flow finished."""
    now = 0.0
    usage = Usage(clock=lambda: now)
    busy: Counter[Flow] = Counter()
    finished: dict[Flow, float] = {}
    left = {d.flow: d.total for d in demands}
    events: list[tuple[float, int, str, Demand, float]] = []
    order = itertools.count()
    for d in demands:
        heapq.heappush(events, (d.start, next(order), "arrive", d, 0.0))
    by_flow = {d.flow: d for d in demands}
    in_use = 0

    def fill() -> None:
        nonlocal in_use
        while in_use < slots and (chosen := usage.next()) is not None:
            flow, _ = chosen
            in_use += 1
            since = usage.granted(flow)
            d = by_flow[flow]
            heapq.heappush(events, (now + d.hold, next(order), "done", d, since))

    def enqueue(d: Demand) -> None:
        remaining = left[d.flow]
        if remaining is None or remaining > 0:
            if remaining is not None:
                left[d.flow] = remaining - 1
            usage.wait(d.flow, object())

    while events and events[0][0] <= until:
        now, _, kind, d, since = heapq.heappop(events)
        if kind == "arrive":
            for _ in range(d.waiters):
                enqueue(d)
        else:
            in_use -= 1
            usage.released(d.flow, since)
            busy[d.flow] += now - since
            running = any(e[3].flow == d.flow and e[2] == "done" for e in events)
            if left[d.flow] == 0 and d.flow not in usage.waiting and not running:
                finished.setdefault(d.flow, now)
            enqueue(d)  # the worker comes back for its next request
        fill()
    return busy, finished


def shares(busy: Counter[Flow], key: Callable[[Flow], str]) -> dict[str, float]:
    total = sum(busy.values())
    out: Counter[str] = Counter()
    for flow, seconds in busy.items():
        out[key(flow)] += seconds
    return {name: seconds / total for name, seconds in out.items()}


def test_projects_share_equally_whatever_their_number_of_batches() -> None:
    demands = [Demand(Flow(f"a{i}", "a"), 0.1, 8) for i in range(3)]
    demands.append(Demand(Flow("b0", "b"), 0.1, 8))
    busy, _ = simulate(8, demands, until=600)
    by_project = shares(busy, lambda f: f.project)
    assert by_project["a"] == pytest.approx(0.5, abs=0.03)
    a_batches = [busy[Flow(f"a{i}", "a")] for i in range(3)]
    assert max(a_batches) / min(a_batches) < 1.1  # and batches equally within a project


def test_priority_classes_share_4_2_1() -> None:
    demands = [
        Demand(Flow("h", "p", "high"), 0.1, 16),
        Demand(Flow("n", "p", "normal"), 0.1, 16),
        Demand(Flow("l", "p", "low"), 0.1, 16),
    ]
    busy, _ = simulate(14, demands, until=600)
    by_class = shares(busy, lambda f: f.priority)
    assert by_class["high"] == pytest.approx(4 / 7, abs=0.03)
    assert by_class["normal"] == pytest.approx(2 / 7, abs=0.03)
    assert by_class["low"] == pytest.approx(1 / 7, abs=0.03)


def test_slot_time_is_shared_not_grants() -> None:
    """One project's requests hold a slot four times as long: time is still split in half."""
    demands = [Demand(Flow("slow", "a"), 0.4, 8), Demand(Flow("fast", "b"), 0.1, 8)]
    busy, _ = simulate(8, demands, until=600)
    assert shares(busy, lambda f: f.project)["a"] == pytest.approx(0.5, abs=0.03)


def test_a_small_batch_beside_a_huge_one_runs_nearly_as_fast_as_alone() -> None:
    small = Flow("small", "b")
    alone = simulate(8, [Demand(small, 0.1, 8, total=100, start=300)], until=900)[1][small] - 300
    beside = (
        simulate(
            8,
            [Demand(Flow("huge", "a"), 0.1, 8), Demand(small, 0.1, 8, total=100, start=300)],
            until=900,
        )[1][small]
        - 300
    )
    assert alone == pytest.approx(1.3, abs=0.05)  # 100 requests, 8 at a time, 0.1 s each
    assert beside / alone < 1.15


def test_a_priority_from_metadata() -> None:
    assert priority_of(None) == "normal"
    assert priority_of({PRIORITY_KEY: "low"}) == "low"
    assert priority_of({PRIORITY_KEY: "urgent"}) == "normal"
    assert check_priority({PRIORITY_KEY: "high"}) is None
    assert "Supported values are: 'high', 'normal', 'low'" in str(
        check_priority({PRIORITY_KEY: "urgent"})
    )


# -- the slots, under asyncio ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_slots_go_to_the_flow_with_the_least_recent_use() -> None:
    slots = Slots(2)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(flow: Flow) -> None:
        async with slots.take(flow):
            order.append(flow.batch)
            await release.wait()

    busy_flow, quiet = Flow("busy", "a"), Flow("quiet", "b")
    tasks = [asyncio.create_task(hold(busy_flow)) for _ in range(4)]
    await asyncio.sleep(0.01)
    tasks += [asyncio.create_task(hold(quiet)) for _ in range(2)]  # queued after busy's two
    await asyncio.sleep(0.01)
    assert order == ["busy", "busy"]
    release.set()
    await asyncio.gather(*tasks)
    assert order[2:4] == ["quiet", "quiet"]  # before busy's waiters, though they came later
    assert slots.in_use == 0


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    slots = Slots(1)
    async with slots.take(Flow("a")):
        waiter = asyncio.create_task(slots.take(Flow("b")).__aenter__())
        await asyncio.sleep(0.01)
        assert slots.usage.waiting
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert not slots.usage.waiting
    assert slots.in_use == 0


# -- end to end -----------------------------------------------------------------------------------

KEYS = {"a": "key-of-project-a", "b": "key-of-project-b"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchdServer]:
    root = tmp_path_factory.mktemp("fairness")
    with UpstreamProcess(root, latency_ms=20) as upstream:
        config = write_config(
            root / "batchd.toml",
            models=[model_route(upstream, max_concurrency=4)],
            api_keys=[{"key": key, "project": project} for project, key in KEYS.items()],
            progress_interval_seconds=0.2,
        )
        srv = BatchdServer(root / "data", config).start()
        yield srv
        srv.stop()


def client_of(server: BatchdServer, project: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_url, api_key=KEYS[project], max_retries=0)


def create(client: openai.OpenAI, prefix: str, count: int, **metadata: str) -> str:
    lines = [request_line(f"{prefix}-{i}", chat_body(f"{prefix} {i}")) for i in range(count)]
    file_id = client.files.create(file=("in.jsonl", to_jsonl(lines)), purpose="batch").id
    return client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata or None,
    ).id


def test_an_unknown_priority_is_a_400(server: BatchdServer) -> None:
    with client_of(server, "a") as client, pytest.raises(openai.BadRequestError) as bad:
        create(client, "x", 1, **{PRIORITY_KEY: "urgent"})
    assert (bad.value.param, bad.value.code) == ("metadata", "invalid_value")
    assert "'high', 'normal', 'low'" in bad.value.message


def test_a_small_batch_of_another_project_beside_a_large_one(server: BatchdServer) -> None:
    with client_of(server, "a") as a, client_of(server, "b") as b:
        large = create(a, "large", 2000, **{PRIORITY_KEY: "low"})
        wait_for_batch(a, server, large, statuses=("in_progress",))
        small = create(b, "small", 40)
        done = wait_for_batch(b, server, small, timeout=60)
        assert done["request_counts"]["completed"] == 40
        progress = a.batches.retrieve(large).request_counts
        assert progress is not None
        assert progress.completed < 1000  # the large one is far from done
        a.batches.cancel(large)


def test_submit_priority(server: BatchdServer, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(to_jsonl([request_line("one", chat_body("hi"))]))
    url = ["--base-url", server.api_url, "--api-key", KEYS["b"]]
    done = batchd("submit", str(path), "--priority", "high", *url)
    assert done.returncode == 0, done.stderr
    with client_of(server, "b") as client:
        batch = client.batches.retrieve(done.stdout.strip())
    assert batch.metadata == {PRIORITY_KEY: "high"}
    bad = batchd("submit", str(path), "--priority", "urgent", *url)
    assert bad.returncode == 2
    assert "use high, normal or low" in bad.stderr
