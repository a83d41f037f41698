"""BatchManager on a real SQLite store and a real blob directory (no server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from batchd.config import Settings
from batchd.core import lifecycle
from batchd.core.request_index import RequestIndex, index_key
from batchd.engine import BatchManager
from batchd.errors import StoreError
from batchd.ids import new_batch_id, new_file_id
from batchd.service import BatchService
from batchd.storage import LocalStorage
from batchd.store import BatchRecord, FileRecord, SQLStore

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o-mini"


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[SQLStore, LocalStorage, Settings]]:
    settings = Settings.load(
        data_dir=tmp_path,
        models=[{"name": MODEL, "provider": "openai"}],
        max_requests_per_batch=1_000_000,
    )
    store = SQLStore(settings.resolved_database_url)
    await store.open()
    storage = LocalStorage(tmp_path / "files")
    await storage.open()
    yield store, storage, settings
    await store.close()


def request_line(i: int) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}
    line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return orjson.dumps(line) + b"\n"


async def upload(store: SQLStore, storage: LocalStorage, data: bytes) -> FileRecord:
    writer = storage.writer()
    writer.write(data)
    blob = await writer.commit(new_file_id())
    record = FileRecord(
        id=blob.key,
        bytes=blob.size,
        created_at=int(time.time()),
        filename="in.jsonl",
        purpose="batch",
        sha256=blob.sha256,
    )
    await store.create_file(record)
    return record


def new_batch(file_id: str) -> BatchRecord:
    return BatchRecord(
        id=new_batch_id(),
        endpoint="/v1/chat/completions",
        input_file_id=file_id,
        completion_window="24h",
        status="validating",
        created_at=int(time.time()),
    )


async def submit(store: SQLStore, manager: BatchManager, batch: BatchRecord) -> None:
    """What the service does when a batch is created: store it, tell the engine."""
    await lifecycle.create(store, batch, admission=None)
    manager.batch_created(batch)


async def wait_status(store: SQLStore, batch_id: str, statuses: set[str]) -> BatchRecord:
    for _ in range(600):
        batch = await store.get_batch(batch_id)
        assert batch is not None
        if batch.status in statuses:
            return batch
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} never reached {statuses}")


async def test_unreadable_input_fails_the_batch_instead_of_hanging(
    parts: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    store, storage, settings = parts
    file = await upload(store, storage, request_line(1))
    storage.path(file.id).unlink()  # the blob vanished behind batchd's back
    manager = BatchManager(store, storage, settings)
    await manager.start()
    try:
        batch = new_batch(file.id)
        await submit(store, manager, batch)
        failed = await wait_status(store, batch.id, {"failed", "in_progress"})
    finally:
        await manager.stop()
    assert failed.status == "failed"
    assert failed.errors is not None
    assert failed.errors[0]["code"] == "server_error"
    assert "FileNotFoundError" in failed.errors[0]["message"]


async def test_restart_resumes_validation(parts: tuple[SQLStore, LocalStorage, Settings]) -> None:
    store, storage, settings = parts
    file = await upload(store, storage, b"".join(request_line(i) for i in range(10)))
    batch = new_batch(file.id)
    await store.create_batch(batch, admission=None)  # as if the last process died validating
    manager = BatchManager(store, storage, settings)
    await manager.start()
    try:
        # Validated, then run at once (no provider here: its requests end model_not_found).
        after = {"in_progress", "finalizing", "completed", "failed"}
        done = await wait_status(store, batch.id, after)
    finally:
        await manager.stop()
    assert done.status != "failed", done.errors
    assert done.in_progress_at is not None
    assert (done.total, done.model) == (10, MODEL)
    # Validating the stored file wrote its request index beside it.
    with storage.open_binary(index_key(file.id)) as fh:
        entries = list(RequestIndex(fh).entries())
    assert [(e.index, e.custom_id, e.model) for e in entries] == [
        (i, f"r{i}", MODEL) for i in range(10)
    ]


@pytest.mark.parametrize("failing", ["get_file", "apply"])
async def test_store_failures_during_validation_are_retried(
    parts: tuple[SQLStore, LocalStorage, Settings],
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    """The database unavailable for a moment, while the input is read or when the batch moves
    on: validation runs again until it passes, and the batch neither fails nor stays
    ``validating``."""
    store, storage, settings = parts
    file = await upload(store, storage, b"".join(request_line(i) for i in range(3)))
    monkeypatch.setattr("batchd.engine.manager._STORE_RETRY_FIRST", 0.01)
    real = getattr(store, failing)
    calls = 0

    async def flaky(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise StoreError("database is locked")
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, failing, flaky)
    manager = BatchManager(store, storage, settings)
    await manager.start()
    try:
        batch = new_batch(file.id)
        await submit(store, manager, batch)
        done = await wait_status(
            store, batch.id, {"in_progress", "finalizing", "completed", "failed"}
        )
    finally:
        await manager.stop()
    assert calls > 3
    assert done.status != "failed", done.errors
    assert (done.total, done.model) == (3, MODEL)


async def test_cancel_during_validation_stops_the_validator(
    parts: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    store, storage, settings = parts
    file = await upload(store, storage, b"".join(request_line(i) for i in range(300_000)))
    manager = BatchManager(store, storage, settings)
    await manager.start()
    try:
        batch = new_batch(file.id)
        await submit(store, manager, batch)
        await asyncio.sleep(0.05)
        cancelling = await BatchService(store, settings, manager).cancel("default", batch.id)
        assert cancelling.status in {"cancelling", "cancelled"}
        started = time.monotonic()
        done = await wait_status(store, batch.id, {"cancelled"})
        elapsed = time.monotonic() - started
    finally:
        await manager.stop()
    assert done.cancelled_at is not None
    assert (done.total, done.completed, done.failed, done.error_file_id) == (0, 0, 0, None)
    assert elapsed < 2.0  # the validator noticed the flag rather than finishing 300k lines


async def test_purge_removes_blobs_of_deleted_files(
    parts: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    store, storage, settings = parts
    keep = await upload(store, storage, b"keep")
    gone = await upload(store, storage, b"gone")
    for file in (keep, gone):  # the request index beside each
        writer = storage.writer()
        writer.write(b"index")
        await writer.commit(index_key(file.id))
    await store.delete_file(gone.id, now=int(time.time()))
    manager = BatchManager(store, storage, settings)
    assert await manager.purge_files() == 1
    assert await storage.exists(keep.id)
    assert await storage.exists(index_key(keep.id))
    assert not await storage.exists(gone.id)
    assert not await storage.exists(index_key(gone.id))
    assert await manager.purge_files() == 0
