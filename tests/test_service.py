"""The service layer on a real store (SQLite, and PostgreSQL when ``BATCHD_TEST_POSTGRES_URL`` is
set): project limits admitted exactly when many requests arrive at once, in one process and in
several, and the checks every dialect shares. The engine is a recorder here (the service's only
collaborator besides the store)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchd.config import ProjectLimits, Settings
from batchd.core import lifecycle
from batchd.core.files import Ingested, add_file
from batchd.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    RateLimited,
    StorageQuotaExceeded,
    TokenQuotaExceeded,
)
from batchd.service import BatchService, NewBatch
from batchd.storage import BlobInfo, LocalStorage
from batchd.store import BatchRecord, SQLStore

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"


class RecordingEngine:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.cancelled: list[str] = []
        self.deleted = 0

    def batch_created(self, batch: BatchRecord) -> None:
        self.created.append(batch.id)

    def batch_cancelled(self, batch: BatchRecord) -> None:
        self.cancelled.append(batch.id)

    def files_deleted(self) -> None:
        self.deleted += 1


def service(store: SQLStore, **limits: Any) -> tuple[BatchService, RecordingEngine]:
    settings = Settings(embedded_models=False, project_limits=ProjectLimits(**limits))
    engine = RecordingEngine()
    return BatchService(store, settings, engine), engine


async def create_many(batches: BatchService, count: int) -> list[BatchRecord | RateLimited]:
    async def one() -> BatchRecord | RateLimited:
        try:
            return await batches.create("p", NewBatch("file-x", CHAT))
        except RateLimited as exc:
            return exc

    return await asyncio.gather(*(one() for _ in range(count)))


async def test_active_batches_are_admitted_exactly_under_20_concurrent_creates(
    store: SQLStore,
) -> None:
    batches, engine = service(store, max_active_batches=3)
    outcomes = await create_many(batches, 20)
    admitted = [o for o in outcomes if isinstance(o, BatchRecord)]
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert (len(admitted), len(refused)) == (3, 17)
    assert sorted(engine.created) == sorted(b.id for b in admitted)
    assert all(r.headers["retry-after"] == "60" for r in refused)
    assert "at most 3 batches" in refused[0].message
    # other projects are not affected; a finished batch frees its place
    assert (await batches.create("q", NewBatch("file-x", CHAT))).project == "q"
    done = admitted[0].id
    await lifecycle.transition(store, done, "failed", expected={"validating"}, at=1)
    again = await create_many(batches, 5)
    assert sum(isinstance(o, BatchRecord) for o in again) == 1  # the freed place only
    page = await batches.list("p", after=None, limit=100)
    assert sum(b.status == "validating" for b in page.data) == 3


async def test_batches_per_hour_are_admitted_exactly_with_retry_after(store: SQLStore) -> None:
    batches, _ = service(store, max_batches_per_hour=4)
    outcomes = await create_many(batches, 20)
    admitted = [o for o in outcomes if isinstance(o, BatchRecord)]
    assert len(admitted) == 4
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    oldest = min(b.created_at for b in admitted)
    retry_after = int(refused[0].headers["retry-after"])
    assert oldest + 3600 - int(time.time()) - 1 <= retry_after <= 3600


def _run_workers(
    url: str, processes: int, each: int, limits: dict[str, int]
) -> list[dict[str, int]]:
    start_at = time.time() + 3.0  # every process connected and waiting by then
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.admission_worker",
                url,
                str(each),
                str(start_at),
                orjson.dumps(limits).decode(),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        results.append(orjson.loads(out))
    return results


async def test_admission_is_exact_across_two_processes_on_one_store(
    store: SQLStore, db_url: str
) -> None:
    """Two processes, ten creates each at the same moment, on one SQLite file (or one
    PostgreSQL database): the store's lock on the project's row admits exactly the limit."""
    results = await asyncio.to_thread(_run_workers, db_url, 2, 10, {"max_active_batches": 5})
    assert sum(r["admitted"] for r in results) == 5
    assert sum(r["refused"] for r in results) == 15
    page, _ = await store.list_batches(after_seq=None, limit=100, project="p")
    assert len(page) == 5
    events = await store.events()
    assert sorted(e.batch_id for e in events) == sorted(b.id for b in page)


async def test_enqueued_tokens_are_reserved_exactly_under_concurrency(store: SQLStore) -> None:
    """Twenty batches end their validation at once, each reserving 100 tokens of a limit of
    550: five go in_progress, fifteen are refused, and the refused ones changed nothing."""
    ids = []
    for i in range(20):
        record = BatchRecord(
            id=f"batch_{i:032x}",
            endpoint=CHAT,
            input_file_id="file-x",
            completion_window="24h",
            status="validating",
            created_at=1,
            project="p",
        )
        await lifecycle.create(store, record, admission=None)
        ids.append(record.id)
    quota = lifecycle.TokenQuota("m", 550, 100)

    async def accept(batch_id: str) -> str:
        try:
            await lifecycle.transition(
                store,
                batch_id,
                "in_progress",
                expected={"validating"},
                at=2,
                quota=quota,
                model="m",
                enqueued_tokens=100,
            )
        except TokenQuotaExceeded:
            return "refused"
        return "accepted"

    outcomes = await asyncio.gather(*(accept(i) for i in ids))
    assert outcomes.count("accepted") == 5
    statuses = [(await store.get_batch(i)).status for i in ids]  # type: ignore[union-attr]
    assert statuses.count("in_progress") == 5
    assert statuses.count("validating") == 15
    # another model, or another project, has its own budget
    other = lifecycle.TokenQuota("other", 550, 100)
    refused_id = ids[statuses.index("validating")]
    moved = await lifecycle.transition(
        store, refused_id, "in_progress", expected={"validating"}, at=3, quota=other, model="other"
    )
    assert moved is not None


async def test_stored_bytes_are_admitted_exactly_under_concurrency(
    store: SQLStore, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "files")
    await storage.open()

    async def add(i: int) -> bool:
        writer = storage.writer()
        writer.write(b"x" * 100)
        blob = await writer.commit(f"file-{i:024d}")
        try:
            await add_file(
                store,
                storage,
                Ingested(blob, None),
                filename="f",
                purpose="user_data",
                project="p",
                now=10,
                expires_after=None,
                max_stored_bytes=750,
            )
        except StorageQuotaExceeded:
            return False
        return True

    outcomes = await asyncio.gather(*(add(i) for i in range(20)))
    assert sum(outcomes) == 7
    assert await store.stored_bytes("p", now=10) == 700
    # the refused files' blobs were removed: no stored bytes outlive a file never listed
    kept = sorted(p.name for p in (tmp_path / "files" / "blobs").iterdir())
    assert len(kept) == 7


async def test_checks_every_dialect_shares(store: SQLStore) -> None:
    batches, engine = service(store)
    with pytest.raises(InvalidRequest, match="Supported values") as bad_endpoint:
        await batches.create("p", NewBatch("file-x", "/v1/images"))
    assert bad_endpoint.value.param == "endpoint"
    with pytest.raises(InvalidRequest) as bad_window:
        await batches.create("p", NewBatch("file-x", CHAT, completion_window="1h"))
    assert bad_window.value.param == "completion_window"
    too_many = {f"k{i}": "v" for i in range(17)}
    with pytest.raises(InvalidRequest) as bad_metadata:
        await batches.create("p", NewBatch("file-x", CHAT, metadata=too_many))
    assert bad_metadata.value.code == "object_above_max_size"
    with pytest.raises(InvalidRequest) as long_value:
        await batches.create("p", NewBatch("file-x", CHAT, metadata={"k": "v" * 513}))
    assert long_value.value.param == "metadata.k"
    assert engine.created == []
    created = await batches.create("p", NewBatch("file-x", "/chat/completions", deadline=False))
    assert created.expires_at is None  # an offline run has no deadline
    # another project's batch is missing, whatever the call
    with pytest.raises(NotFound):
        await batches.get("q", created.id)
    with pytest.raises(NotFound):
        await batches.cancel("q", created.id)
    with pytest.raises(InvalidRequest, match="Invalid 'after'"):
        await batches.list("q", after=created.id, limit=10)
    cancelling = await batches.cancel("p", created.id)
    assert cancelling.status == "cancelling"
    assert engine.cancelled == [created.id]
    assert (await batches.cancel("p", created.id)).status == "cancelling"  # idempotent
    assert engine.cancelled == [created.id]
    await lifecycle.transition(store, created.id, "cancelled", expected={"cancelling"}, at=1)
    finished = await batches.create("p", NewBatch("file-x", CHAT))
    await lifecycle.transition(store, finished.id, "failed", expected={"validating"}, at=1)
    with pytest.raises(Conflict, match="status 'failed'"):
        await batches.cancel("p", finished.id)


async def test_uploaded_files_record_their_blob_once(store: SQLStore, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")
    await storage.open()
    blob = BlobInfo("file-" + "a" * 24, 3, "0" * 64)
    await add_file(
        store,
        storage,
        Ingested(blob, None),
        filename="f",
        purpose="batch",
        project="p",
        now=10,
        expires_after=3600,
    )
    found = await store.get_file(blob.key, now=11, project="p")
    assert found is not None
    assert (found.expires_at, found.purpose, found.project) == (3610, "batch", "p")
