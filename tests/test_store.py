"""The SQL store on a real SQLite file (and PostgreSQL when ``BATCHD_TEST_POSTGRES_URL`` is set):
migrations, lifecycle changes with their events, pagination, leases."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from batchd.core import lifecycle
from batchd.core.lifecycle import BatchEnding, BatchStatus, StatusChange
from batchd.store import BatchRecord, FileRecord, SQLStore
from batchd.store.schema import metadata
from tests.records import batch_record

pytestmark = pytest.mark.anyio


def _file(i: int, *, purpose: str = "batch", expires_at: int | None = None) -> FileRecord:
    return FileRecord(
        id=f"file-{i:024d}",
        bytes=i,
        created_at=1000 + i,
        filename=f"f{i}.jsonl",
        purpose=purpose,
        sha256="0" * 64,
        expires_at=expires_at,
    )


def _batch(i: int, status: BatchStatus = "validating") -> BatchRecord:
    return batch_record(i, status=status)


async def test_migrations_build_exactly_the_declared_schema(store: SQLStore) -> None:
    async with store.engine.connect() as conn:

        def diff(sync_conn: sa.Connection) -> list[object]:
            return list(compare_metadata(MigrationContext.configure(sync_conn), metadata))

        assert await conn.run_sync(diff) == []


async def test_sqlite_open_is_idempotent_and_uses_wal(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    for _ in range(2):
        s = SQLStore(url)
        await s.open()
        async with s.engine.connect() as conn:
            mode = (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar()
        await s.close()
        assert mode == "wal"


async def test_transition_is_compare_and_set_and_writes_its_event(store: SQLStore) -> None:
    batch_id = _batch(1).id
    await lifecycle.create(store, _batch(1), admission=None)
    moved = await lifecycle.transition(
        store, batch_id, "in_progress", expected={"validating"}, at=1005, total=3
    )
    assert moved is not None
    assert (moved.status, moved.total, moved.in_progress_at) == ("in_progress", 3, 1005)
    # A second writer expecting the old status loses, and leaves no event.
    lost = await lifecycle.transition(store, batch_id, "failed", expected={"validating"}, at=1006)
    assert lost is None
    assert (await store.get_batch(batch_id)).status == "in_progress"  # type: ignore[union-attr]
    missing = await lifecycle.transition(
        store, "batch_missing", "failed", expected={"validating"}, at=1007
    )
    assert missing is None
    events = await store.events(batch_id=batch_id)
    assert [(e.from_status, e.to_status, e.created_at) for e in events] == [
        (None, "validating", 1000),
        ("validating", "in_progress", 1005),
    ]
    assert events[0].seq < events[1].seq
    assert {e.project for e in events} == {"default"}
    colour: dict[str, object] = {"colour": "red"}
    bad = StatusChange(batch_id, frozenset({"in_progress"}), None, 1, colour)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown batch fields"):
        await store.apply(bad)


async def test_an_ending_is_stored_typed_without_an_event(store: SQLStore) -> None:
    batch_id = _batch(1).id
    await lifecycle.create(store, _batch(1), admission=None)
    await lifecycle.transition(store, batch_id, "in_progress", expected={"validating"}, at=1)
    ending = BatchEnding("expired", "file-out", "file-err")
    updated = await lifecycle.record_ending(
        store, batch_id, status="in_progress", ending=ending, at=2
    )
    assert updated is not None
    assert (updated.status, updated.ending) == ("in_progress", ending)
    assert (await store.get_batch(batch_id)).ending == ending  # type: ignore[union-attr]
    assert len(await store.events(batch_id=batch_id)) == 2  # created, in_progress


async def test_batches_page_newest_first(store: SQLStore) -> None:
    for i in range(5):
        await store.create_batch(_batch(i), admission=None)
    page, more = await store.list_batches(after_seq=None, limit=2)
    assert [b.id for b in page] == [_batch(4).id, _batch(3).id]
    assert more
    cursor = await store.batch_cursor(page[-1].id)
    page, more = await store.list_batches(after_seq=cursor, limit=10)
    assert [b.id for b in page] == [_batch(i).id for i in (2, 1, 0)]
    assert not more


async def test_message_batches_page_both_ways_and_deleted_ones_are_hidden(
    store: SQLStore,
) -> None:
    """Anthropic's pagination (``before_seq``: the page just newer, newest first), one dialect,
    and a deleted batch gone from every list; only an ended batch may be deleted, once."""
    for i in range(6):
        dialect = "anthropic" if i % 3 else "openai"  # 1, 2, 4, 5 are message batches
        await store.create_batch(dataclasses.replace(_batch(i), dialect=dialect), admission=None)
    ids = [_batch(i).id for i in range(6)]
    page, more = await store.list_batches(after_seq=None, limit=10, dialect="anthropic")
    assert [b.id for b in page] == [ids[5], ids[4], ids[2], ids[1]]
    assert not more
    cursor = await store.batch_cursor(ids[1])
    page, more = await store.list_batches(
        after_seq=None, before_seq=cursor, limit=2, dialect="anthropic"
    )
    assert [b.id for b in page] == [ids[4], ids[2]]
    assert more
    page, more = await store.list_batches(after_seq=None, before_seq=cursor, limit=3)
    assert [b.id for b in page] == [ids[4], ids[3], ids[2]]
    assert more

    assert await store.delete_batch(ids[4], now=5000) is None  # still validating
    await store.apply(
        StatusChange(ids[4], frozenset({"validating"}), "failed", 4000, {"unexecuted": 0})
    )
    deleted = await store.delete_batch(ids[4], now=5000, project="default")
    assert deleted is not None
    assert deleted.deleted_at == 5000
    assert await store.delete_batch(ids[4], now=5001) is None  # once
    page, _ = await store.list_batches(after_seq=None, limit=10)
    assert ids[4] not in [b.id for b in page]
    found = await store.get_batch(ids[4])
    assert found is not None
    assert found.deleted_at == 5000


async def test_files_hide_deleted_and_expired(store: SQLStore) -> None:
    await store.create_file(_file(1))
    await store.create_file(_file(2, expires_at=1500))
    await store.create_file(_file(3, purpose="user_data"))
    assert await store.get_file(_file(2).id, now=1499) is not None
    assert await store.get_file(_file(2).id, now=1500) is None
    deleted = await store.delete_file(_file(1).id, now=1400)
    assert deleted is not None
    assert deleted.deleted_at == 1400
    assert await store.delete_file(_file(1).id, now=1401) is None
    live, _ = await store.list_files(now=1600, purpose=None, after_seq=None, limit=10, order="asc")
    assert [f.id for f in live] == [_file(3).id]
    batch_files, _ = await store.list_files(
        now=1000, purpose="batch", after_seq=None, limit=10, order="desc"
    )
    assert [f.id for f in batch_files] == [_file(2).id]
    # A deleted file still works as a pagination cursor.
    assert await store.file_cursor(_file(1).id) is not None


async def test_purge_skips_files_that_active_batches_read(store: SQLStore) -> None:
    await store.create_file(_file(1))
    await store.create_file(_file(2))
    await store.create_batch(_batch(1, status="in_progress"), admission=None)  # reads file 1
    await store.delete_file(_file(1).id, now=2000)
    await store.delete_file(_file(2).id, now=2000)
    due = await store.files_to_purge(now=2000, limit=10)
    assert [f.id for f in due] == [_file(2).id]
    await store.mark_purged(_file(2).id, now=2001)
    await lifecycle.transition(store, _batch(1).id, "expired", expected={"in_progress"}, at=1)
    due = await store.files_to_purge(now=2002, limit=10)
    assert [f.id for f in due] == [_file(1).id]


# -- leases ------------------------------------------------------------------------------------


async def _runnable(store: SQLStore, i: int, status: BatchStatus = "in_progress") -> BatchRecord:
    await lifecycle.create(store, _batch(i), admission=None)
    updated = await lifecycle.transition(
        store, _batch(i).id, "in_progress", expected={"validating"}, at=5
    )
    if status != "in_progress":
        updated = await lifecycle.transition(
            store, _batch(i).id, status, expected={"in_progress"}, at=6
        )
    assert updated is not None
    return updated


async def test_a_batch_is_claimed_by_one_owner_until_its_lease_runs_out(store: SQLStore) -> None:
    await _runnable(store, 1)
    await _runnable(store, 2, status="finalizing")
    await store.create_batch(_batch(3), admission=None)  # validating: not runnable

    first = await store.claim_batches(owner="a", now=100.0, lease_seconds=30, limit=10)
    assert [b.id for b in first] == [_batch(1).id, _batch(2).id]
    assert await store.claim_batches(owner="b", now=129.0, lease_seconds=30, limit=10) == []
    # a renews one lease and lets the other run out
    renewed = await store.renew_lease(_batch(1).id, owner="a", now=120.0, lease_seconds=30)
    assert renewed is not None
    assert renewed.status == "in_progress"
    taken = await store.claim_batches(owner="b", now=131.0, lease_seconds=30, limit=10)
    assert [b.id for b in taken] == [_batch(2).id]
    # a's lease on batch 2 is gone: renewing says so, and a's progress no longer lands
    assert await store.renew_lease(_batch(2).id, owner="a", now=132.0, lease_seconds=30) is None
    await store.record_progress(_batch(2).id, owner="a", completed=9, failed=9, usage={})
    await store.record_progress(_batch(2).id, owner="b", completed=3, failed=1, usage={"x": 1})
    batch = await store.get_batch(_batch(2).id)
    assert batch is not None
    assert (batch.completed, batch.failed, batch.usage) == (3, 1, {"x": 1})


async def test_released_leases_can_be_claimed_again(store: SQLStore) -> None:
    await _runnable(store, 1)
    await _runnable(store, 2, status="cancelling")
    claimed = await store.claim_batches(owner="a", now=0.0, lease_seconds=30, limit=1)
    assert [b.id for b in claimed] == [_batch(1).id]  # limit, oldest first
    await store.release_lease(_batch(1).id, owner="b")  # not b's: no effect
    taken = await store.claim_batches(owner="b", now=1.0, lease_seconds=30, limit=5)
    assert [b.id for b in taken] == [_batch(2).id]  # batch 1 is still a's
    await store.release_lease(_batch(1).id, owner="a")
    again = await store.claim_batches(owner="b", now=1.0, lease_seconds=30, limit=5)
    assert [b.id for b in again] == [_batch(1).id]
    assert await store.release_all_leases() == 2
    assert len(await store.claim_batches(owner="c", now=2.0, lease_seconds=30, limit=5)) == 2


async def test_a_batch_cancelled_while_validating_is_not_claimed(store: SQLStore) -> None:
    await lifecycle.create(store, _batch(1), admission=None)
    cancelling = await lifecycle.transition(
        store, _batch(1).id, "cancelling", expected={"validating"}, at=1
    )
    assert cancelling is not None
    assert await store.claim_batches(owner="a", now=0.0, lease_seconds=30, limit=5) == []
