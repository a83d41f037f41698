"""Blob storage (atomic, hashed writes), each backend where the protocol is tested (the
``storage`` fixture: a directory and an S3 bucket, see ``tests/s3.py``), and the data-directory
lock."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from pathlib import Path

import obstore
import pytest

from batchd.errors import DataDirLocked, StorageFull
from batchd.lock import DataDirLock
from batchd.storage import BlobTooLarge, LocalStorage, Storage
from batchd.storage.s3 import S3Storage

pytestmark = pytest.mark.anyio


def stored(storage: Storage) -> list[str]:
    """Every name the storage holds, partial writes included."""
    if isinstance(storage, LocalStorage):
        return sorted(p.name for d in (storage.tmp_dir, storage.blob_dir) for p in d.iterdir())
    assert isinstance(storage, S3Storage)
    return sorted(meta["path"] for batch in obstore.list(storage.store) for meta in batch)


async def test_write_commit_read(storage: Storage) -> None:
    writer = storage.writer(max_bytes=100)
    writer.write(b"hello ")
    writer.write(b"world")
    assert not await storage.exists("file-abc")
    info = await writer.commit("file-abc")
    assert (info.size, info.sha256) == (11, hashlib.sha256(b"hello world").hexdigest())
    chunks = [c async for c in storage.read_chunks("file-abc", chunk_size=4)]
    assert chunks == [b"hell", b"o wo", b"rld"]
    assert stored(storage) == ["file-abc"]
    await writer.abort()  # nothing once committed
    assert await storage.exists("file-abc")
    await storage.delete("file-abc")
    assert not await storage.exists("file-abc")
    await storage.delete("file-abc")  # deleting a missing blob is no error
    assert stored(storage) == []


async def test_limit_and_abort_leave_nothing(storage: Storage) -> None:
    writer = storage.writer(max_bytes=4)
    writer.write(b"1234")
    with pytest.raises(BlobTooLarge):
        writer.write(b"5")
    await writer.abort()
    assert stored(storage) == []
    with pytest.raises(RuntimeError, match="after commit or abort"):
        await writer.commit("file-never")
    assert not await storage.exists("file-never")


async def test_missing_blobs_are_file_not_found(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.open_binary("file-missing")
    with pytest.raises(FileNotFoundError):
        [c async for c in storage.read_chunks("file-missing")]
    assert not await storage.exists("file-missing")


async def test_open_binary_seeks_and_reads(storage: Storage) -> None:
    data = bytes(range(256)) * 40 + b"line one\nline two\n"
    writer = storage.writer()
    writer.write(data)
    await writer.commit("file-bin")
    with storage.open_binary("file-bin") as fh:
        assert fh.seekable()
        assert fh.seek(0, 2) == len(data)
        fh.seek(1000)
        assert fh.read(10) == data[1000:1010]
        assert fh.tell() == 1010
        fh.seek(-5, 1)
        assert fh.read(5) == data[1005:1010]
        fh.seek(len(data) - 18)
        assert fh.readline() == b"line one\n"
        assert list(fh) == [b"line two\n"]
        assert fh.read(10) == b""
        fh.seek(0)
        assert fh.read() == data


@pytest.mark.parametrize("key", ["../etc", "a/b", "", ".", "..", "x" * 129, "a b", "é"])
async def test_keys_are_checked_alike(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        await storage.exists(key)
    writer = storage.writer()
    writer.write(b"x")
    with pytest.raises(ValueError, match="invalid blob key"):
        await writer.commit(key)
    await writer.abort()
    assert stored(storage) == []


async def test_open_removes_partial_writes(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "123-abc.part").write_bytes(b"partial")
    await LocalStorage(tmp_path).open()
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("key", ["../etc", "a/b", "", ".", "x" * 200])
def test_keys_cannot_escape(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        LocalStorage(tmp_path).path(key)


def test_lock_excludes_other_processes(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path)
    lock.acquire()
    try:
        code = (
            "import sys; from pathlib import Path; from batchd.lock import DataDirLock\n"
            "from batchd.errors import DataDirLocked\n"
            "try:\n    DataDirLock(Path(sys.argv[1])).acquire()\n"
            "except DataDirLocked as e:\n    print(e); sys.exit(3)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False
        )
        assert out.returncode == 3
        assert str(tmp_path) in out.stdout
        assert "already serving" in out.stdout
    finally:
        lock.release()
    # Released: another holder can take it now.
    other = DataDirLock(tmp_path)
    other.acquire()
    other.release()


def test_lock_is_reentrant_per_object_only(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    first.acquire()
    first.acquire()  # no-op for the holder
    assert first.held
    with pytest.raises(DataDirLocked):
        DataDirLock(tmp_path).acquire()
    first.release()


async def test_background_writer_matches_and_reports_disk_errors(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    await storage.open()
    chunks = [bytes([i]) * (1000 + i) for i in range(100)]
    writer = storage.writer(background=True)
    for chunk in chunks:
        writer.write(chunk)
    info = await writer.commit("file-bg")
    assert info.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert (tmp_path / "blobs" / "file-bg").read_bytes() == b"".join(chunks)
    for background in (False, True):  # an output file: the same bytes, no hash
        plain = storage.writer(background=background, digest=False)
        for chunk in chunks:
            plain.write(chunk)
        info = await plain.commit(f"file-plain-{background}")
        assert (info.size, info.sha256) == (sum(map(len, chunks)), "")
        assert (tmp_path / "blobs" / info.key).read_bytes() == b"".join(chunks)

    failing = storage.writer(background=True)

    def broken_store(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    failing._store = broken_store  # type: ignore[method-assign]
    failing.write(b"x")  # queued: the writer thread meets the error
    for _ in range(500):
        if failing._error is not None:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(StorageFull, match="no space left"):
        failing.write(b"y")  # the next write says so, instead of streaming on
    with pytest.raises(StorageFull, match="No space left on device"):
        await failing.commit("file-never")
    assert not await storage.exists("file-never")
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_background_writer_limit_is_checked_before_queueing(storage: Storage) -> None:
    writer = storage.writer(max_bytes=10, background=True)
    writer.write(b"0123456789")
    with pytest.raises(BlobTooLarge):
        writer.write(b"!")
    await writer.abort()
    assert stored(storage) == []
