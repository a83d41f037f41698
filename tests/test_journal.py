"""The result journal on real files: durability before acknowledgement, group commit, recovery
from torn tails and ``kill -9``, duplicates, usage, and the streamed output/error files."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchd.core.request_index import RequestIndex, RequestIndexWriter
from batchd.engine.finalize import CANCELLED, EXPIRED, write_results
from batchd.engine.journal import UNEXECUTED, Counts, Journal, JournalEntry, JournalError, Usage
from batchd.storage import LocalStorage
from batchd.validation import index_stream

CHAT_USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 4,
    "total_tokens": 14,
    "prompt_tokens_details": {"cached_tokens": 6},
    "completion_tokens_details": {"reasoning_tokens": 3},
}


def ok_entry(i: int, usage: dict[str, Any] | None = None, pad: int = 0) -> JournalEntry:
    body: dict[str, Any] = {"object": "chat.completion", "n": i, "pad": "x" * pad}
    if usage is not None:
        body["usage"] = usage
    return JournalEntry.from_response(i, f"req-{i}", 200, f"req_{i:08x}", body)


def http_error_entry(i: int, status: int = 400) -> JournalEntry:
    body = {"error": {"message": "bad", "type": "invalid_request_error", "param": None}}
    return JournalEntry.from_response(i, f"req-{i}", status, f"req_{i:08x}", body)


def error_entry(i: int) -> JournalEntry:
    return JournalEntry.from_error(i, f"req-{i}", "request_timeout", "The call timed out.")


def mixed_entry(i: int) -> JournalEntry:
    """2xx, an HTTP error or a non-HTTP error, by index."""
    if i % 5 == 0:
        return error_entry(i)
    if i % 3 == 0:
        return http_error_entry(i, 500 if i % 2 else 429)
    return ok_entry(i, CHAT_USAGE)


SYNC = "fdatasync" if hasattr(os, "fdatasync") else "fsync"  # what the journal syncs with


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the journal's data syncs, at the ``os`` level (they still happen)."""
    calls: list[int] = []
    real = getattr(os, SYNC)

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, SYNC, counting)
    return calls


def results(
    path: Path, total: int, journal: Journal | None = None
) -> tuple[list[bytes], list[bytes]]:
    """The output and error files as lists of lines, from a pass over the journal file; with
    ``journal`` (closed), also from the index it kept, which must give the same files."""
    out, err = io.BytesIO(), io.BytesIO()
    counts = write_results(path, total, out, err)
    output = out.getvalue().splitlines(keepends=True)
    errors = err.getvalue().splitlines(keepends=True)
    assert counts == (len(output), len(errors))
    if journal is not None:
        out, err = io.BytesIO(), io.BytesIO()
        assert write_results(path, total, out, err, journal.results) == counts
        assert out.getvalue().splitlines(keepends=True) == output
        assert err.getvalue().splitlines(keepends=True) == errors
    return output, errors


def done_indices(journal: Journal) -> set[int]:
    return set(range(journal.total)) - set(journal.pending())


# -- entries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "ok"), [(199, False), (200, True), (204, True), (299, True), (300, False)]
)
def test_ok_is_2xx(status: int, ok: bool) -> None:
    assert JournalEntry.from_response(0, "a", status, "req_1", {}).ok is ok
    assert not error_entry(0).ok


def test_entry_needs_exactly_one_of_response_and_error() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        JournalEntry(0, "a")
    with pytest.raises(ValueError, match="exactly one"):
        JournalEntry(0, "a", response={"status_code": 200}, error={"code": "x", "message": "y"})
    with pytest.raises(ValueError, match="status_code"):
        JournalEntry(0, "a", response={"status_code": "200"})
    with pytest.raises(ValueError, match="negative"):
        error_entry(-1)


def test_lines_are_the_output_file_lines() -> None:
    entry = ok_entry(42, CHAT_USAGE)
    assert entry.id.startswith("batch_req_")
    line = entry.output_line()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    record = orjson.loads(line)
    assert list(record) == ["id", "custom_id", "response", "error"]
    assert record["id"] == entry.id
    assert record["response"]["status_code"] == 200
    assert record["error"] is None
    assert entry.journal_line() == b"42 " + line
    assert JournalEntry.parse(entry.journal_line()) == entry
    newline = JournalEntry.from_error(1, "a\nb", "request_timeout", "line\nbreak")
    assert newline.output_line().count(b"\n") == 1
    for torn in (entry.journal_line()[:-1], b"x" + entry.journal_line(), b"\n"):
        with pytest.raises(ValueError, match=r"torn|malformed"):
            JournalEntry.parse(torn)


# -- append, close, reopen -------------------------------------------------------------------


@pytest.mark.anyio
async def test_round_trip_reopen_keeps_state_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "batch.journal"
    entries = [mixed_entry(i) for i in range(10)]
    journal = await Journal.open(path, 10, max_delay=0)
    assert (journal.counts.done, list(journal.pending())) == (0, list(range(10)))
    for entry in entries[:6]:
        assert await journal.append(entry) is True
    counts, usage = journal.counts, journal.usage
    await journal.close()
    with pytest.raises(JournalError, match="closed"):
        await journal.append(entries[6])

    async with await Journal.open(path, 10) as reopened:
        assert reopened.counts == counts
        assert (counts.completed, counts.failed) == (3, 3)
        assert reopened.usage == usage
        assert list(reopened.pending()) == [6, 7, 8, 9]
        assert all(reopened.is_done(i) for i in range(6))
        assert await reopened.append(entries[2]) is False  # durable already
        await asyncio.gather(*(reopened.append(e) for e in entries[6:]))
        assert reopened.finished

    output, errors = results(path, 10, reopened)
    assert output == [e.output_line() for e in entries if e.ok]
    assert errors == [e.output_line() for e in entries if not e.ok]


def block_syncs(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """``(gate, syncing)``: every sync sets ``syncing`` and waits until ``gate`` is set."""
    gate, syncing = threading.Event(), threading.Event()
    real = getattr(os, SYNC)

    def blocked(fd: int) -> None:
        syncing.set()
        assert gate.wait(10)
        real(fd)

    monkeypatch.setattr(os, SYNC, blocked)
    return gate, syncing


@pytest.mark.anyio
async def test_append_returns_only_after_the_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, syncing = block_syncs(monkeypatch)
    journal = await Journal.open(tmp_path / "j", 4, max_delay=0)
    task = asyncio.create_task(journal.append(ok_entry(1)))
    try:
        await asyncio.sleep(0.05)
        assert syncing.is_set()  # written, now syncing…
        assert not task.done()  # …and not acknowledged
        assert not journal.is_done(1)
        assert journal.counts.done == 0
    finally:
        gate.set()
    assert await task is True
    assert journal.is_done(1)
    assert journal.counts.done == 1
    await journal.close()


@pytest.mark.anyio
async def test_submit_many_resolves_once_the_whole_group_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One future per group (the dispatch's): it resolves after the sync of the group's last
    new entry, with every entry counted; entries durable already are left out."""
    path = tmp_path / "j"
    journal = await Journal.open(path, 40, max_delay=0, max_group=8)
    assert await journal.append(ok_entry(3)) is True
    gate, syncing = block_syncs(monkeypatch)
    future = journal.submit_many([mixed_entry(i) for i in range(20)])  # 3 is done: 19 new
    try:
        await asyncio.sleep(0.05)
        assert syncing.is_set()  # the first of 3 commits is syncing…
        assert not future.done()  # …so the group is not durable yet
        assert not journal.is_done(19)
    finally:
        gate.set()
    assert await future is True
    assert journal.counts.done == 20
    assert all(journal.is_done(i) for i in range(20))
    assert await journal.submit_many([ok_entry(1), ok_entry(2)]) is False  # nothing new
    with pytest.raises(ValueError, match="out of range"):
        journal.submit_many([ok_entry(40)])
    await journal.close()
    output, errors = results(path, 40)
    assert len(output) + len(errors) == 20


@pytest.mark.anyio
async def test_a_short_writev_is_finished_by_plain_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group is appended with ``writev``; a short one (a signal, a nearly full disk) is
    completed with ``write``, so the file holds every line once, in order."""
    real = os.writev
    calls: list[int] = []

    def short(fd: int, buffers: list[bytes]) -> int:
        calls.append(len(buffers))
        return real(fd, [b"".join(buffers)[:777]])  # part of the first line only

    monkeypatch.setattr(os, "writev", short)
    path = tmp_path / "j"
    journal = await Journal.open(path, 50, max_delay=0, max_group=50)
    entries = [mixed_entry(i) for i in range(50)]
    assert await journal.submit_many(entries) is True
    await journal.close()
    assert calls == [50]
    assert path.read_bytes() == b"".join(entry.journal_line() for entry in entries)
    output, errors = results(path, 50)
    assert len(output) + len(errors) == 50


@pytest.mark.anyio
async def test_submit_many_fails_with_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await Journal.open(tmp_path / "j", 10, max_delay=0)

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, SYNC, broken)
    with pytest.raises(JournalError, match="failed"):
        await journal.submit_many([ok_entry(i) for i in range(5)])
    assert journal.counts.done == 0
    await journal.close()


@pytest.mark.anyio
async def test_group_commit_costs_far_fewer_syncs_than_entries(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    total, workers = 2048, 256
    journal = await Journal.open(tmp_path / "j", total, max_delay=0.005)

    async def worker(w: int) -> None:
        for k in range(total // workers):
            assert await journal.append(ok_entry(w * (total // workers) + k)) is True

    await asyncio.gather(*(worker(w) for w in range(workers)))
    assert journal.finished
    await journal.close()
    assert 1 <= len(fsyncs) <= total // 32, f"{len(fsyncs)} syncs for {total} entries"


@pytest.mark.anyio
async def test_group_size_is_capped_and_does_not_wait_for_the_delay(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    journal = await Journal.open(tmp_path / "j", 100, max_delay=10.0, max_group=10)
    started = time.monotonic()
    assert all(await asyncio.gather(*(journal.append(ok_entry(i)) for i in range(100))))
    assert time.monotonic() - started < 5.0  # full groups go at once, not after max_delay
    assert len(fsyncs) == 10
    await journal.close()


@pytest.mark.anyio
async def test_close_flushes_waiting_appends(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j", 5, max_delay=10.0)
    tasks = [asyncio.create_task(journal.append(ok_entry(i))) for i in range(5)]
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in tasks)  # waiting for the group to fill
    started = time.monotonic()
    await journal.close()
    assert time.monotonic() - started < 5.0
    assert all([await t for t in tasks])
    async with await Journal.open(tmp_path / "j", 5) as reopened:
        assert reopened.finished


@pytest.mark.anyio
async def test_sync_error_fails_the_waiting_appends_uncounted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    journal = await Journal.open(path, 30, max_delay=0.01)
    await journal.append(ok_entry(0))

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(os, SYNC, broken)
        outcomes = await asyncio.gather(
            *(journal.append(ok_entry(i)) for i in range(1, 21)), return_exceptions=True
        )
    assert all(isinstance(o, JournalError) for o in outcomes), outcomes
    assert all(isinstance(o.__cause__, OSError) for o in outcomes if isinstance(o, BaseException))
    assert journal.counts.done == 1  # none of the failed ones counted
    assert not any(journal.is_done(i) for i in range(1, 21))
    assert journal.error is not None
    with pytest.raises(JournalError, match="failed"):
        await journal.append(ok_entry(25))  # the journal stays stopped
    with pytest.raises(JournalError, match="failed"):
        await journal.append_unexecuted([(26, "req-26")], CANCELLED)
    await journal.close()

    # The lines were written, only their sync failed: reopening reads what the disk holds.
    async with await Journal.open(path, 30) as reopened:
        assert reopened.counts.done == 21
        assert reopened.is_done(0)


# -- crashes ---------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(lambda line: line[: len(line) // 2], id="half-line"),
        pytest.param(lambda line: line[:-1], id="no-newline"),
        pytest.param(lambda line: b"\0" * 4096, id="zero-page"),
        pytest.param(lambda line: b"\0" * 100 + b"\n" + line, id="garbled-then-valid"),
    ],
)
async def test_torn_tail_is_cut_off_on_reopen(
    tmp_path: Path, garbage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j"
    entries = [mixed_entry(i) for i in range(15)]
    async with await Journal.open(path, 15, max_delay=0) as journal:
        for entry in entries[:10]:
            await journal.append(entry)
    clean = path.stat().st_size
    with path.open("ab") as fh:
        fh.write(garbage(ok_entry(10).journal_line()))  # a crash in the middle of a write

    async with await Journal.open(path, 15) as journal:
        assert path.stat().st_size == clean
        assert journal.counts.done == 10
        assert list(journal.pending()) == [10, 11, 12, 13, 14]
        for entry in entries[10:]:
            assert await journal.append(entry) is True
    assert "torn tail" in caplog.text

    output, errors = results(path, 15, journal)
    assert output == [e.output_line() for e in entries if e.ok]
    assert errors == [e.output_line() for e in entries if not e.ok]


@pytest.mark.anyio
async def test_duplicates_first_durable_wins(tmp_path: Path) -> None:
    path = tmp_path / "j"
    first, second = ok_entry(3, CHAT_USAGE), error_entry(3)
    other = http_error_entry(5)
    path.write_bytes(first.journal_line() + other.journal_line() + second.journal_line())

    async with await Journal.open(path, 8, max_delay=0) as journal:
        assert (journal.counts.completed, journal.counts.failed) == (1, 1)
        assert journal.usage == Usage.of_body({"usage": CHAT_USAGE})
        assert await journal.append(error_entry(3)) is False
        # Two appends of one index in the same group: the first one is written.
        a, b = error_entry(1), ok_entry(1)
        assert list(await asyncio.gather(journal.append(a), journal.append(b))) == [True, False]
        assert journal.counts.done == 3

    assert path.read_bytes().count(b'"custom_id":"req-1"') == 1
    output, errors = results(path, 8, journal)
    assert output == [first.output_line()]
    assert errors == [a.output_line(), other.output_line()]


CHILD = r"""
import asyncio, sys
from pathlib import Path
from batchd.engine.journal import Journal, JournalEntry

def entry(i):
    if i % 11 == 0:
        return JournalEntry.from_error(i, f"req-{i}", "request_timeout", "timed out")
    body = {"pad": "x" * (i * 7919 % 20000), "usage": {"prompt_tokens": 2, "completion_tokens": 1}}
    return JournalEntry.from_response(i, f"req-{i}", 500 if i % 7 == 0 else 200, "req_1", body)

async def main(path, total):
    journal = await Journal.open(Path(path), total, max_delay=0.001, max_group=32)
    todo = iter(list(journal.pending()))
    async def worker():
        for i in todo:
            print("sent", i, flush=True)
            assert await journal.append(entry(i))
            print("ack", i, flush=True)
    await asyncio.gather(*(worker() for _ in range(64)))
    await journal.close()
    print("closed", flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def run_child(
    path: Path, total: int, kill_after: int | None, rng: random.Random
) -> tuple[set[int], set[int], bool]:
    """Run the child until ``kill_after`` acknowledgements, then ``kill -9`` it.

    Returns the indices it sent, those it acknowledged, and whether it closed the journal.
    """
    with (
        (path.parent / "child.stderr").open("ab") as stderr,
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(total)],
            stdout=subprocess.PIPE,
            stderr=stderr,
        ) as proc,
    ):
        watchdog = threading.Timer(120, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            lines: list[bytes] = []
            acks = 0
            for raw in proc.stdout:
                lines.append(raw)
                if raw.startswith(b"ack") and raw.endswith(b"\n"):
                    acks += 1
                    if kill_after is not None and acks >= kill_after:
                        time.sleep(rng.uniform(0, 0.005))
                        proc.send_signal(signal.SIGKILL)
                        break
            lines.extend(proc.stdout.read().splitlines(keepends=True))
            code = proc.wait()
        finally:
            watchdog.cancel()
    complete = [line.split() for line in lines if line.endswith(b"\n")]
    sent = {int(words[1]) for words in complete if words[0] == b"sent"}
    acked = {int(words[1]) for words in complete if words[0] == b"ack"}
    closed = [b"closed"] in complete
    assert closed == (code == 0), (code, (path.parent / "child.stderr").read_text())
    return sent, acked, closed


def reopen_done(path: Path, total: int) -> set[int]:
    async def load() -> set[int]:
        async with await Journal.open(path, total) as journal:
            done = done_indices(journal)
            assert journal.counts.done == len(done)
            return done

    return asyncio.run(load())


def test_kill_9_at_random_moments_loses_no_acknowledged_result(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    path, total = tmp_path / "j", 3000
    done: set[int] = set()
    for _round in range(4):
        sent, acked, closed = run_child(path, total, rng.randint(1, 400), rng)
        assert not closed, f"seed {seed}: the child finished before it was killed"
        assert not sent & done, f"seed {seed}: durable results sent again: {sent & done}"
        now = reopen_done(path, total)
        assert acked <= now, f"seed {seed}: acknowledged but lost: {acked - now}"
        assert done <= now, f"seed {seed}: a durable result disappeared"
        done = now

    sent, acked, closed = run_child(path, total, None, rng)
    assert closed
    assert not sent & done
    assert acked == sent
    assert reopen_done(path, total) == set(range(total))
    output, errors = results(path, total)
    assert len(output) + len(errors) == total
    custom_ids = [orjson.loads(line)["custom_id"] for line in output + errors]
    assert len(set(custom_ids)) == total
    for lines in (output, errors):
        indices = [int(orjson.loads(line)["custom_id"][4:]) for line in lines]
        assert indices == sorted(indices)
    assert all(orjson.loads(line)["response"]["status_code"] == 200 for line in output)


# -- usage -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_usage_sums_successful_entries_across_endpoints(tmp_path: Path) -> None:
    responses_usage = {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 64},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 8},
        "total_tokens": 120,
    }
    entries = [
        ok_entry(0, CHAT_USAGE),
        ok_entry(1, {**CHAT_USAGE, "prompt_tokens_details": None}),  # null details: 0 cached
        ok_entry(2, responses_usage),
        ok_entry(3, {"prompt_tokens": 7, "total_tokens": 7}),  # embeddings: output 0
        ok_entry(4),  # no usage (moderations)
        ok_entry(5, {"prompt_tokens": True, "completion_tokens": -3}),  # nonsense counts 0
        JournalEntry.from_response(6, "c", 400, "r", {"usage": CHAT_USAGE}),  # failed: not counted
        error_entry(7),
        # an Anthropic Message: its input_tokens leave out the prompt cache's reads and writes
        ok_entry(
            8,
            {
                "input_tokens": 5,
                "cache_read_input_tokens": 30,
                "cache_creation_input_tokens": 2,
                "output_tokens": 9,
            },
        ),
    ]
    expected = {
        "input_tokens": 10 + 10 + 100 + 7 + 37,
        "input_tokens_details": {"cached_tokens": 6 + 64 + 30},
        "output_tokens": 4 + 4 + 20 + 9,
        "output_tokens_details": {"reasoning_tokens": 3 + 3 + 8},
        "total_tokens": 127 + 28 + 46,
    }
    path = tmp_path / "j"
    async with await Journal.open(path, 9, max_delay=0) as journal:
        assert journal.usage.to_json()["total_tokens"] == 0
        await asyncio.gather(*(journal.append(e) for e in entries))
        assert journal.usage.to_json() == expected
        assert (journal.counts.completed, journal.counts.failed) == (7, 2)
    async with await Journal.open(path, 9) as reopened:
        assert reopened.usage.to_json() == expected


# -- cancel / expiry -------------------------------------------------------------------------


def request_ids(raw: bytes) -> list[tuple[int, str]]:
    """``(index, custom_id)`` of an input file's requests, from its request index."""
    sink = io.BytesIO()
    index_stream(io.BytesIO(raw), RequestIndexWriter(sink), max_line_bytes=1000)
    return [(e.index, e.custom_id) for e in RequestIndex(sink).entries()]


@pytest.mark.anyio
async def test_append_unexecuted_fills_every_pending_request_in_one_sync(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    # Blank lines do not count: request i is the i-th non-blank line.
    lines = [b'{"custom_id": "c%d", "body": {"model": "m"}}' % i for i in range(12)]
    raw = b"\r\n".join(lines[:3]) + b"\n\n  \n" + b"\n".join(lines[3:]) + b"\n\n"
    assert list(request_ids(raw)) == [(i, f"c{i}") for i in range(12)]

    path = tmp_path / "j"
    journal = await Journal.open(path, 12, max_delay=10.0)
    await journal.append_unexecuted([], CANCELLED)
    assert journal.counts.done == 0
    early = [JournalEntry.from_response(i, f"c{i}", 200, "r", {}) for i in (1, 4)]
    waiting = [asyncio.create_task(journal.append(e)) for e in early]
    await asyncio.sleep(0)  # queued, waiting for their group (max_delay is long)
    fsyncs.clear()
    filled = await journal.append_unexecuted(request_ids(raw), CANCELLED)
    assert filled == 10
    assert [await t for t in waiting] == [True, True]  # appended first, so they win
    assert len(fsyncs) == 2  # one for the group, one for the whole fill
    assert journal.finished
    assert (journal.counts.completed, journal.counts.failed) == (2, 10)
    assert journal.counts.unexecuted == 10
    late = JournalEntry.from_response(5, "c5", 200, "r", {})
    assert await journal.append(late) is False  # an in-flight request that finished late
    await journal.close()

    output, errors = results(path, 12, journal)
    assert output == [e.output_line() for e in early]
    records = [orjson.loads(line) for line in errors]
    assert [r["custom_id"] for r in records] == [f"c{i}" for i in range(12) if i not in (1, 4)]
    assert {r["error"]["code"] for r in records} == {"batch_cancelled"}
    assert all(r["response"] is None and r["id"].startswith("batch_req_") for r in records)


@pytest.mark.anyio
async def test_requests_that_never_ran_are_counted_again_on_reopen(tmp_path: Path) -> None:
    """A crash between the fill and the batch's end: the reopened journal still knows how many
    of its failed requests never ran (Anthropic's canceled and expired counts)."""
    assert {CANCELLED[0], EXPIRED[0]} == UNEXECUTED
    path = tmp_path / "j"
    async with await Journal.open(path, 6) as journal:
        await journal.append(JournalEntry.from_response(0, "c0", 200, "r", {}))
        await journal.append(JournalEntry.from_response(1, "c1", 500, "r", {"error": {}}))
        await journal.append(JournalEntry.from_error(2, "c2", "request_timeout", "slow"))
        filled = await journal.append_unexecuted([(i, f"c{i}") for i in range(6)], EXPIRED)
    assert filled == 3
    async with await Journal.open(path, 6) as reopened:
        assert reopened.counts == Counts(6, 1, 5, 3)


# -- guards ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_writer_and_no_reader_while_open(tmp_path: Path) -> None:
    path = tmp_path / "j"
    async with await Journal.open(path, 3) as journal:
        with pytest.raises(JournalError, match="already open"):
            await Journal.open(path, 3)
        with pytest.raises(JournalError, match="still open"):
            write_results(path, 3, io.BytesIO(), io.BytesIO())
        with pytest.raises(ValueError, match="out of range"):
            await journal.append(ok_entry(3))
        entry = ok_entry(2)
        await journal.append(entry)
    assert results(path, 3) == ([entry.output_line()], [])
    with pytest.raises(JournalError, match="request index 2"):
        await Journal.open(path, 2)  # a journal of another batch size


# -- write_results ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_write_results_refuses_a_journal_cut_short_after_its_index(tmp_path: Path) -> None:
    path = tmp_path / "j"
    async with await Journal.open(path, 4, max_delay=0) as journal:
        for i in range(4):
            await journal.append(ok_entry(i))
    os.truncate(path, path.stat().st_size - 10)
    with pytest.raises(JournalError, match="changed"):
        write_results(path, 4, io.BytesIO(), io.BytesIO(), journal.results)


@pytest.mark.anyio
async def test_write_results_in_input_order_for_any_completion_order(tmp_path: Path) -> None:
    total = 300
    entries = {i: mixed_entry(i) for i in range(total) if i != 7}  # 7 never ran
    order = list(entries)
    random.Random(1).shuffle(order)
    path = tmp_path / "j"
    async with await Journal.open(path, total, max_delay=0.001, max_group=16) as journal:
        await asyncio.gather(*(journal.append(entries[i]) for i in order))
        assert list(journal.pending()) == [7]

    storage = LocalStorage(tmp_path / "files")
    await storage.open()
    output_writer, error_writer = storage.writer(), storage.writer()
    counts = write_results(path, total, output_writer, error_writer, journal.results)
    await output_writer.commit("out")
    await error_writer.commit("err")
    output = storage.path("out").read_bytes().splitlines(keepends=True)
    errors = storage.path("err").read_bytes().splitlines(keepends=True)
    ordered = [entries[i] for i in sorted(entries)]
    assert output == [e.output_line() for e in ordered if e.ok]
    assert errors == [e.output_line() for e in ordered if not e.ok]
    assert counts == (len(output), len(errors))
    assert len(output) + len(errors) == total - 1


def big_journal(path: Path, total: int) -> None:
    """A journal of ``total`` tiny entries in shuffled order (every tenth one failed)."""
    order = list(range(total))
    random.Random(total).shuffle(order)
    with path.open("wb", buffering=1 << 20) as fh:
        for i in order:
            if i % 10 == 0:
                entry = JournalEntry.from_error(i, f"r{i}", "batch_expired", "expired")
            else:
                entry = JournalEntry.from_response(i, f"r{i}", 200, "q", {"i": i})
            fh.write(entry.journal_line())


def check_memory_bounded(tmp_path: Path, total: int) -> None:
    path = tmp_path / "j"
    big_journal(path, total)
    size = path.stat().st_size
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        tracemalloc.start()
        try:
            counts = write_results(path, total, out, err)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert counts == (total - total // 10, total // 10)
    # 13 bytes per request of index, a few 1 MiB buffers; far below the journal's size.
    assert peak < 16 * total + 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert peak < size / 2, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB journal"
    assert peak < 64 * 2**20
    for file, failed in ((out_path, False), (err_path, True)):
        with file.open("rb") as fh:
            indices = [int(orjson.loads(line)["custom_id"][1:]) for line in fh]
        assert indices == sorted(indices)
        assert {i % 10 == 0 for i in indices} == {failed}


def test_write_results_memory_is_bounded_100k(tmp_path: Path) -> None:
    check_memory_bounded(tmp_path, 100_000)


@pytest.mark.slow
def test_write_results_memory_is_bounded_1m(tmp_path: Path) -> None:
    check_memory_bounded(tmp_path, 1_000_000)
