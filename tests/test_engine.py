"""The execution engine in process: budgets, the upstream gate, result mapping, and the
BatchManager + Scheduler + BatchRunner on a real SQLite store, real blobs and real journals,
with a scripted provider (end-to-end tests against real upstream processes live in
``test_e2e_*``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from batchd.config import Settings
from batchd.core import lifecycle
from batchd.core.lifecycle import BatchEnding
from batchd.engine import BatchManager
from batchd.engine.journal import Journal, JournalEntry
from batchd.engine.limits import Limiters, TokenBucket, UpstreamGate, estimate_tokens
from batchd.engine.runner import entry_of
from batchd.engine.throttle import Throttle
from batchd.ids import new_file_id
from batchd.providers.base import DispatchLimits, Provider, ProviderRequest, ProviderResult
from batchd.service import BatchService
from batchd.storage import LocalStorage
from batchd.store import BatchRecord, SQLStore
from batchd.store.work import ResultRow, SharedWork
from tests.pg import fresh_database
from tests.test_manager import MODEL, new_batch, submit, upload, wait_status

pytestmark = pytest.mark.anyio

TERMINAL = {"completed", "failed", "expired", "cancelled"}


# -- budgets and the gate ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_token_bucket_starts_full_refills_per_second_and_allows_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, clock)  # 1 a second
    for _ in range(60):
        await bucket.take(1)
    assert bucket.available == pytest.approx(0)
    clock.now += 2.5
    assert bucket.available == pytest.approx(2.5)
    bucket.adjust(10)  # a response used more than estimated
    assert bucket.available == pytest.approx(-7.5)
    clock.now += 1000
    assert bucket.available == pytest.approx(60)  # never above capacity
    bucket.adjust(-5)
    assert bucket.available == pytest.approx(60)


async def test_token_bucket_waits_for_the_refill() -> None:
    bucket = TokenBucket(6000)  # 100 a second, real clock
    await bucket.take(6000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bucket.take(5)  # 50 ms of refill
    assert loop.time() - started >= 0.04
    huge = TokenBucket(60, FakeClock())
    await huge.take(10**9)  # more than a minute's budget: clamped to the capacity, not forever
    assert huge.available == pytest.approx(0)


async def test_upstream_gate_pauses_everyone_and_only_extends() -> None:
    gate = UpstreamGate("http://u/v1")
    assert gate.paused_for == 0
    gate.pause(0.1)
    gate.pause(0.01)  # a shorter pause does not shorten it
    assert gate.paused_for > 0.05
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(gate.wait(), gate.wait())
    assert loop.time() - started >= 0.09
    assert gate.paused_for == 0


def test_token_estimate_counts_the_prompt_and_the_completion_budget() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    small = estimate_tokens(body)
    assert 100 <= small <= 130
    assert estimate_tokens({**body, "max_tokens": 50}) == small + 50 + len(b',"max_tokens":50') // 4
    with_n = estimate_tokens({**body, "max_completion_tokens": 50, "n": 3})
    assert with_n >= small + 150


def test_models_of_one_upstream_share_its_gate_and_the_smallest_upstream_bound() -> None:
    limiters = Limiters(
        {
            "a": ScriptedProvider(upstream="u1", upstream_concurrency=8),
            "b": ScriptedProvider(upstream="u1", upstream_concurrency=3),
            "c": ScriptedProvider(upstream="u2"),
        }
    )
    assert limiters["a"].gate is limiters["b"].gate
    assert limiters["a"].gate is not limiters["c"].gate
    slots = limiters["a"].gate.slots
    assert slots is not None
    assert slots._value == 3  # the smallest bound set on a model of that upstream
    assert limiters["c"].gate.slots is None


# -- results as journal entries ------------------------------------------------------------------


REQUEST = ProviderRequest(3, "c-3", "/v1/chat/completions", {"model": MODEL})


def test_entries_of_results() -> None:
    ok = entry_of(REQUEST, ProviderResult.success(3, 200, {"usage": {}}, "req_up"))
    assert ok.ok
    assert ok.response == {
        "status_code": 200,
        "request_id": "req_up",
        "body": {"usage": {}},
    }

    no_id = entry_of(REQUEST, ProviderResult.success(3, 200, {}))
    assert no_id.response is not None
    assert no_id.response["request_id"].startswith("req_")

    body = {"error": {"message": "bad", "type": "invalid_request_error", "code": "x"}}
    bad = entry_of(
        REQUEST, ProviderResult.failure(3, "x", "bad", retryable=False, status_code=400, body=body)
    )
    assert not bad.ok
    assert bad.error is None
    assert bad.response is not None
    assert bad.response["status_code"] == 400
    assert bad.response["body"] == body

    timeout = entry_of(
        REQUEST, ProviderResult.failure(3, "request_timeout", "slow", retryable=True)
    )
    assert timeout.response is None
    assert timeout.error == {
        "code": "request_timeout",
        "message": "slow",
    }

    malformed = ProviderResult.failure(
        3, "invalid_upstream_response", "not JSON", retryable=True, status_code=200
    )
    entry = entry_of(REQUEST, malformed)
    assert not entry.ok
    assert entry.error is not None
    assert entry.error["code"] == "invalid_upstream_response"


# -- the engine in process -----------------------------------------------------------------------


class ScriptedProvider(Provider):
    """Answers from the request body: ``{"fail": [status, ...]}`` fails the first attempts with
    those statuses, ``{"hold": true}`` never answers; every call is recorded. ``gate`` (an Event)
    holds every request until set."""

    name: ClassVar[str] = "scripted"
    endpoints: ClassVar[frozenset[str]] = frozenset({"/v1/chat/completions"})

    def __init__(
        self,
        group_size: int = 1,
        concurrency: int = 4,
        upstream: str = "scripted",
        upstream_concurrency: int | None = None,
    ) -> None:
        super().__init__(MODEL, self.Options())
        self.group_size = group_size
        self.concurrency = concurrency
        self.upstream = upstream
        self.upstream_concurrency = upstream_concurrency
        self.in_flight = self.peak = 0
        self.calls: list[list[int]] = []
        self.attempts: dict[int, int] = {}
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def wait_calls(self, count: int) -> None:
        """Until ``count`` calls were made (15 s at most: then the test fails)."""
        try:
            async with asyncio.timeout(15):
                while len(self.calls) < count:
                    self.called.clear()
                    await self.called.wait()
        except TimeoutError:
            raise AssertionError(f"{len(self.calls)} calls after 15 s, not {count}") from None

    def limits(self) -> DispatchLimits:
        return DispatchLimits(
            max_concurrency=self.concurrency,
            group_size=self.group_size,
            upstream=self.upstream,
            upstream_max_concurrency=self.upstream_concurrency,
        )

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        self.calls.append([r.index for r in group])
        self.called.set()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if any(r.body.get("hold") for r in group):
                await asyncio.Event().wait()
            await asyncio.sleep(0.005)
            return [self._answer(r) for r in group]
        finally:
            self.in_flight -= 1

    def _answer(self, request: ProviderRequest) -> ProviderResult:
        attempt = self.attempts[request.index] = self.attempts.get(request.index, 0) + 1
        fail = list(request.body.get("fail", []))
        if attempt <= len(fail):
            status = fail[attempt - 1]
            body = {"error": {"message": f"status {status}", "type": "x", "code": None}}
            return ProviderResult.failure(
                request.index,
                f"upstream_http_{status}",
                f"status {status}",
                retryable=status >= 500 or status == 429,
                status_code=status,
                body=body,
                retry_after=0.0 if status == 429 else None,
            )
        content = request.body["messages"][0]["content"]
        usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
        body = {"choices": [{"message": {"content": content.upper()}}], "usage": usage}
        return ProviderResult.success(request.index, 200, body, f"req_{request.index}")


def line(i: int, **body: Any) -> bytes:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}], **body}
    record = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
    return orjson.dumps({**record, "body": payload}) + b"\n"


@pytest.fixture(params=["local", "shared-sqlite", "shared-postgres"])
async def env(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SQLStore, LocalStorage, Settings]]:
    """One process with its journals (``local``), or shared mode (ranges of 7 requests, result
    rows in the database) on SQLite and on PostgreSQL."""
    async with contextlib.AsyncExitStack() as stack:
        shared: dict[str, Any] = {}
        if request.param == "shared-sqlite":
            shared = {"database_url": f"sqlite:///{tmp_path}/shared.sqlite3", "range_size": 7}
        elif request.param == "shared-postgres":
            url = await stack.enter_async_context(fresh_database())
            shared = {"database_url": url, "range_size": 7}
        settings = Settings.load(
            data_dir=tmp_path,
            models=[{"name": MODEL, "provider": "openai"}],
            retry_base_seconds=0.01,
            retry_cap_seconds=0.02,
            max_attempts=3,
            cancel_grace_seconds=0.05,
            progress_interval_seconds=0.02,
            **shared,
        )
        store = SQLStore(settings.resolved_database_url)
        await store.open()
        stack.push_async_callback(store.close)
        storage = LocalStorage(tmp_path / "files")
        await storage.open()
        yield store, storage, settings


async def run_batch(
    env: tuple[SQLStore, LocalStorage, Settings],
    data: bytes,
    provider: Provider | None,
    *,
    statuses: set[str] = TERMINAL,
) -> tuple[BatchManager, BatchRecord]:
    store, storage, settings = env
    manager = BatchManager(store, storage, settings, {MODEL: provider} if provider else {})
    await manager.start()
    file = await upload(store, storage, data)
    batch = new_batch(file.id)
    await submit(store, manager, batch)
    return manager, await wait_status(store, batch.id, statuses)


async def keep_results(
    env: tuple[SQLStore, LocalStorage, Settings], batch: BatchRecord, entries: list[JournalEntry]
) -> None:
    """Make ``entries`` durable as a crashed engine left them: in the batch's journal, or (shared
    mode) as result rows counted in the batch's request_counts."""
    store, _storage, settings = env
    if not settings.shared:
        journal = await Journal.open(
            settings.data_dir / "journals" / f"{batch.id}.journal", batch.total
        )
        for entry in entries:
            await journal.append(entry)
        await journal.close()
        return
    work, rows = SharedWork(store), [ResultRow(e.index, e.ok, e.output_line()) for e in entries]
    await store._transaction(lambda conn: work._insert_results(conn, batch.id, rows))


async def file_lines(storage: LocalStorage, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    data = b"".join([chunk async for chunk in storage.read_chunks(file_id)])
    return [orjson.loads(raw) for raw in data.splitlines()]


async def test_a_batch_runs_to_completed_with_files_in_input_order(
    env: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    store, storage, settings = env
    provider = ScriptedProvider()
    data = b"".join(line(i) for i in range(20)) + line(20, fail=[400]) + line(21, fail=[500, 503])
    manager, batch = await run_batch(env, data, provider)
    try:
        assert batch.status == "completed"
        assert batch.finalizing_at is not None
        assert batch.completed_at is not None
        assert batch.finalizing_at <= batch.completed_at
        assert (batch.total, batch.completed, batch.failed) == (22, 21, 1)
        output = await file_lines(storage, batch.output_file_id)
        assert [o["custom_id"] for o in output] == [f"r{i}" for i in [*range(20), 21]]
        assert output[3]["response"]["body"]["choices"][0]["message"]["content"] == "Q3"
        assert output[3]["response"]["request_id"] == "req_3"
        errors = await file_lines(storage, batch.error_file_id)
        assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("r20", 400)]
        assert provider.attempts[20] == 1
        assert provider.attempts[21] == 3
        assert batch.usage is not None
        assert (batch.usage["input_tokens"], batch.usage["output_tokens"]) == (42, 63)
        assert batch.usage["total_tokens"] == 105
        assert not (settings.data_dir / "journals" / f"{batch.id}.journal").exists()
        files = {
            f.id: f
            for f in (
                await store.list_files(now=0, purpose=None, after_seq=None, limit=10, order="asc")
            )[0]
        }
        assert files[batch.output_file_id].purpose == "batch_output"  # type: ignore[index]
        assert files[batch.output_file_id].filename == f"{batch.id}_output.jsonl"  # type: ignore[index]
    finally:
        await manager.stop()


async def test_retries_run_out_into_an_error_line_with_the_last_status(
    env: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    _store, storage, _ = env
    provider = ScriptedProvider()
    manager, batch = await run_batch(env, line(0, fail=[500, 429, 502, 500]) + line(1), provider)
    try:
        assert (batch.completed, batch.failed) == (1, 1)
        [error] = await file_lines(storage, batch.error_file_id)
        assert error["custom_id"] == "r0"
        assert error["response"]["status_code"] == 502
        assert provider.attempts[0] == 3  # max_attempts
    finally:
        await manager.stop()


async def test_no_error_file_when_everything_succeeds_and_no_output_when_nothing_does(
    env: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    provider = ScriptedProvider()
    manager, good = await run_batch(env, line(0) + line(1), provider)
    try:
        assert good.output_file_id is not None
        assert good.error_file_id is None
        store, storage, _ = env
        provider.attempts.clear()  # the same indices again
        file = await upload(store, storage, line(0, fail=[404]) + line(1, fail=[400]))
        bad = new_batch(file.id)
        await submit(store, manager, bad)
        done = await wait_status(store, bad.id, TERMINAL)
        assert done.status == "completed"
        assert done.output_file_id is None
        assert done.error_file_id is not None
        assert (done.completed, done.failed) == (0, 2)
    finally:
        await manager.stop()


async def test_groups_reach_the_provider_whole(
    env: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    provider = ScriptedProvider(group_size=4, concurrency=2)
    manager, batch = await run_batch(env, b"".join(line(i) for i in range(10)), provider)
    try:
        assert batch.status == "completed"
        assert batch.completed == 10
        # groups never cross a range of a batch (shared mode: ranges of 7 requests)
        expected = [3, 3, 4] if env[2].shared else [2, 4, 4]
        assert sorted(len(call) for call in provider.calls) == expected
        assert sorted(i for call in provider.calls for i in call) == list(range(10))
    finally:
        await manager.stop()


async def test_a_restart_sends_only_requests_without_a_durable_result(
    env: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    store, storage, settings = env
    provider = ScriptedProvider()
    provider.gate = asyncio.Event()  # hold everything: the batch stays in_progress
    manager, batch = await run_batch(
        env, b"".join(line(i) for i in range(8)), provider, statuses={"in_progress"}
    )
    await manager.stop()  # in-flight requests are abandoned, nothing is recorded
    # results 0..4 became durable before the "crash"
    await keep_results(
        env,
        batch,
        [
            JournalEntry.from_response(
                i, f"r{i}", 200, f"req_old{i}", {"choices": [{"message": {"content": f"k{i}"}}]}
            )
            for i in range(5)
        ],
    )

    again = ScriptedProvider()
    manager = BatchManager(store, storage, settings, {MODEL: again})
    await manager.start()
    try:
        done = await wait_status(store, batch.id, TERMINAL)
        assert done.status == "completed"
        assert done.completed == 8
        assert sorted(i for call in again.calls for i in call) == [5, 6, 7]
        output = await file_lines(storage, done.output_file_id)
        assert [o["custom_id"] for o in output] == [f"r{i}" for i in range(8)]
        assert output[0]["response"]["request_id"] == "req_old0"
    finally:
        await manager.stop()


async def test_cancel_keeps_finished_results_and_cancels_the_rest(
    env: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    store, storage, settings = env
    provider = ScriptedProvider(concurrency=1)
    data = line(0) + b"".join(line(i, hold=True) for i in range(1, 6))
    manager, batch = await run_batch(env, data, provider, statuses={"in_progress"})
    try:
        await provider.wait_calls(2)  # the first finished, the second hangs
        await BatchService(store, settings, manager).cancel("default", batch.id)
        done = await wait_status(store, batch.id, TERMINAL)
        assert done.status == "cancelled"
        assert done.cancelled_at is not None
        output = await file_lines(storage, done.output_file_id)
        errors = await file_lines(storage, done.error_file_id)
        assert len(output) + len(errors) == 6 == done.completed + done.failed
        assert output[0]["custom_id"] == "r0"
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        assert len(provider.calls) == 2  # dispatch stopped
    finally:
        await manager.stop()


async def test_a_batch_past_its_window_expires_with_finished_results_kept(
    env: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    store, storage, settings = env
    provider = ScriptedProvider(concurrency=1)
    manager = BatchManager(store, storage, settings, {MODEL: provider})
    await manager.start()
    try:
        data = line(0) + b"".join(line(i, hold=True) for i in range(1, 4))
        file = await upload(store, storage, data)
        # expires_at is in whole seconds: + 2 leaves at least a second to send the first two
        batch = dataclasses.replace(new_batch(file.id), expires_at=int(time.time()) + 2)
        await submit(store, manager, batch)
        await provider.wait_calls(2)  # the rest hangs past expires_at
        done = await wait_status(store, batch.id, TERMINAL)
        assert done.status == "expired"
        assert done.expired_at is not None
        output = await file_lines(storage, done.output_file_id)
        errors = await file_lines(storage, done.error_file_id)
        assert [o["custom_id"] for o in output] == ["r0"]
        assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
            ("r1", "batch_expired"),
            ("r2", "batch_expired"),
            ("r3", "batch_expired"),
        ]
        assert (done.completed, done.failed, done.total) == (1, 3, 4)
    finally:
        await manager.stop()


async def test_a_model_removed_from_the_routing_table_fails_its_requests(
    env: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    _store, storage, _ = env
    manager, batch = await run_batch(env, line(0) + line(1), None)
    try:
        assert batch.status == "completed"
        assert batch.failed == 2
        errors = await file_lines(storage, batch.error_file_id)
        assert {e["error"]["code"] for e in errors} == {"model_not_found"}
    finally:
        await manager.stop()


async def test_a_crash_while_finalizing_ends_the_batch_with_the_recorded_file_ids(
    env: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    store, storage, settings = env
    provider = ScriptedProvider()
    provider.gate = asyncio.Event()
    manager, batch = await run_batch(
        env, b"".join(line(i) for i in range(3)), provider, statuses={"in_progress"}
    )
    await manager.stop()
    # the "crashed" process had every result and had recorded its ending and file ids
    await keep_results(
        env,
        batch,
        [
            JournalEntry.from_response(
                i, f"r{i}", 200, f"req_{i}", {"choices": [{"message": {"content": f"a{i}"}}]}
            )
            for i in range(3)
        ],
    )
    files = [new_file_id(), new_file_id()]
    moved = await lifecycle.transition(
        store,
        batch.id,
        "finalizing",
        expected={"in_progress"},
        at=int(time.time()),
        ending=BatchEnding("completed", *files),
    )
    assert moved is not None

    again = ScriptedProvider()
    manager = BatchManager(store, storage, settings, {MODEL: again})
    await manager.start()
    try:
        done = await wait_status(store, batch.id, TERMINAL)
        assert done.status == "completed"
        assert done.output_file_id == files[0]
        assert done.error_file_id is None
        assert again.calls == []
        output = await file_lines(storage, done.output_file_id)
        assert [o["response"]["request_id"] for o in output] == ["req_0", "req_1", "req_2"]
    finally:
        await manager.stop()


async def test_progress_and_state_changes_are_logged(
    env: tuple[SQLStore, LocalStorage, Settings], caplog: pytest.LogCaptureFixture
) -> None:
    store, storage, settings = env
    settings = settings.model_copy(update={"progress_log_seconds": 0.05})
    provider = ScriptedProvider(concurrency=1)
    provider.gate = asyncio.Event()
    caplog.set_level("INFO", logger="batchd.engine")
    manager, batch = await run_batch(
        (store, storage, settings),
        b"".join(line(i) for i in range(3)),
        provider,
        statuses={"in_progress"},
    )
    try:
        # a few progress periods pass while the first request is held (shared mode: the
        # batches of the ranges an engine runs are read twice a second)
        await asyncio.sleep(1.2 if settings.shared else 0.3)
        provider.gate.set()
        await wait_status(store, batch.id, TERMINAL)
    finally:
        await manager.stop()
    text = caplog.text
    assert f"batch {batch.id}: in_progress (3 requests for {MODEL})" in text
    running = (
        "running (3 requests; ranges to claim: 1)" if settings.shared else "running (3 requests)"
    )
    assert f"batch {batch.id}: {running}" in text
    assert f"batch {batch.id}: 0/3 done (0 ok, 0 failed)" in text
    assert f"batch {batch.id}: completed (3 ok, 0 failed)" in text


async def test_the_upstream_bound_caps_requests_in_flight_below_the_models(
    env: tuple[SQLStore, LocalStorage, Settings],
) -> None:
    provider = ScriptedProvider(concurrency=6, upstream_concurrency=2)
    manager, batch = await run_batch(env, b"".join(line(i) for i in range(20)), provider)
    try:
        assert batch.completed == 20
        assert provider.peak == 2
    finally:
        await manager.stop()
    unbounded = ScriptedProvider(concurrency=6)
    manager, batch = await run_batch(env, b"".join(line(i) for i in range(20)), unbounded)
    try:
        assert unbounded.peak == 6  # the model's own bound, reached without the upstream one
    finally:
        await manager.stop()


def test_a_lasting_fault_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    throttle = Throttle(logging.getLogger("batchd.test"), 60.0, clock=clock)
    caplog.set_level("WARNING", logger="batchd.test")
    assert throttle.warning("batch a", "paused: %s", "disk full")
    for _ in range(59):  # a retry every second for a minute: held back
        clock.now += 1
        assert not throttle.warning("batch a", "paused: %s", "disk full")
    assert throttle.warning("batch b", "paused: %s", "disk full")  # another subject: its own
    clock.now += 1
    assert throttle.warning("batch a", "paused: %s", "disk full")
    assert [r.getMessage() for r in caplog.records] == [
        "paused: disk full",
        "paused: disk full",
        "paused: disk full (59 more since the last report)",
    ]
    assert "batch a" in throttle
    assert throttle.recovered("batch a")
    assert not throttle.recovered("batch a")  # news once
    assert not throttle.warning("batch a", "paused again")  # within the minute: still quiet
    assert throttle.clear("batch a")
    assert "batch a" not in throttle
    assert throttle.warning("batch a", "a new fault")  # after a clean run: at once
    assert not throttle.recovered("batch c")  # never faulted
