"""Shared mode's coordination in the database (:mod:`batchd.store.work`), on SQLite and on
PostgreSQL: range claims, fencing by epoch, result rows and their counts, whole-batch claims
with a fenced lifecycle, workers and upstream pauses; and the limit shares of the engine."""

from __future__ import annotations

import asyncio
import time

import pytest

from batchd.core import lifecycle
from batchd.core.lifecycle import BatchEnding
from batchd.engine.limits import ModelLimiter, Slots, UpstreamGate
from batchd.providers.base import DispatchLimits
from batchd.store import BatchRecord, SQLStore
from batchd.store.work import LeaseLost, ResultRow, SharedWork
from tests.records import batch_record

pytestmark = pytest.mark.anyio


def _batch(i: int) -> BatchRecord:
    return batch_record(i, created_at=1000 + i, expires_at=10**10)


async def _running(store: SQLStore, i: int, total: int = 10) -> BatchRecord:
    """A batch moved to ``in_progress`` with ``total`` requests."""
    record = _batch(i)
    await lifecycle.create(store, record, admission=None)
    moved = await lifecycle.transition(
        store, record.id, "in_progress", expected={"validating"}, at=1001, total=total
    )
    assert moved is not None
    return moved


def _rows(indices: range, *, ok: bool = True) -> list[ResultRow]:
    return [ResultRow(i, ok, b'{"line": %d}\n' % i, (2, 0, 3, 0) if ok else None) for i in indices]


async def test_ranges_are_claimed_once_and_fenced_by_their_epoch(store: SQLStore) -> None:
    work = SharedWork(store)
    batch = await _running(store, 1)
    assert [b.id for b in await work.unplanned(limit=5)] == [batch.id]
    await work.add_ranges(batch.id, [(0, 5, 0), (5, 10, 90)])
    await work.add_ranges(batch.id, [(0, 5, 0), (5, 10, 90)])  # a second planner: no change
    assert await work.unplanned(limit=5) == []

    a = await work.claim_ranges(owner="a", now=100.0, lease_seconds=10, limit=1)
    b = await work.claim_ranges(owner="b", now=100.0, lease_seconds=10, limit=5)
    assert [(r.start, r.stop, r.index_offset, r.epoch) for r in a] == [(0, 5, 0, 1)]
    assert [(r.start, r.stop, r.index_offset) for r in b] == [(5, 10, 90)]
    assert await work.claim_ranges(owner="c", now=105.0, lease_seconds=10, limit=5) == []

    status = await work.write_results(a[0], _rows(range(0, 3)), now=105.0, lease_seconds=10)
    assert status == "in_progress"
    # a's lease runs out and c takes the range over: a's next write is refused, whole
    [taken] = await work.claim_ranges(owner="c", now=116.0, lease_seconds=10, limit=1)
    assert (taken.start, taken.epoch) == (0, 2)
    with pytest.raises(LeaseLost):
        await work.write_results(a[0], _rows(range(3, 5)), now=117.0, lease_seconds=10)
    with pytest.raises(LeaseLost):
        await work.renew_range(a[0], now=117.0, lease_seconds=10)
    assert not await work.release_range(a[0], done=True)
    assert sorted(await work.done_indices(batch.id, 0, 5)) == [0, 1, 2]

    # the new holder writes what is missing; a row written twice counts once
    await work.write_results(taken, _rows(range(1, 5)), now=117.0, lease_seconds=10)
    await work.write_results(b[0], _rows(range(5, 10), ok=False), now=117.0, lease_seconds=10)
    current = await store.get_batch(batch.id)
    assert current is not None
    assert (current.completed, current.failed) == (5, 5)
    assert current.usage is not None
    assert (current.usage["input_tokens"], current.usage["total_tokens"]) == (10, 25)

    # the batch's ending is claimable once every range is done, not before
    assert await work.claim_endings(owner="e", now=118.0, lease_seconds=10, limit=5) == []
    assert await work.release_range(taken, done=True)
    assert await work.release_range(b[0], done=True)
    [ending] = await work.claim_endings(owner="e", now=118.0, lease_seconds=10, limit=5)
    assert ending.id == batch.id
    assert ending.lease_epoch == 1

    lines = [
        (int(row.idx), bytes(row.line))
        async for part in work.stream_results(batch.id)
        for row in part
    ]
    assert [i for i, _ in lines] == list(range(10))
    await work.discard(batch.id)
    assert await work.done_indices(batch.id, 0, 10) == []


async def test_a_stale_batch_holder_can_change_nothing(store: SQLStore) -> None:
    work = SharedWork(store)
    batch = await _running(store, 2)
    await lifecycle.transition(store, batch.id, "cancelling", expected={"in_progress"}, at=1002)
    [old] = await work.claim_endings(owner="old", now=100.0, lease_seconds=10, limit=5)
    [new] = await work.claim_endings(owner="new", now=111.0, lease_seconds=10, limit=5)
    assert new.lease_epoch == old.lease_epoch + 1
    ending = BatchEnding("cancelled", "file-out", "file-err")
    stale = ("old", old.lease_epoch)
    assert (
        await lifecycle.record_ending(
            store, batch.id, status="cancelling", ending=ending, at=1003, lease=stale
        )
        is None
    )
    with pytest.raises(LeaseLost):
        await work.fill_results((batch.id, "old", old.lease_epoch), _rows(range(2)))
    assert (
        await lifecycle.transition(
            store, batch.id, "cancelled", expected={"cancelling"}, at=1004, lease=stale
        )
        is None
    )
    current = ("new", new.lease_epoch)
    await work.fill_results((batch.id, "new", new.lease_epoch), _rows(range(2)))
    done = await lifecycle.transition(
        store, batch.id, "cancelled", expected={"cancelling"}, at=1004, lease=current
    )
    assert done is not None
    assert done.status == "cancelled"


async def test_the_finalizer_fences_off_ranges_still_held(store: SQLStore) -> None:
    work = SharedWork(store)
    batch = await _running(store, 3, total=4)
    await work.add_ranges(batch.id, [(0, 4, 0)])
    [held] = await work.claim_ranges(owner="w", now=100.0, lease_seconds=10, limit=1)
    assert await work.live_ranges(batch.id, now=101.0) == 1
    assert await work.take_ranges(batch.id, "finalizer") == 1
    assert await work.live_ranges(batch.id, now=101.0) == 0
    with pytest.raises(LeaseLost):
        await work.write_results(held, _rows(range(1)), now=102.0, lease_seconds=10)


async def test_validations_are_claimed_by_one_engine(store: SQLStore) -> None:
    work = SharedWork(store)
    await lifecycle.create(store, _batch(4), admission=None)
    first = await work.claim_validations(owner="a", now=10.0, lease_seconds=5, limit=5)
    again = await work.claim_validations(owner="b", now=12.0, lease_seconds=5, limit=5)
    later = await work.claim_validations(owner="b", now=16.0, lease_seconds=5, limit=5)
    assert [len(first), len(again), len(later)] == [1, 0, 1]


async def test_claims_of_concurrent_engines_never_overlap(store: SQLStore) -> None:
    work = SharedWork(store)
    batch = await _running(store, 5, total=400)
    await work.add_ranges(batch.id, [(s, s + 10, s * 8) for s in range(0, 400, 10)])

    async def engine(name: str) -> list[int]:
        got: list[int] = []
        while claimed := await work.claim_ranges(
            owner=name, now=time.time(), lease_seconds=60, limit=3
        ):
            got.extend(r.start for r in claimed)
        return got

    claims = await asyncio.gather(*(engine(f"e{i}") for i in range(4)))
    every = [start for got in claims for start in got]
    assert sorted(every) == list(range(0, 400, 10))


async def test_workers_heartbeat_and_pauses_only_grow(store: SQLStore) -> None:
    work = SharedWork(store)
    await work.heartbeat("w1", started_at=1.0, now=100.0, info={"models": ["m"]})
    await work.heartbeat("w2", started_at=1.0, now=90.0, info={})
    await work.heartbeat("w1", started_at=1.0, now=101.0, info={"models": ["m", "n"]})
    live = await work.live_workers(now=102.0, ttl=6.0)
    assert [(w.name, w.info["models"]) for w in live] == [("w1", ["m", "n"])]
    await work.remove_worker("w1")
    assert await work.live_workers(now=102.0, ttl=6.0) == []

    await work.pause_model("m", until=200.0)
    await work.pause_model("m", until=150.0)  # never shortens
    assert await work.pauses(now=100.0) == {"m": 200.0}
    assert await work.pauses(now=201.0) == {}


def _limiter(concurrency: int, rpm: int | None = None) -> ModelLimiter:
    limits = DispatchLimits(max_concurrency=concurrency, rpm=rpm)
    return ModelLimiter("m", limits, UpstreamGate("u"))


def test_shares_of_a_limit_add_up_to_it() -> None:
    for limit in (1, 5, 16, 24, 100):
        for parts in (1, 2, 3, 7):
            shares = [_limiter(limit, rpm=600).share(i, parts) for i in range(parts)]
            concurrency = sum(share[0] for share in shares)
            rpm = sum(share[1] or 0 for share in shares)
            assert concurrency == max(limit, parts), (limit, parts, shares)
            assert rpm == 600 if parts <= 600 else rpm >= 600


async def test_slots_can_shrink_and_grow_while_held() -> None:
    slots = Slots(3)
    held: list[asyncio.Event] = []
    peak = 0

    async def hold(release: asyncio.Event) -> None:
        nonlocal peak
        async with slots:
            peak = max(peak, slots.in_use)
            await release.wait()

    tasks = []
    for _ in range(6):
        release = asyncio.Event()
        held.append(release)
        tasks.append(asyncio.create_task(hold(release)))
    await asyncio.sleep(0.01)
    assert slots.in_use == 3
    slots.resize(1)  # the three holders keep theirs; nobody new until below 1
    held[0].set()
    held[1].set()
    await asyncio.sleep(0.01)
    assert slots.in_use == 1
    slots.resize(4)
    await asyncio.sleep(0.01)
    assert slots.in_use == 4
    for release in held:
        release.set()
    await asyncio.gather(*tasks)
    assert slots.in_use == 0
    assert peak == 4
    waiting = asyncio.create_task(hold(asyncio.Event()))
    slots.resize(0)
    await asyncio.sleep(0.01)
    waiting.cancel()  # a cancelled waiter leaves no slot behind
    await asyncio.gather(waiting, return_exceptions=True)
    assert slots.in_use == 0


async def test_rows_of_a_batch_that_ended_are_found_for_the_purge(store: SQLStore) -> None:
    work = SharedWork(store)
    batch = await _running(store, 6, total=2)
    await work.add_ranges(batch.id, [(0, 2, 0)])
    [held] = await work.claim_ranges(owner="w", now=100.0, lease_seconds=10, limit=1)
    await work.write_results(held, _rows(range(2)), now=100.0, lease_seconds=10)
    assert await work.ended_with_rows(limit=10) == []  # still running: kept
    await lifecycle.transition(store, batch.id, "cancelling", expected={"in_progress"}, at=1002)
    await lifecycle.transition(store, batch.id, "cancelled", expected={"cancelling"}, at=1003)
    assert await work.ended_with_rows(limit=10) == [batch.id]
    await work.discard(batch.id)
    assert await work.ended_with_rows(limit=10) == []


async def test_replica_ejections_are_shared_and_only_grow(store: SQLStore) -> None:
    work = SharedWork(store)
    await work.eject_replica("m", "gpu1:8000", until=150.0)
    await work.eject_replica("m", "gpu1:8000", until=120.0)  # never shortened
    await work.eject_replica("m", "gpu2:8000", until=110.0)
    assert await work.ejections(now=100.0) == {("m", "gpu1:8000"): 150.0, ("m", "gpu2:8000"): 110.0}
    assert await work.ejections(now=111.0) == {("m", "gpu1:8000"): 150.0}
    await work.readmit_replica("m", "gpu1:8000")
    assert await work.ejections(now=100.0) == {("m", "gpu2:8000"): 110.0}
