"""The batch lifecycle on a real store (SQLite, and PostgreSQL when ``BATCHD_TEST_POSTGRES_URL``
is set): every allowed transition and every refused one, an event per change, compare-and-set
under concurrency (exactly one of many writers wins)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from batchd.core import lifecycle
from batchd.core.lifecycle import (
    ACTIVE,
    CANCELLABLE,
    ENQUEUED,
    RUNNABLE,
    STATUSES,
    TERMINAL,
    TRANSITIONS,
    BatchEnding,
    BatchStatus,
    IllegalTransition,
)
from batchd.store import BatchRecord, SQLStore

pytestmark = pytest.mark.anyio

ALLOWED = [(a, b) for a, targets in TRANSITIONS.items() for b in sorted(targets)]
REFUSED = [(a, b) for a, b in itertools.product(STATUSES, STATUSES) if b not in TRANSITIONS[a]]
_numbers = itertools.count()


def _record(status: BatchStatus = "validating", project: str = "p") -> BatchRecord:
    return BatchRecord(
        id=f"batch_{next(_numbers):032x}",
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        completion_window="24h",
        status=status,
        created_at=100,
        project=project,
    )


async def _in(store: SQLStore, status: BatchStatus) -> BatchRecord:
    """A batch that reached ``status`` through allowed transitions (found by a walk of the
    transition graph from ``validating``)."""
    record = _record()
    await lifecycle.create(store, record, admission=None)
    path: list[BatchStatus] = ["validating"]
    while path[-1] != status:
        path.append(_next_towards(path[-1], status))
    for at, (before, after) in enumerate(itertools.pairwise(path), start=101):
        assert await lifecycle.transition(store, record.id, after, expected={before}, at=at)
    found = await store.get_batch(record.id)
    assert found is not None
    assert found.status == status
    return found


def _next_towards(start: BatchStatus, goal: BatchStatus) -> BatchStatus:
    """The first step of a shortest path from ``start`` to ``goal``."""
    frontier: list[list[BatchStatus]] = [[start]]
    seen = {start}
    while frontier:
        path = frontier.pop(0)
        for step in sorted(TRANSITIONS[path[-1]]):
            if step == goal:
                return [*path, step][1]
            if step not in seen:
                seen.add(step)
                frontier.append([*path, step])
    raise AssertionError(f"{goal} cannot be reached from {start}")


def test_the_groups_partition_as_documented() -> None:
    assert set(STATUSES) == ACTIVE | TERMINAL
    assert not ACTIVE & TERMINAL
    assert RUNNABLE == ENQUEUED == ACTIVE - {"validating"}
    assert ACTIVE - {"cancelling"} == CANCELLABLE
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    assert all(TRANSITIONS[s] for s in ACTIVE)
    assert all(s in CANCELLABLE for s in STATUSES if "cancelling" in TRANSITIONS[s])
    # every status is reachable from validating
    for status in STATUSES:
        if status != "validating":
            _next_towards("validating", status)


@pytest.mark.parametrize(("before", "after"), ALLOWED)
async def test_every_allowed_transition_applies_once_with_its_event(
    store: SQLStore, before: BatchStatus, after: BatchStatus
) -> None:
    batch = await _in(store, before)
    events_before = await store.events(batch_id=batch.id)
    moved = await lifecycle.transition(store, batch.id, after, expected={before}, at=500)
    assert moved is not None
    assert moved.status == after
    assert getattr(moved, f"{after}_at") == 500
    events = await store.events(batch_id=batch.id)
    assert len(events) == len(events_before) + 1
    last = events[-1]
    assert (last.from_status, last.to_status, last.created_at) == (before, after, 500)
    assert (last.batch_id, last.project) == (batch.id, "p")
    assert [e.seq for e in events] == sorted({e.seq for e in events})  # strictly increasing
    # the same change again: the batch is no longer in `before`
    again = await lifecycle.transition(store, batch.id, after, expected={before}, at=501)
    assert again is None
    assert len(await store.events(batch_id=batch.id)) == len(events)


@pytest.mark.parametrize(("before", "after"), REFUSED)
async def test_every_other_transition_is_refused_before_the_store(
    store: SQLStore, before: BatchStatus, after: BatchStatus
) -> None:
    batch = await _in(store, before)
    events = await store.events(batch_id=batch.id)
    with pytest.raises(IllegalTransition):
        await lifecycle.transition(store, batch.id, after, expected={before}, at=500)
    unchanged = await store.get_batch(batch.id)
    assert unchanged == batch
    assert await store.events(batch_id=batch.id) == events


async def test_a_transition_needs_statuses_to_start_from(store: SQLStore) -> None:
    batch = await _in(store, "validating")
    with pytest.raises(IllegalTransition):
        await lifecycle.transition(store, batch.id, "failed", expected=(), at=1)


async def test_batches_are_created_validating_with_an_event(store: SQLStore) -> None:
    with pytest.raises(IllegalTransition):
        await lifecycle.create(store, _record("in_progress"), admission=None)
    record = _record()
    await lifecycle.create(store, record, admission=None)
    [event] = await store.events(batch_id=record.id)
    assert (event.from_status, event.to_status, event.created_at) == (None, "validating", 100)


@pytest.mark.parametrize("status", sorted(RUNNABLE))
async def test_an_ending_is_recorded_only_on_a_running_batch(
    store: SQLStore, status: BatchStatus
) -> None:
    batch = await _in(store, status)
    ending = BatchEnding("expired", "file-a", "file-b")
    recorded = await lifecycle.record_ending(store, batch.id, status=status, ending=ending, at=9)
    assert recorded is not None
    assert (recorded.status, recorded.ending) == (status, ending)
    other = await lifecycle.record_ending(
        store, batch.id, status=next(iter(RUNNABLE - {status})), ending=ending, at=9
    )
    assert other is None  # compare-and-set on the status it stays in


async def test_an_ending_is_refused_on_a_batch_that_is_not_running(store: SQLStore) -> None:
    batch = await _in(store, "validating")
    with pytest.raises(IllegalTransition):
        await lifecycle.record_ending(
            store, batch.id, status="validating", ending=BatchEnding("completed", "a", "b"), at=1
        )


async def test_concurrent_transitions_exactly_one_wins(store: SQLStore) -> None:
    """Twenty writers at once on one in_progress batch (a cancel, the end of the run, an expiry,
    as they race in a real server): one wins, the others see ``None``, one event is written."""
    for _ in range(3):
        batch = await _in(store, "in_progress")
        targets: list[BatchStatus] = ["cancelling", "finalizing", "expired", "cancelling"] * 5
        results = await asyncio.gather(
            *(
                lifecycle.transition(store, batch.id, to, expected={"in_progress"}, at=700 + i)
                for i, to in enumerate(targets)
            )
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        events = await store.events(batch_id=batch.id)
        assert [(e.from_status, e.to_status) for e in events[-1:]] == [
            ("in_progress", winners[0].status)
        ]
        assert len(events) == 3  # created, in_progress, the winner
        final = await store.get_batch(batch.id)
        assert final is not None
        assert final.status == winners[0].status


async def test_a_cancel_racing_validation_lands_once(store: SQLStore) -> None:
    """The service's cancel (any cancellable status) against validation's end (validating
    only): whichever commits first, the other sees the new status and does nothing."""
    for _ in range(5):
        batch = await _in(store, "validating")
        cancel = lifecycle.transition(store, batch.id, "cancelling", expected=CANCELLABLE, at=1)
        accept = lifecycle.transition(store, batch.id, "in_progress", expected={"validating"}, at=1)
        cancelled, accepted = await asyncio.gather(cancel, accept)
        events = await store.events(batch_id=batch.id)
        final = await store.get_batch(batch.id)
        assert final is not None
        if accepted is None:
            assert cancelled is not None
            assert final.status == "cancelling"
            assert [e.to_status for e in events] == ["validating", "cancelling"]
        else:  # accepted first; a cancel of an in_progress batch is allowed too
            assert cancelled is not None
            assert final.status == "cancelling"
            assert [e.to_status for e in events] == ["validating", "in_progress", "cancelling"]
