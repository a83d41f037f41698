"""The request index: built by validation in the pass that checks the file (stored, or while it
uploads in chunks of any size), read back entry for entry as a plain parse of the file sees it;
memory bounded whatever the number of requests; the runner reads bodies by offset, rebuilds a
missing or damaged index, and cancels from the index alone (the input is not read again)."""

from __future__ import annotations

import asyncio
import io
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from batchd.config import Settings
from batchd.core.request_index import (
    RequestIndex,
    RequestIndexError,
    RequestIndexWriter,
    index_key,
)
from batchd.engine import BatchManager
from batchd.service import BatchService
from batchd.storage import LocalStorage
from batchd.store import SQLStore
from batchd.validation import BOM, UploadValidator, index_stream, validate_stream
from tests.test_engine import ScriptedProvider, env, file_lines, line, run_batch
from tests.test_manager import MODEL, wait_status

CHAT = "/v1/chat/completions"
MODELS = frozenset({MODEL})
Env = tuple[SQLStore, LocalStorage, Settings]
__all__ = ["env"]  # the engine tests' fixture, used here too


def messy_file(count: int, seed: int = 1) -> bytes:
    """Valid requests with everything a plain ``split`` gets wrong: a BOM, CRLF and LF ends,
    blank and whitespace lines, non-ASCII and long custom_ids, no final newline."""
    rng = random.Random(seed)
    parts = [BOM]
    for i in range(count):
        custom_id = rng.choice([f"r{i}", f"é-{i}-✓", f"{i}-" + "x" * rng.randint(0, 3000)])
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"q{i} " * i}]}
        record = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}
        parts.append(orjson.dumps(record))
        parts.append(rng.choice([b"\n", b"\r\n", b"\n\n", b"\n  \r\n"]))
    data = b"".join(parts)
    return data.rstrip(b"\r\n ") if seed % 2 else data


def plain_parse(data: bytes) -> list[tuple[int, int, str, str]]:
    """``(offset, length, custom_id, model)`` of each request, the slow obvious way."""
    out = []
    position = 0
    for raw in data.split(b"\n"):
        start, content = position, raw
        position += len(raw) + 1
        if start == 0 and content.startswith(BOM):
            start, content = start + len(BOM), content[len(BOM) :]
        content = content.removesuffix(b"\r")
        if not content.strip():
            continue
        request = orjson.loads(content)
        out.append((start, len(content), request["custom_id"], request["body"]["model"]))
    return out


def entries(index_bytes: bytes) -> list[tuple[int, int, str, str]]:
    index = RequestIndex(io.BytesIO(index_bytes))
    found = list(index.entries())
    assert [e.index for e in found] == list(range(index.total))
    return [(e.offset, e.length, e.custom_id, e.model) for e in found]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_validation_builds_the_index_a_plain_parse_agrees_with(seed: int) -> None:
    data = messy_file(300, seed)
    sink = io.BytesIO()
    index = RequestIndexWriter(sink)
    result = validate_stream(
        io.BytesIO(data), endpoint=CHAT, models=MODELS, max_requests=1000, index=index
    )
    assert result.ok, result.errors
    assert index.finish() == result.total == 300
    expected = plain_parse(data)
    assert entries(sink.getvalue()) == expected
    for offset, length, custom_id, _model in expected:  # each line, read by offset
        assert orjson.loads(data[offset : offset + length])["custom_id"] == custom_id
    # the fallback builder (no checks) writes the same bytes
    again = io.BytesIO()
    index_stream(io.BytesIO(data), RequestIndexWriter(again), max_line_bytes=1 << 20)
    assert again.getvalue() == sink.getvalue()


@pytest.mark.parametrize("chunk", [1, 7, 333, 1 << 20])
def test_the_upload_validator_indexes_the_same_in_chunks_of_any_size(chunk: int) -> None:
    data = messy_file(120, 2)
    sink = io.BytesIO()
    writer = RequestIndexWriter(sink)
    validator = UploadValidator(
        models=MODELS, max_requests=1000, max_errors=10, max_line_bytes=1 << 20, index=writer
    )
    for start in range(0, len(data), chunk):
        validator.feed(data[start : start + chunk])
    finished = validator.finish()
    assert finished is not None
    assert finished[1].ok
    writer.finish()
    assert entries(sink.getvalue()) == plain_parse(data)


def test_a_file_with_an_error_adds_nothing_after_it() -> None:
    good = b"".join(line(i) for i in range(3))
    sink = io.BytesIO()
    index = RequestIndexWriter(sink)
    result = validate_stream(
        io.BytesIO(good + b"{not json}\n" + line(3)),
        endpoint=CHAT,
        models=MODELS,
        max_requests=10,
        index=index,
    )
    assert not result.ok
    assert index.total == 3  # the index of a failed file is thrown away by its caller


def test_damaged_indexes_are_refused() -> None:
    sink = io.BytesIO()
    writer = RequestIndexWriter(sink)
    writer.add(0, 10, "a", MODEL)
    writer.add(11, 10, "b", MODEL)
    writer.finish()
    whole = sink.getvalue()
    for damaged in (b"", whole[:5], whole[:-1], b"x" + whole[1:-8] + b"NOTMAGIC"):
        with pytest.raises(RequestIndexError):
            list(RequestIndex(io.BytesIO(damaged)).entries())
    cut = whole[:3] + whole[20:]  # the footer intact, the entries not
    with pytest.raises(RequestIndexError):
        list(RequestIndex(io.BytesIO(cut)).entries())


_MILLION = """
import resource, sys
from batchd.core.request_index import RequestIndex, RequestIndexWriter

def peak() -> int:  # bytes (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

count, path = 1_000_000, sys.argv[1]
before = peak()
with open(path, "wb") as fh:
    writer = RequestIndexWriter(fh)
    for i in range(count):
        writer.add(i * 101, 100, f"request-{i}", "m")
    writer.finish()
built = peak()
seen = 0
with open(path, "rb") as fh:
    for entry in RequestIndex(fh).entries():
        assert (entry.index, entry.offset, entry.custom_id) == (seen, seen * 101, f"request-{seen}")
        seen += 1
print(seen, built - before, peak() - before)
"""


def test_a_million_requests_are_indexed_and_read_in_bounded_memory(tmp_path: Path) -> None:
    """The bound of the issue: at most 16 bytes per request in memory while the index of a
    million requests is built (in fact a 1 MiB buffer, whatever the count), and reading it back
    streams too. Measured as the peak RSS growth of a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _MILLION, str(tmp_path / "index")],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    count, building, reading = (int(x) for x in out)
    assert count == 1_000_000
    assert building <= 16 * count
    assert building < 8 << 20  # a buffer, not a cost per request
    assert reading < 8 << 20


# -- the runner reads by the index ---------------------------------------------------------------


@pytest.mark.anyio
async def test_the_runner_reads_every_body_by_offset_in_a_messy_file(env: Env) -> None:
    data = messy_file(60, 4)
    provider = ScriptedProvider(concurrency=3, group_size=2)
    manager, batch = await run_batch(env, data, provider)
    try:
        assert batch.status == "completed"
        _store, storage, _settings = env
        output = await file_lines(storage, batch.output_file_id)
        expected = [custom_id for _o, _l, custom_id, _m in plain_parse(data)]
        assert [o["custom_id"] for o in output] == expected
        for i, result in enumerate(output):
            content = result["response"]["body"]["choices"][0]["message"]["content"]
            assert content == (f"q{i} " * i).upper()
    finally:
        await manager.stop()


@pytest.mark.anyio
@pytest.mark.parametrize("damage", ["missing", "garbled", "another file's"])
async def test_a_missing_or_damaged_index_is_built_again(env: Env, damage: str) -> None:
    store, storage, settings = env
    provider = ScriptedProvider()
    provider.gate = asyncio.Event()
    data = b"".join(line(i) for i in range(8))
    manager, batch = await run_batch(env, data, provider, statuses={"in_progress"})
    await manager.stop()
    key = index_key(batch.input_file_id)
    if damage == "missing":
        await storage.delete(key)
    else:
        writer = storage.writer()
        if damage == "garbled":
            writer.write(b"garbage")
        else:
            other = RequestIndexWriter(writer)
            other.add(0, 5, "x", MODEL)
            other.finish()
        await writer.commit(key)
    manager = BatchManager(store, storage, settings, {MODEL: ScriptedProvider()})
    await manager.start()
    try:
        done = await wait_status(store, batch.id, {"completed", "failed", "expired", "cancelled"})
        assert done.status == "completed"
        assert done.completed == 8
    finally:
        await manager.stop()
    with storage.open_binary(key) as fh:
        assert [e.custom_id for e in RequestIndex(fh).entries()] == [f"r{i}" for i in range(8)]


@pytest.mark.anyio
async def test_a_cancel_fills_the_unexecuted_from_the_index_alone(env: Env) -> None:
    """The input is gone from the disk (its reader was open before) when the batch is
    cancelled: every unexecuted request still gets its batch_cancelled line, custom_id and all,
    because finalization reads the index, never the input."""
    store, storage, settings = env
    provider = ScriptedProvider(concurrency=1)
    data = line(0) + b"".join(line(i, hold=True) for i in range(1, 6))
    manager, batch = await run_batch(env, data, provider, statuses={"in_progress"})
    try:
        await provider.wait_calls(2)
        storage.path(batch.input_file_id).unlink()
        await BatchService(store, settings, manager).cancel("default", batch.id)
        done = await wait_status(store, batch.id, {"cancelled"})
        errors = await file_lines(storage, done.error_file_id)
        assert [e["custom_id"] for e in errors] == [f"r{i}" for i in range(1, 6)]
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    finally:
        await manager.stop()


def test_storage_keys_of_indexes_are_valid_blob_keys(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.path(index_key("file-abc")).name == "file-abc.requests"
