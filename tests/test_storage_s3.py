"""S3 blob storage against a real S3 server (SeaweedFS, see ``tests/s3.py``).

- Blobs round-trip, small (one PUT) and larger than a part (a multipart upload, copied under its
  key at commit), with their SHA-256 and size, and nothing but the blob left in the bucket.
- An abort throws the partial upload away, in the bucket too (no multipart upload left).
- ``open_binary`` reads the same bytes as LocalStorage's reader, for random seeks and reads,
  and never a mix of two versions of a blob replaced meanwhile.
- Prefixes isolate: two storages in one bucket see their own blobs only.
- A bucket that does not answer is a StorageUnreachable within seconds, for every operation
  (a connection refused, an upload cut in the middle, a server that never answers), and the
  same storage works again once the bucket answers; a bucket that refuses (credentials, a
  missing bucket) is a StorageFault that says so.
- The settings: ``storage_url`` is checked, and ``open_storage`` picks the backend.
"""

from __future__ import annotations

import hashlib
import random
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import anyio.to_thread
import obstore
import pytest

from batchd.config import Settings
from batchd.errors import ConfigError, StorageFault, StorageUnreachable
from batchd.storage import BlobTooLarge, LocalStorage, open_storage
from batchd.storage import s3 as s3_module
from batchd.storage.s3 import PART_SIZE, S3Storage, parse_s3_url
from tests.s3 import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, Gate, SeaweedS3
from tests.serverproc import free_port

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
FAST = 5.0  # seconds: an unreachable bucket must fail within this, not hang


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


@pytest.fixture
async def s3(s3_server: SeaweedS3) -> S3Storage:
    storage = s3_server.storage()
    await storage.open()
    return storage


@pytest.fixture
def gate(s3_server: SeaweedS3) -> Iterator[Gate]:
    """The S3 server behind a forwarder the test can close."""
    forwarder = Gate(int(s3_server.endpoint.rsplit(":", 1)[1])).open()
    yield forwarder
    forwarder.close()


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "background"),
    [
        (0, False),
        (1, True),
        (PART_SIZE, False),  # the largest single PUT
        (PART_SIZE + 1, True),  # the smallest multipart upload
        (20 * MiB + 12345, False),
        (20 * MiB + 12345, True),
    ],
)
async def test_round_trip(s3_server: SeaweedS3, s3: S3Storage, size: int, background: bool) -> None:
    data = blob(size, seed=size)
    writer = s3.writer(max_bytes=size, background=background)
    for piece in chunks_of(data, 64 * 1024 + 7):
        writer.write(piece)
    assert writer.size == size
    info = await writer.commit("file-rt")
    assert (info.key, info.size, info.sha256) == ("file-rt", size, hashlib.sha256(data).hexdigest())
    assert await s3.exists("file-rt")
    assert b"".join([c async for c in s3.read_chunks("file-rt", chunk_size=MiB)]) == data
    with s3.open_binary("file-rt") as fh:
        assert fh.read() == data
    assert s3_server.objects(s3.prefix) == [f"{s3.prefix}/file-rt"]  # no partial object left
    assert s3_server.multipart_uploads(s3.prefix) == []


async def test_commit_sync_from_a_thread_and_many_small_writes(s3: S3Storage) -> None:
    lines = [b'{"custom_id": "r%06d"}\n' % i for i in range(200_000)]  # ~4.6 MB in small writes
    writer = s3.writer()
    for line in lines:
        writer.write(line)
    info = await anyio.to_thread.run_sync(writer.commit_sync, "file-lines")
    data = b"".join(lines)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    writer.abort_sync()  # nothing once committed
    with s3.open_binary("file-lines") as fh:
        assert fh.read() == data
    plain = s3.writer(digest=False)  # an output file: the same bytes, no hash
    plain.write(data)
    info = await anyio.to_thread.run_sync(plain.commit_sync, "file-plain")
    assert (info.size, info.sha256) == (len(data), "")
    with s3.open_binary("file-plain") as fh:
        assert fh.read() == data


async def test_abort_of_a_multipart_upload_leaves_nothing(
    s3_server: SeaweedS3, s3: S3Storage
) -> None:
    for background in (False, True):
        writer = s3.writer(background=background)
        for piece in chunks_of(blob(20 * MiB), MiB):
            writer.write(piece)
        assert s3_server.multipart_uploads(s3.prefix)  # streaming already
        await writer.abort()
        await writer.abort()
        assert s3_server.objects(s3.prefix) == []
        assert s3_server.multipart_uploads(s3.prefix) == []
        with pytest.raises(RuntimeError, match="write after commit or abort"):
            writer.write(b"more")


async def test_too_large_past_a_part(s3_server: SeaweedS3, s3: S3Storage) -> None:
    writer = s3.writer(max_bytes=10 * MiB)
    writer.write(blob(9 * MiB))
    with pytest.raises(BlobTooLarge):
        writer.write(blob(2 * MiB))
    writer.abort_sync()
    assert s3_server.objects(s3.prefix) == []
    assert s3_server.multipart_uploads(s3.prefix) == []


async def test_open_binary_matches_local_storage(tmp_path: Path, s3: S3Storage) -> None:
    data = blob(3 * PART_SIZE + 4321, seed=7)
    local = LocalStorage(tmp_path / "files")
    await local.open()
    for storage in (local, s3):
        writer = storage.writer()
        for piece in chunks_of(data, 3 * MiB):
            writer.write(piece)
        await writer.commit("file-seek")
    rng = random.Random(42)
    with local.open_binary("file-seek") as expected, s3.open_binary("file-seek") as got:
        for _ in range(300):
            offset = rng.randrange(0, len(data) + 10)
            size = rng.choice([0, 1, 17, 4096, 100_000, MiB, 5 * MiB])
            whence = rng.choice([0, 0, 1, 2])
            if whence == 1:
                offset -= got.tell()
            elif whence == 2:
                offset -= len(data)
            assert got.seek(offset, whence) == expected.seek(offset, whence)
            assert got.read(size) == expected.read(size)
            assert got.tell() == expected.tell()
        got.seek(0)
        sequential = [got.read(MiB // 3) for _ in range(40)]  # the read-ahead grows
        assert b"".join(sequential) == data[: 40 * (MiB // 3)]


async def test_delete_exists_and_missing_keys(s3_server: SeaweedS3, s3: S3Storage) -> None:
    writer = s3.writer()
    writer.write(b"x" * 100)
    await writer.commit("file-d")
    assert await s3.exists("file-d")
    await s3.delete("file-d")
    assert not await s3.exists("file-d")
    await s3.delete("file-d")
    with pytest.raises(FileNotFoundError, match="file-d"):
        s3.open_binary("file-d")
    with pytest.raises(FileNotFoundError):
        [c async for c in s3.read_chunks("file-d")]
    assert s3_server.objects(s3.prefix) == []


async def test_prefixes_isolate(s3_server: SeaweedS3) -> None:
    first, second = s3_server.storage("iso/one"), s3_server.storage("iso/two")
    for storage, content in ((first, b"one"), (second, b"two")):
        await storage.open()
        writer = storage.writer()
        writer.write(content)
        await writer.commit("file-same")
    with first.open_binary("file-same") as fh:
        assert fh.read() == b"one"
    with second.open_binary("file-same") as fh:
        assert fh.read() == b"two"
    await first.delete("file-same")
    assert not await first.exists("file-same")
    assert await second.exists("file-same")
    assert s3_server.objects("iso") == ["iso/two/file-same"]


async def test_open_removes_stale_partial_objects(
    s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = s3_server.storage("stale")
    obstore.put(storage.store, ".partial/left-by-a-crash", b"partial")
    await storage.open()  # an hour old at least: kept
    assert s3_server.objects("stale") == ["stale/.partial/left-by-a-crash"]
    monkeypatch.setattr(s3_module, "_STALE_PARTIAL", timedelta(0))
    await storage.open()
    assert s3_server.objects("stale") == []


def test_probe(s3_server: SeaweedS3) -> None:
    storage = s3_server.storage("probe")
    storage.probe()
    assert s3_server.objects("probe") == []


# -- faults ------------------------------------------------------------------------------------


def _within(seconds: float) -> float:
    return time.monotonic() + seconds


async def test_unreachable_bucket_is_a_fault_fast_and_heals(gate: Gate) -> None:
    storage = _behind(gate)
    await storage.open()
    kept = blob(3 * MiB)
    writer = storage.writer()
    writer.write(kept)
    await writer.commit("file-kept")
    reader = storage.open_binary("file-kept")
    assert reader.read(100) == kept[:100]  # the rest is not read yet

    gate.close()
    started = time.monotonic()
    with pytest.raises(StorageUnreachable, match="cannot be reached") as caught:
        await storage.open()
    assert time.monotonic() - started < FAST
    assert gate.endpoint in str(caught.value)
    assert caught.value.reason == "storage_unreachable"
    for attempt in (
        storage.probe,
        lambda: storage.open_binary("file-kept"),
        lambda: reader.read(),
    ):
        started = time.monotonic()
        with pytest.raises(StorageUnreachable):
            attempt()
        assert time.monotonic() - started < FAST
    for coroutine in (storage.exists("file-kept"), storage.delete("file-kept")):
        with pytest.raises(StorageUnreachable):
            await coroutine
    with pytest.raises(StorageUnreachable):
        [c async for c in storage.read_chunks("file-kept")]
    small = storage.writer()
    small.write(b"not stored")
    with pytest.raises(StorageUnreachable, match="storing a file failed"):
        await small.commit("file-lost")
    await small.abort()  # nothing once the commit failed

    gate.open()  # healed: the same storage works again
    storage.probe()
    await storage.open()
    reader.seek(100)
    assert reader.read() == kept[100:]
    writer = storage.writer()
    writer.write(b"stored")
    await writer.commit("file-later")
    assert not await storage.exists("file-lost")
    with storage.open_binary("file-later") as fh:
        assert fh.read() == b"stored"


async def test_an_upload_cut_in_the_middle_is_a_fault(s3_server: SeaweedS3, gate: Gate) -> None:
    storage = _behind(gate)
    await storage.open()
    writer = storage.writer(background=True)
    data = blob(12 * MiB)
    writer.write(data[: 10 * MiB])  # a multipart upload under way
    gate.close()
    deadline = _within(3 * FAST)

    async def go_on() -> None:
        for piece in chunks_of(data[10 * MiB :] * 20, MiB):
            writer.write(piece)
            assert time.monotonic() < deadline
        await writer.commit("file-cut")

    with pytest.raises(StorageUnreachable):  # a later write says so, or the commit
        await go_on()
    assert time.monotonic() < deadline
    await writer.abort()
    gate.open()
    assert not await storage.exists("file-cut")
    assert [name for name in s3_server.objects(storage.prefix) if "file-cut" in name] == []


async def test_a_store_that_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        storage = S3Storage(
            "s3://bucket",
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key_id="k",
            secret_access_key="s",
            request_timeout=0.5,
            max_retries=1,
        )
        started = time.monotonic()
        with pytest.raises(StorageUnreachable, match="cannot be reached"):
            await storage.exists("file-x")
        assert time.monotonic() - started < FAST


async def test_a_refusing_bucket_is_a_fault_that_says_why(s3_server: SeaweedS3) -> None:
    refused = S3Storage(
        s3_server.url(),
        endpoint_url=s3_server.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key="not-the-secret",
    )
    with pytest.raises(StorageFault, match="refused batchd's credentials") as caught:
        await refused.open()
    assert not isinstance(caught.value, StorageUnreachable)
    missing = S3Storage(
        "s3://no-such-bucket",
        endpoint_url=s3_server.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )
    with pytest.raises(StorageFault, match="does not exist") as caught:
        await missing.open()
    assert not isinstance(caught.value, StorageUnreachable)


def _behind(gate: Gate) -> S3Storage:
    return S3Storage(
        f"s3://{BUCKET}/gate-{free_port()}",
        endpoint_url=gate.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        region=REGION,
    )


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://my.bucket-1/", ("my.bucket-1", "")),
        ("s3://bucket/a/b/", ("bucket", "a/b")),
    ],
)
def test_parse_s3_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("bucket", "not an s3:// URL"),
        ("https://bucket", "not an s3:// URL"),
        ("s3://", "not a valid bucket name"),
        ("s3://Bucket", "not a valid bucket name"),
        ("s3://b", "not a valid bucket name"),
        ("s3://bucket/a//b", "empty, '.' or '..' segment"),
        ("s3://bucket/../b", "empty, '.' or '..' segment"),
        ("s3://bucket?x=1", "query"),
    ],
)
def test_storage_url_is_checked(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(storage_url=url)
    with pytest.raises(ConfigError, match=message):
        S3Storage(url)


def test_open_storage_picks_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    local = open_storage(Settings.load(data_dir=tmp_path))
    assert isinstance(local, LocalStorage)
    assert local.root == tmp_path / "files"
    monkeypatch.setenv("BATCHD_STORAGE_URL", "s3://bucket/pre/fix")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    remote = open_storage(Settings.load(data_dir=tmp_path))
    assert isinstance(remote, S3Storage)
    assert (remote.bucket, remote.prefix, remote.endpoint_url) == (
        "bucket",
        "pre/fix",
        "http://127.0.0.1:9",
    )
    monkeypatch.setenv("BATCHD_STORAGE_ENDPOINT_URL", "http://127.0.0.1:10")
    assert Settings.load().storage_endpoint_url == "http://127.0.0.1:10"
    monkeypatch.setenv("BATCHD_STORAGE_ENDPOINT_URL", "ftp://x")
    with pytest.raises(ConfigError, match="not an http"):
        Settings.load()


async def test_a_blob_replaced_while_it_is_read_is_a_fault(s3: S3Storage) -> None:
    first, second = blob(3 * MiB, seed=1), blob(3 * MiB, seed=2)
    writer = s3.writer()
    writer.write(first)
    await writer.commit("file-replaced")
    with s3.open_binary("file-replaced") as reader:
        assert reader.read(10) == first[:10]  # from the first MiB, read at open
        writer = s3.writer()
        writer.write(second)
        await writer.commit("file-replaced")
        with pytest.raises(StorageFault, match="replaced while it was read"):
            reader.read()  # never a mix of the two
