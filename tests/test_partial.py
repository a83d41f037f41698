"""Partial results at the service: what a read counts is what it streams, by status, up to what
a live journal has synced, across the race with finalization (the journal removed while it is
read, or before), project isolation, and shared mode's row snapshots (SQLite, and PostgreSQL
when ``BATCHD_TEST_POSTGRES_URL`` is set) that rows written or deleted meanwhile do not change."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from batchd.config import Settings
from batchd.core.files import publish_output
from batchd.engine.finalize import JournalResults
from batchd.engine.journal import JournalEntry
from batchd.errors import NotFound, RateLimited
from batchd.ids import new_batch_id
from batchd.service import BatchService
from batchd.service.partial import MAX_ROW_READERS, PartialResults
from batchd.storage import LocalStorage
from batchd.store import BatchRecord, SQLStore
from batchd.store.schema import batch_results

pytestmark = pytest.mark.anyio


class NoEngine:
    def batch_created(self, batch: BatchRecord) -> None: ...

    def batch_cancelled(self, batch: BatchRecord) -> None: ...

    def files_deleted(self) -> None: ...


def entry(index: int, ok: bool = True) -> JournalEntry:
    if ok:
        return JournalEntry.from_response(index, f"r{index}", 200, f"req_{index}", {"n": index})
    return JournalEntry.from_response(index, f"r{index}", 400, f"req_{index}", {"error": "no"})


async def new_batch(store: SQLStore, status: str = "in_progress", **fields: object) -> BatchRecord:
    record = BatchRecord(
        id=new_batch_id(),
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        completion_window="24h",
        status=status,  # type: ignore[arg-type]
        created_at=int(time.time()),
        total=10,
        project="p",
        **fields,  # type: ignore[arg-type]
    )
    await store.create_batch(record, admission=None)
    return record


async def read_all(partial: PartialResults) -> list[bytes]:
    data = b"".join([chunk async for chunk in partial.chunks])
    lines = data.splitlines(keepends=True)
    assert len(lines) == partial.lines
    return lines


Local = tuple[BatchService, SQLStore, LocalStorage, Path]


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[Local]:
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    await store.open()
    storage = LocalStorage(tmp_path / "data")
    await storage.open()
    settings = Settings(embedded_models=False, data_dir=tmp_path / "data")
    (settings.data_dir / "journals").mkdir(parents=True)
    service = BatchService(store, settings, NoEngine(), storage=storage)
    yield service, store, storage, settings.data_dir / "journals"
    await store.close()


async def test_a_validating_batch_has_no_partial_results(local: Local) -> None:
    service, store, _storage, _journals = local
    batch = await new_batch(store, "validating")
    partial = await service.partial("p", batch.id, "output")
    assert (partial.lines, partial.final, partial.batch.status) == (0, False, "validating")
    assert await read_all(partial) == []


async def test_a_journal_read_counts_what_it_streams(local: Local) -> None:
    """In journal order; the first record of an index wins; a torn last line is not read."""
    service, store, _storage, journals = local
    batch = await new_batch(store)
    entries = [entry(4), entry(1, ok=False), entry(7), entry(2), entry(9, ok=False)]
    again = entry(4)  # a second record of index 4 (another id): ignored, as the finalizer does
    records = [e.journal_line() for e in entries] + [again.journal_line()]
    torn = entry(5).journal_line()[:-10]
    (journals / f"{batch.id}.journal").write_bytes(b"".join(records) + torn)
    output = await service.partial("p", batch.id, "output")
    errors = await service.partial("p", batch.id, "errors")
    assert output.batch.status == "in_progress"
    assert await read_all(output) == [entries[i].output_line() for i in (0, 2, 3)]
    assert await read_all(errors) == [entries[i].output_line() for i in (1, 4)]


async def test_a_live_journal_is_read_up_to_what_it_has_synced(local: Local) -> None:
    service, store, _storage, journals = local
    batch = await new_batch(store)
    path = journals / f"{batch.id}.journal"
    journal = await JournalResults.open(path, 10)
    try:
        durable = [entry(i) for i in range(3)]
        for e in durable:
            assert await journal.append(e)
        with path.open("ab") as fh:  # written, not yet synced: not durable, not read
            fh.write(entry(5).journal_line())
        partial = await service.partial("p", batch.id, "output")
        assert await read_all(partial) == [e.output_line() for e in durable]
    finally:
        await journal.close()
    partial = await service.partial("p", batch.id, "output")  # closed: the whole file
    assert partial.lines == 4
    await partial.aclose()


async def test_the_journal_removed_while_it_is_read(local: Local) -> None:
    """The finalizer deletes the journal after the files are published: a read under way
    streams the snapshot it counted."""
    service, store, _storage, journals = local
    batch = await new_batch(store)
    path = journals / f"{batch.id}.journal"
    path.write_bytes(b"".join(entry(i).journal_line() for i in range(6)))
    partial = await service.partial("p", batch.id, "output")
    path.unlink()
    assert len(await read_all(partial)) == 6


async def test_an_ended_batch_reads_its_final_files(local: Local) -> None:
    """A batch that ended (its journal gone) between the status read and the journal's open
    is read from its final file; the same after the end."""
    service, store, storage, _journals = local
    running = await new_batch(store)
    final_lines = [entry(i).output_line() for i in range(3)]
    writer = storage.writer()
    writer.write(b"".join(final_lines))
    blob = await writer.commit("file-output1")
    await publish_output(
        store, blob, running, filename="o.jsonl", now=int(time.time()), default_expiry=None
    )
    ended = dataclasses.replace(
        running, status="completed", output_file_id=blob.key, completed=3, failed=0
    )
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE batches SET status='completed', output_file_id=:f, completed=3 WHERE id=:id"
            ),
            {"f": blob.key, "id": running.id},
        )
    stale = await service.partials.read(running, "output")  # it saw in_progress; no journal
    assert (stale.final, stale.batch.status) == (True, "completed")
    assert await read_all(stale) == final_lines
    after = await service.partial("p", ended.id, "output")
    assert (after.lines, after.final) == (3, True)
    assert await read_all(after) == final_lines
    errors = await service.partial("p", ended.id, "errors")  # no error file: nothing failed
    assert (errors.lines, errors.final) == (0, True)
    await storage.delete(blob.key)
    with pytest.raises(NotFound, match="has expired or was deleted"):
        await service.partial("p", ended.id, "output")


async def test_a_final_file_streams_in_whole_lines(local: Local) -> None:
    service, store, storage, _journals = local
    lines = [b'{"custom_id":"r%d","pad":"%s"}\n' % (i, b"x" * (i % 1500)) for i in range(4000)]
    writer = storage.writer()
    writer.write(b"".join(lines))
    blob = await writer.commit("file-big")
    batch = await new_batch(store, "completed", output_file_id=blob.key, completed=4000)
    await publish_output(
        store, blob, batch, filename="o.jsonl", now=int(time.time()), default_expiry=None
    )
    partial = await service.partial("p", batch.id, "output")
    chunks = [chunk async for chunk in partial.chunks]
    assert len(chunks) > 2
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert b"".join(chunks) == b"".join(lines)
    assert partial.lines == 4000


async def test_another_projects_batch_is_not_found(local: Local) -> None:
    service, store, _storage, _journals = local
    batch = await new_batch(store)
    with pytest.raises(NotFound, match=batch.id):
        await service.partial("other", batch.id, "output")
    with pytest.raises(NotFound):
        await service.partial("p", "batch_nope", "errors")


# -- shared mode ------------------------------------------------------------------------------


async def insert_rows(store: SQLStore, batch_id: str, indices: range, ok: bool = True) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.insert(batch_results),
            [
                {"batch_id": batch_id, "idx": i, "ok": ok, "line": entry(i, ok).output_line()}
                for i in indices
            ],
        )


async def test_a_row_snapshot_is_not_changed_by_rows_written_or_deleted(
    store: SQLStore, db_url: str, tmp_path: Path
) -> None:
    settings = Settings(embedded_models=False, data_dir=tmp_path, database_url=db_url)
    service = BatchService(store, settings, NoEngine(), storage=LocalStorage(tmp_path))
    batch = await new_batch(store)
    await insert_rows(store, batch.id, range(5, 8))
    await insert_rows(store, batch.id, range(0, 2), ok=False)
    output = await service.partial("p", batch.id, "output")
    errors = await service.partial("p", batch.id, "errors")
    await insert_rows(store, batch.id, range(2, 4))  # after the snapshot: not in it
    async with store.engine.begin() as conn:  # the finalizer's discard, after the end
        await conn.execute(sa.delete(batch_results).where(batch_results.c.batch_id == batch.id))
    assert output.lines == 3
    lines = await read_all(output)
    assert [line.split(b'"custom_id":"')[1][:2] for line in lines] == [b"r5", b"r6", b"r7"]
    assert len(await read_all(errors)) == 2


async def test_row_snapshots_are_few_at_once(store: SQLStore, db_url: str, tmp_path: Path) -> None:
    settings = Settings(embedded_models=False, data_dir=tmp_path, database_url=db_url)
    service = BatchService(store, settings, NoEngine(), storage=LocalStorage(tmp_path))
    batch = await new_batch(store)
    opened = [await service.partial("p", batch.id, "output") for _ in range(MAX_ROW_READERS)]
    with pytest.raises(RateLimited, match="Retry-After"):
        await service.partial("p", batch.id, "output")
    await opened[0].aclose()
    await opened[0].aclose()  # idempotent
    opened[0] = await service.partial("p", batch.id, "output")
    for partial in opened:
        await partial.aclose()
