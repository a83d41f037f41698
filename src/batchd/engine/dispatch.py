"""Sending a batch's requests: bounded dispatch, retries, results handed to a durable sink.

A :class:`Dispatch` sends every request of a batch (or of a :class:`Span` of it, in shared mode)
that its :class:`ResultSink` has no result for: ``max_concurrency`` workers per model, each
taking the next request group, holding a model slot while it is sent (retries included), then
handing the final results to the sink and going on with the next group while they are made
durable. The sink is the batch's journal (one process) or the database's result rows (shared
mode, :mod:`batchd.engine.shared`). :meth:`Dispatch.execute` runs it until every request has a
result, or a cancel, the deadline or a stop, and says how the batch ends.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread

from batchd.config import Settings
from batchd.core.lifecycle import Outcome
from batchd.core.priority import priority_of
from batchd.engine.cache import Recall, ResultCache
from batchd.engine.fairness import Flow
from batchd.engine.inputs import Feed, InputReader, Span, request_ids
from batchd.engine.journal import JournalEntry, Usage, usage_tokens
from batchd.engine.limits import Limiters, ModelLimiter
from batchd.engine.retry import RetryStrategy
from batchd.engine.throttle import Throttle
from batchd.ids import new_request_id
from batchd.metrics import UNROUTED, Metrics, RequestStats, outcome_of
from batchd.providers.base import Provider, ProviderRequest, ProviderResult
from batchd.providers.messages import (
    MESSAGES,
    MessagesBridge,
    MessagesParamError,
    messages_provider,
)
from batchd.providers.table import ModelTable
from batchd.storage import Storage
from batchd.store import BatchRecord, Store
from batchd.store.work import SharedWork
from batchd.validation import normalize_url

__all__ = ["Dispatch", "Engine", "ResultSink", "entry_of", "route_of"]

log = logging.getLogger("batchd.engine")


class ResultSink(Protocol):
    """Where a dispatch's results go: durable before :meth:`submit`'s awaitable resolves."""

    @property
    def total(self) -> int:
        """The batch's number of requests."""
        ...

    def is_done(self, index: int) -> bool:
        """Whether request ``index`` has a durable result."""
        ...

    def submit(self, entry: JournalEntry) -> Awaitable[bool]:
        """Queue a final result; the awaitable resolves once it is durable."""
        ...

    def submit_many(self, entries: Sequence[JournalEntry]) -> Awaitable[object]:
        """Queue a group's final results; the awaitable resolves once all are durable."""
        ...

    async def append_unexecuted(
        self, requests: Iterable[tuple[int, str]], reason: tuple[str, str]
    ) -> int:
        """Record the error ``reason`` (code, message) for each request without a result."""
        ...


@dataclass(frozen=True)
class Engine:
    """What every runner of a process shares."""

    store: Store
    storage: Storage
    settings: Settings
    providers: ModelTable
    """By route name or alias."""
    limiters: Limiters
    retry: RetryStrategy
    owner: str
    """This engine's lease-owner name."""
    journal_dir: Path
    faults: Throttle
    """Disk and store faults of the runs, logged once a minute per batch."""
    clock: Callable[[], float] = time.time
    shared: SharedWork | None = None
    """The shared-mode queries, when engines share the database (``None``: one process, a
    journal per batch)."""
    on_pause: Callable[[str, float], None] | None = None
    """Told ``(model, seconds)`` when an upstream answered 429 (shared mode: every engine
    pauses it)."""
    metrics: Metrics = field(default_factory=lambda: Metrics(process=False))
    """What the process's ``/metrics`` shows."""
    cache: ResultCache | None = None
    """The cross-batch result cache of the routes with ``cache = true``."""

    def journal_path(self, batch_id: str) -> Path:
        return self.journal_dir / f"{batch_id}.journal"


def entry_of(request: ProviderRequest, result: ProviderResult) -> JournalEntry:
    """The journal entry of a request's final result.

    An HTTP answer (2xx, or an error status with the upstream's body) is a ``response``; no
    answer (timeout, reset, an unreadable 2xx body) is an ``error`` with batchd's code.
    """
    status = result.status_code
    if result.ok or (status is not None and not 200 <= status < 300 and result.body is not None):
        assert status is not None
        request_id = result.request_id or new_request_id()
        return JournalEntry.from_response(
            request.index, request.custom_id, status, request_id, result.body
        )
    return JournalEntry.from_error(
        request.index,
        request.custom_id,
        result.error_code or "server_error",
        result.error_message or "The request failed without a response.",
    )


def route_of(engine: Engine, batch: BatchRecord) -> str:
    """The route serving ``batch`` (its ``model`` label in the metrics)."""
    provider = engine.providers.get(batch.model or "")
    return UNROUTED if provider is None else provider.model


class Dispatch:
    """Sends the requests of ``batch`` (within ``span``, if given) that ``sink`` has no result
    for; build it, ``await execute(...)``."""

    def __init__(
        self,
        engine: Engine,
        batch: BatchRecord,
        sink: ResultSink,
        span: Span | None = None,
        *,
        done: int = 0,
    ) -> None:
        """``done``: the requests (of ``span``) with a result before this run, for the
        queue-depth gauge."""
        self.engine = engine
        self.batch = batch
        self.sink = sink
        self.span = span
        self.busy = 0  # request groups in flight
        # for the gauges and counters of /metrics (batchd.metrics)
        self.route = UNROUTED
        self.sending = 0  # requests in flight
        self._unsent = (batch.total if span is None else span.stop - span.start) - done
        self._stats: RequestStats | None = None  # set once the route is known
        self._commits = engine.metrics.commit_histogram(
            "journal" if engine.shared is None else "database"
        )
        self._groups = 0  # groups recorded: the commit latency of one in _COMMIT_SAMPLE is timed
        self._fallbacks: tuple[str, ...] = ()
        self._draining = False
        self.flow = Flow(batch.id, batch.project, priority_of(batch.metadata))
        """How this batch waits for its model's slots (:mod:`batchd.engine.fairness`)."""
        self.on_sent_all: Callable[[], None] | None = None
        """Called once every request was taken for sending (only results are awaited now)."""
        self.sent_all = False
        self._deadline: float | None = None  # on the monotonic clock
        self._recall: Recall | None = None  # the route's result cache, if it has one
        self._hit_writes: list[Awaitable[object]] = []  # answers from it being made durable

    async def execute(
        self, *, cancel: asyncio.Event, stop: asyncio.Event, remaining: float | None
    ) -> Outcome | None:
        """Send until every request has a result (``completed``), or ``cancel`` is set
        (``cancelled``), ``remaining`` seconds pass (``expired``) or ``stop`` is set (``None``:
        stopped, not ended). In-flight requests get ``cancel_grace_seconds`` after a cancel or
        the deadline, and a short grace after a stop."""
        if remaining is not None:
            self._deadline = time.monotonic() + remaining
        batch_id = self.batch.id
        live = self.engine.metrics.live
        live.add(self)
        dispatcher = asyncio.create_task(self._dispatch(), name=f"dispatch-{batch_id}")
        waiters: list[asyncio.Task[Any]] = [  # whichever ends first stops the dispatch
            asyncio.create_task(cancel.wait()),
            asyncio.create_task(stop.wait()),
            asyncio.create_task(asyncio.sleep(remaining if remaining is not None else 1e9)),
        ]
        try:
            await asyncio.wait([dispatcher, *waiters], return_when=asyncio.FIRST_COMPLETED)
            if dispatcher.done():
                dispatcher.result()  # a failure of the dispatcher itself propagates
                return "completed"
            outcome: Outcome | None
            if cancel.is_set():
                outcome = "cancelled"
            elif stop.is_set():
                outcome = None
            else:
                outcome = "expired"
            settings = self.engine.settings
            grace = settings.cancel_grace_seconds if outcome is not None else _SHUTDOWN_GRACE
            await self._drain(dispatcher, grace)
            return outcome
        finally:
            live.discard(self)
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    @property
    def waiting(self) -> int:
        """Requests not yet taken for sending (the queue-depth gauge)."""
        return max(0, self._unsent) if not self._draining else 0

    def _sent_all(self) -> None:
        if not self.sent_all:
            self.sent_all = True
            if self.on_sent_all is not None:
                self.on_sent_all()

    async def _drain(self, dispatcher: asyncio.Task[None], grace: float) -> None:
        """Stop dispatching, give in-flight requests ``grace`` seconds, cancel the rest."""
        self._draining = True
        if self.busy:
            log.info(
                "batch %s: waiting up to %gs for %d in-flight requests",
                self.batch.id,
                grace,
                self.busy,
            )
        await asyncio.wait([dispatcher], timeout=grace)
        dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)

    # -- sending -------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Send every request without a result: ``max_concurrency`` workers, each taking the
        next request group, holding a model slot while it runs (no task per request)."""
        batch = self.batch
        engine = self.engine
        assert batch.model is not None
        provider = engine.providers.get(batch.model)  # by name or alias
        limiter = None if provider is None else engine.limiters.get(provider.model)
        route = None if provider is None else engine.settings.route(provider.model)
        self._fallbacks = () if route is None else route.fallback
        if provider is None or limiter is None:
            await self._unroutable()
            return
        sender = _serving(provider, batch.endpoint) or provider  # (it answers what it lacks)
        self.route = provider.model
        self._stats = engine.metrics.requests_for(provider.model, batch.project)
        reader = await anyio.to_thread.run_sync(
            InputReader,
            engine.storage,
            batch.input_file_id,
            self.sink,
            engine.settings.max_request_bytes,
            self.span,
        )
        size = limiter.limits.group_size_for(batch.endpoint)
        if route is not None and route.cache and engine.cache is not None:
            self._recall = engine.cache.recall(
                project=batch.project,
                route=provider.model,
                endpoint=batch.endpoint,
                ttl=route.cache_ttl_seconds,
                settle=self._settle,
                tally=engine.metrics.cache_tally(provider.model),
            )
        recall = self._recall
        feed = Feed(reader, batch.endpoint, max(1, size), None if recall is None else recall.screen)
        if recall is not None:
            recall.requeue = feed.put_back
        try:
            try:
                async with asyncio.TaskGroup() as workers:
                    for _ in range(limiter.limits.max_concurrency):
                        workers.create_task(self._work(sender, limiter, feed))
            except BaseExceptionGroup as group:  # a worker failed: its error says why
                raise group.exceptions[0] from None
            for write in self._hit_writes:
                await write
        finally:
            if recall is not None:
                await recall.close()
            await anyio.to_thread.run_sync(reader.close)

    def _settle(self, entries: list[JournalEntry]) -> None:
        """Hand results answered by the result cache to the sink."""
        stats = self._stats
        assert stats is not None
        stats.succeeded += len(entries)
        self._unsent -= len(entries)
        writes = [write for write in self._hit_writes if not _resolved(write)]
        writes.append(self.sink.submit_many(entries))
        self._hit_writes = writes

    async def _work(self, provider: Executor, limiter: ModelLimiter, feed: Feed) -> None:
        """Take groups and send them, one at a time. A group holds a model slot while it is sent
        (retries included); its results are then queued to the sink and the worker goes on
        to the next group while they are made durable, but waits for them before it queues
        the next results: at most one group per worker in flight and one being written."""
        writing: Awaitable[Any] | None = None
        while not self._draining:
            group = await feed.next()
            if group is None:
                self._sent_all()
                break
            size = len(group)
            self._unsent -= size
            async with limiter.slots.take(self.flow):  # shared fairly by the model's batches
                if self._draining:
                    break  # taken but not sent: it ends as batch_cancelled/expired
                self.busy += 1
                self.sending += size
                try:
                    finals = own = await self._run_group(provider, limiter, group)
                finally:
                    self.busy -= 1
                    self.sending -= size
            if self._fallbacks and any(_exhausted(final) for final in finals):
                finals = await self._fall_back(group, finals)  # the route's slot is free
            if writing is not None:
                await writing
            writing = self._record(group, finals, own)
        if writing is not None:
            await writing

    def _record(
        self,
        group: Sequence[ProviderRequest],
        finals: Sequence[ProviderResult],
        own: Sequence[ProviderResult],
    ) -> Awaitable[Any]:
        """Queue the group's final results to the sink; the awaitable is their durability.
        ``own`` are the route's results, before any fallback (what the result cache keeps)."""
        sink, stats = self.sink, self._stats
        assert stats is not None
        for final in finals:  # counted for /metrics
            if final.ok:
                stats.succeeded += 1
                tokens = usage_tokens(final.body)
                if tokens is not None:
                    stats.input_tokens += tokens[0]
                    stats.output_tokens += tokens[2]
            else:
                stats.add_failed(outcome_of(final))
        self._groups += 1
        future: Awaitable[object]
        if self._recall is not None:
            entries = list(map(entry_of, group, finals))
            self._recall.remember(group, own, entries)
            future = sink.submit_many(entries)
        elif len(group) == 1:
            future = sink.submit(entry_of(group[0], finals[0]))
        else:  # one future for the group, not one per result
            future = sink.submit_many(list(map(entry_of, group, finals)))
        # a done callback costs ~1.4 µs: the commit latency of one group in 8 is measured
        if self._groups % _COMMIT_SAMPLE == 1 and isinstance(future, asyncio.Future):
            future.add_done_callback(functools.partial(self._commits.since, _now()))
        return future

    async def _fall_back(
        self, group: Sequence[ProviderRequest], finals: Sequence[ProviderResult]
    ) -> list[ProviderResult]:
        """The results, with each one whose attempts ran out with retryable errors sent to the
        route's fallbacks in order (their own slots, budgets and attempts), the model renamed
        to the fallback's; the first answer that is not such a failure is kept."""
        return list(
            await asyncio.gather(
                *(
                    self._fall_back_one(request, final) if _exhausted(final) else _same(final)
                    for request, final in zip(group, finals, strict=True)
                )
            )
        )

    async def _fall_back_one(
        self, request: ProviderRequest, result: ProviderResult
    ) -> ProviderResult:
        engine = self.engine
        for name in self._fallbacks:
            route = engine.providers.get(name)
            provider = None if route is None else _serving(route, request.endpoint)
            limiter = None if provider is None else engine.limiters.get(provider.model)
            if provider is None or limiter is None:
                continue
            moved = ProviderRequest(
                request.index,
                request.custom_id,
                request.endpoint,
                {**request.body, "model": provider.model},
            )
            async with limiter.slots.take(self.flow):
                cost = limiter.cost(moved.body)
                [answer] = await self._send(provider, limiter, [moved], cost, 1)
                if _exhausted(answer):
                    answer = await self._retry(provider, limiter, moved, answer, cost)
            if not _exhausted(answer):
                log.debug(
                    "batch %s: %s answered by fallback %s", self.batch.id, request.custom_id, name
                )
                return answer
            result = answer
        return result

    async def _unroutable(self) -> None:
        model = self.batch.model or ""
        message = (
            f"The model '{model}' is no longer in batchd's routing table. "
            f"{self.engine.providers.hint(model)} Then create the batch again."
        )
        count = await self.sink.append_unexecuted(self.request_ids(), ("model_not_found", message))
        stats = self.engine.metrics.requests_for(UNROUTED, self.batch.project)
        stats.add_failed("model_not_found", count)

    def request_ids(self) -> Iterator[tuple[int, str]]:
        """``(index, custom_id)`` of every request, from the request index (read by the
        journal's writer thread)."""
        batch, engine = self.batch, self.engine
        return request_ids(
            engine.storage,
            batch.input_file_id,
            batch.total,
            engine.settings.max_request_bytes,
            self.span,
        )

    async def _run_group(
        self, provider: Executor, limiter: ModelLimiter, group: Sequence[ProviderRequest]
    ) -> Sequence[ProviderResult]:
        """Send a group and retry what failed and may be retried: the final results."""
        if limiter.tokens is None:  # no token budget: every cost is 0
            costs = None
            results = await self._send(provider, limiter, group, 0, 1)
        else:
            costs = [limiter.cost(request.body) for request in group]
            results = await self._send(provider, limiter, group, sum(costs), 1)
        failed = [slot for slot, result in enumerate(results) if result.retryable and not result.ok]
        if not failed:  # the common case: no task, no coroutine per request
            return results

        def retry(slot: int) -> Awaitable[ProviderResult]:
            cost = 0 if costs is None else costs[slot]
            return self._retry(provider, limiter, group[slot], results[slot], cost)

        if len(failed) == 1:
            results[failed[0]] = await retry(failed[0])
        else:
            for slot, final in zip(failed, await asyncio.gather(*map(retry, failed)), strict=True):
                results[slot] = final
        return results

    async def _send(
        self,
        provider: Executor,
        limiter: ModelLimiter,
        group: Sequence[ProviderRequest],
        cost: int,
        attempt: int,
    ) -> list[ProviderResult]:
        if not limiter.ready:
            await limiter.before_send(cost)
        upstream_slots = limiter.gate.slots
        started = time.monotonic()
        if upstream_slots is None:
            results = await provider.execute(group)
        else:
            async with upstream_slots:
                results = await provider.execute(group)
        if limiter.adaptive is not None:
            _observe(limiter, results, time.monotonic() - started)
        used = 0
        for result in results:
            if result.status_code == 429:
                pause = result.retry_after
                seconds = pause if pause is not None else self.engine.retry.backoff(attempt)
                limiter.gate.pause(seconds)
                if self.engine.on_pause is not None:
                    self.engine.on_pause(provider.model, seconds)
            if result.ok and cost:
                used += Usage.of_body(result.body).total_tokens
        if cost:
            limiter.after_response(cost, used)
        return results

    async def _retry(
        self,
        provider: Executor,
        limiter: ModelLimiter,
        request: ProviderRequest,
        result: ProviderResult,
        cost: int,
    ) -> ProviderResult:
        attempt = 1
        while not result.ok and result.retryable:
            decision = self.engine.retry.decide(attempt, result, time.monotonic(), self._deadline)
            if not decision.retry:
                break
            self.engine.metrics.retried(provider.model, outcome_of(result))
            await asyncio.sleep(decision.delay)
            attempt += 1
            [result] = await self._send(provider, limiter, [request], cost, attempt)
        return result


Executor = Provider | MessagesBridge
"""What sends a batch's requests: the route's provider, or its Messages bridge."""


def _serving(provider: Provider, endpoint: str) -> Executor | None:
    """What serves ``endpoint`` on ``provider``'s route: the provider, or for Anthropic's
    Messages on a chat route its :class:`~batchd.providers.messages.MessagesBridge`; ``None``
    when neither does."""
    path = normalize_url(endpoint)
    if path in provider.endpoints:
        return provider
    if path != MESSAGES:
        return None
    try:
        return messages_provider(provider)  # the provider's one rule for Messages
    except MessagesParamError:
        return None


def _observe(limiter: ModelLimiter, results: Sequence[ProviderResult], seconds: float) -> None:
    """Tell the model's adaptive limit how the upstream answered."""
    for result in results:
        overloaded = result.status_code in (429, 503) or result.error_code == "request_timeout"
        limiter.observe(overloaded, seconds if result.ok else None)


_SHUTDOWN_GRACE = 2.0  # seconds in-flight requests get when the process stops
_COMMIT_SAMPLE = 8  # the commit latency of one request group in this many is measured
_now = time.perf_counter


def _resolved(write: Awaitable[object]) -> bool:
    return isinstance(write, asyncio.Future) and write.done() and not write.exception()


def _exhausted(result: ProviderResult) -> bool:
    """A final result whose attempts ran out with a retryable error (fallback material)."""
    return not result.ok and result.retryable


async def _same(result: ProviderResult) -> ProviderResult:
    return result
