"""The scheduler of shared mode: what one engine claims when many share the database.

Every turn (at once when a ``NOTIFY`` from any process says a batch changed, else every second),
the engine claims, each with ``SELECT … FOR UPDATE SKIP LOCKED`` and a fenced lease:

1. batches waiting for validation (at most two at a time), validated by the
   :class:`~batchd.engine.BatchManager`;
2. batches whose run is over (every range done, cancelled, expired), ended by a
   :class:`~batchd.engine.runner.BatchRunner` from their result rows;
3. ranges of running batches, at most two per batch and ``max_running_batches`` in all, each run
   by a :class:`~batchd.engine.shared.RangeRunner`. A batch in progress is first split into
   ranges by whichever engine sees it first.

A heartbeat (``workers`` row) says what the engine runs and picks up the upstream pauses other
engines set after a 429; the batches of its ranges are watched twice a second, so a cancel made
through any process reaches the ranges within a second even when ``NOTIFY`` is not heard.
Stopping gives every lease back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

import anyio.to_thread

from batchd.config import Settings
from batchd.core.lifecycle import TERMINAL
from batchd.engine.inputs import plan_ranges
from batchd.engine.scheduler import Scheduler
from batchd.engine.shared import RangeRunner
from batchd.errors import StorageFault, StoreError
from batchd.metrics import Metrics
from batchd.providers.base import Provider
from batchd.providers.replicas import Replica, ReplicaSet
from batchd.storage import Storage
from batchd.store import BatchRecord, Store
from batchd.store.work import SharedWork, WorkerInfo

__all__ = ["SharedScheduler"]

log = logging.getLogger("batchd.engine")

_RANGES_PER_BATCH = 2  # ranges of one batch an engine runs at once
_MAX_VALIDATIONS = 2
_WATCH_SECONDS = 0.5  # how often the batches of running ranges are checked for a cancel
_HEARTBEAT_SECONDS = 2.0
_SMALLEST_RANGE = 500


class SharedScheduler(Scheduler):
    """Claims validations, endings and ranges from the shared database and runs them."""

    def __init__(
        self,
        store: Store,
        storage: Storage,
        settings: Settings,
        providers: Mapping[str, Provider],
        *,
        work: SharedWork,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(
            store, storage, settings, providers, clock=clock, shared=work, metrics=metrics
        )
        self.work = work
        self.validate: Callable[[BatchRecord], Awaitable[None]] | None = None
        """Validates a claimed ``validating`` batch (set by the manager)."""
        self._ranges: dict[str, tuple[RangeRunner, asyncio.Task[None]]] = {}
        self._validations: dict[str, asyncio.Task[None]] = {}
        self._batches: dict[str, BatchRecord] = {}  # of the ranges running, by id
        self._background: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self._started_at = clock()
        self._shares: dict[str, tuple[int, int]] = {}  # model -> (part, parts) in force
        self._live_workers = 1  # engines seen at the last heartbeat
        for model in self.engine.limiters.models():  # nothing is sent before the first share
            self.engine.limiters[model].set_ceiling(0)

    @property
    def running(self) -> list[str]:
        return sorted({*self._runners, *(r.batch_id for r, _t in self._ranges.values())})

    def info(self) -> dict[str, object]:
        """What this engine runs, for ``batchd workers``."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "ending": sorted(self._runners),
            "validating": sorted(self._validations),
            "ranges": sorted(self._ranges),
            "models": self.engine.limiters.models(),
        }

    async def start(self) -> None:
        for provider in self.engine.providers.values():
            replicas = getattr(provider, "replica_set", None)
            if isinstance(replicas, ReplicaSet) and len(replicas) > 1:
                replicas.on_change = functools.partial(self._replica_changed, provider.model)
        stop = self._listening
        self._background = [
            asyncio.create_task(self.work.listen(self._heard, stop=stop), name="listen"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._watch(), name="watch-cancels"),
        ]
        self._loop_task = asyncio.create_task(self._loop(), name="batch-scheduler")

    async def stop(self) -> None:
        """Stop claiming and every runner, then give every lease back at once.

        The claim loop is let to finish its turn rather than cancelled: a claim cut off while
        its (shielded) transaction commits would hold a range or a batch that no runner of
        this engine runs, until its lease ran out."""
        self._stopping = True
        self._listening.set()
        self.wake()
        loop = self._loop_task
        if loop is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(loop), 10)
        for runner, _task in self._ranges.values():
            runner.request_stop()
        for task in self._validations.values():
            task.cancel()
        await super().stop()
        await asyncio.gather(*(t for _r, t in self._ranges.values()), return_exceptions=True)
        await asyncio.gather(*self._validations.values(), return_exceptions=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(StoreError):
            await self.work.release_ranges(self.engine.owner)
        with contextlib.suppress(StoreError):
            await self.work.remove_worker(self.engine.owner)

    def cancel(self, batch_id: str) -> None:
        for runner, _task in self._ranges.values():
            if runner.batch_id == batch_id:
                runner.request_cancel()
        super().cancel(batch_id)

    def _heard(self, payload: str) -> None:
        """A status change committed by some process (``"<batch id> <status>"``)."""
        batch_id, _sep, status = payload.partition(" ")
        if status == "cancelling" or status in TERMINAL:
            for runner, _task in self._ranges.values():
                if runner.batch_id == batch_id:
                    runner.request_cancel()
        self.wake()

    # -- claiming -------------------------------------------------------------------------------

    async def _claim(self) -> None:
        if self._stopping:
            return
        now, owner, lease = self.engine.clock(), self.engine.owner, self.settings.lease_seconds
        if self.validate is not None and len(self._validations) < _MAX_VALIDATIONS:
            for batch in await self.work.claim_validations(
                owner=owner,
                now=now,
                lease_seconds=lease,
                limit=_MAX_VALIDATIONS - len(self._validations),
            ):
                task = asyncio.create_task(self._validate(batch), name=f"validate-{batch.id}")
                self._validations[batch.id] = task
        free = self.settings.max_running_batches - len(self._runners)
        if free > 0:
            await self._start_runners(
                await self.work.claim_endings(owner=owner, now=now, lease_seconds=lease, limit=free)
            )
        await self._plan()
        await self._claim_ranges()

    async def _plan(self) -> None:
        """Split the batches in progress that have no ranges yet."""
        settings, storage = self.settings, self.engine.storage
        for batch in await self.work.unplanned(limit=4):
            size = range_size(batch.total, self._live_workers, settings.range_size)
            try:
                spans = await anyio.to_thread.run_sync(
                    plan_ranges,
                    storage,
                    batch.input_file_id,
                    batch.total,
                    settings.max_request_bytes,
                    size,
                )
            except StorageFault as exc:
                self.engine.faults.warning(
                    f"plan {batch.id}", "batch %s: splitting it waits: %s", batch.id, exc
                )
                continue
            await self.work.add_ranges(
                batch.id, [(span.start, span.stop, span.index_offset) for span in spans]
            )
            log.info(
                "batch %s: running (%d requests; ranges to claim: %d)",
                batch.id,
                batch.total,
                len(spans),
            )

    async def _claim_ranges(self) -> None:
        """Claim ranges, one at a time, while this engine has room: two per batch at most still
        sending requests (a range that only awaits its last answers does not count, so the next
        one starts meanwhile), ``max_running_batches`` in all."""
        while len(self._ranges) < self.settings.max_running_batches and not self._stopping:
            per_batch: dict[str, int] = {}
            for runner, _task in self._ranges.values():
                if runner.feeding:
                    per_batch[runner.batch_id] = per_batch.get(runner.batch_id, 0) + 1
            full = [b for b, n in per_batch.items() if n >= _RANGES_PER_BATCH]
            claimed = await self.work.claim_ranges(
                owner=self.engine.owner,
                now=self.engine.clock(),
                lease_seconds=self.settings.lease_seconds,
                limit=1,
                skip=full,
            )
            if not claimed:
                return
            lease = claimed[0]
            batch = self._batches.get(lease.batch_id)
            if batch is None:
                batch = await self.store.get_batch(lease.batch_id)
                if batch is None:
                    await self.work.release_range(lease)
                    continue
                self._batches[batch.id] = batch
            runner = RangeRunner(self.engine, self.work, batch, lease)
            runner.on_sent_all = self.wake
            task = asyncio.create_task(self._run_range(runner), name=f"range-{runner.key}")
            self._ranges[runner.key] = (runner, task)

    async def _run_range(self, runner: RangeRunner) -> None:
        try:
            await runner.run()
        except asyncio.CancelledError:
            raise
        except (StoreError, StorageFault) as exc:
            self.engine.faults.warning(
                f"range {runner.batch_id}",
                "batch %s: a range stopped: %s (another engine or this one resumes it)",
                runner.batch_id,
                exc,
            )
            with contextlib.suppress(Exception):
                await self.work.release_range(runner.lease)
            await asyncio.sleep(1.0)  # not at once: the fault is likely still there
        except Exception:
            log.exception("batch %s: a range failed; it is resumed later", runner.batch_id)
            with contextlib.suppress(Exception):
                await self.work.release_range(runner.lease)
        finally:
            self._ranges.pop(runner.key, None)
            if not any(r.batch_id == runner.batch_id for r, _t in self._ranges.values()):
                self._batches.pop(runner.batch_id, None)
            if not self._stopping:
                self.wake()

    async def _validate(self, batch: BatchRecord) -> None:
        try:
            assert self.validate is not None
            await self.validate(batch)
        finally:
            self._validations.pop(batch.id, None)
            with contextlib.suppress(Exception):
                await self.store.release_lease(batch.id, owner=self.engine.owner)
            if not self._stopping:
                self.wake()

    # -- background -----------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Cancel the ranges of batches cancelled (or ended) through another process, and log
        the progress of the batches this engine helps run every ``progress_log_seconds``."""
        logged: dict[str, tuple[float, int]] = {}  # batch -> (when, done) of its last log line
        while True:
            await asyncio.sleep(_WATCH_SECONDS)
            batch_ids = {runner.batch_id for runner, _task in self._ranges.values()}
            if not batch_ids:
                continue
            try:
                progress = await self.work.progress(batch_ids)
            except StoreError:
                continue  # the writes report it
            for runner, _task in list(self._ranges.values()):
                status = progress.get(runner.batch_id, ("gone",))[0]
                if status == "cancelling" or status in TERMINAL or status == "gone":
                    runner.request_cancel()
            now = time.monotonic()
            for batch_id, (_status, completed, failed, total) in progress.items():
                at, before = logged.setdefault(batch_id, (now, completed + failed))
                if now - at >= self.settings.progress_log_seconds:
                    _log_progress(
                        batch_id,
                        completed,
                        failed,
                        total,
                        (completed + failed - before) / (now - at),
                    )
                    logged[batch_id] = (now, completed + failed)
            for batch_id in set(logged) - batch_ids:
                del logged[batch_id]

    async def _heartbeat(self) -> None:
        """Say this engine is alive and what it runs; take the upstream pauses of the others."""
        engine = self.engine
        period = min(_HEARTBEAT_SECONDS, self.settings.lease_seconds / 3)
        while True:
            now = engine.clock()
            try:
                await self.work.heartbeat(
                    engine.owner, started_at=self._started_at, now=now, info=self.info()
                )
                live = await self.work.live_workers(now=now, ttl=3 * period)
                self._live_workers = max(1, len(live))
                self._share_limits(live, young=now - self._started_at < 2 * period)
                for model, until in (await self.work.pauses(now=now)).items():
                    limiter = engine.limiters.get(model)
                    if limiter is not None:
                        limiter.gate.pause(until - now)
                for (model, name), until in (await self.work.ejections(now=now)).items():
                    replicas = getattr(engine.providers.get(model), "replica_set", None)
                    if isinstance(replicas, ReplicaSet):
                        replicas.eject_for(name, until - now)
            except StoreError as exc:
                engine.faults.warning("heartbeat", "the heartbeat waits for the database: %s", exc)
            await asyncio.sleep(period)

    def _share_limits(self, live: list[WorkerInfo], *, young: bool) -> None:
        """Take this engine's share of each model's limits: the engines that serve a model
        (heartbeat younger than three periods) split its ``max_concurrency``, ``rpm`` and
        ``tpm`` equally, by the order of their names. An engine that joins others waits two
        heartbeat periods first (zero slots), so that they have shrunk to their new shares
        before it takes its own: the sum stays within the limit, but for the requests the others
        had in flight above their new share, which finish within one request's latency."""
        owner = self.engine.owner
        for model in self.engine.limiters.models():
            sharing = sorted(
                {owner, *(w.name for w in live if model in (w.info.get("models") or []))}
            )
            limiter = self.engine.limiters[model]
            if young and len(sharing) > 1:
                limiter.set_ceiling(0)
                continue
            share = (sharing.index(owner), len(sharing))
            if self._shares.get(model) != share:
                concurrency, rpm, tpm = limiter.share(*share)
                self._shares[model] = share
                log.info(
                    "model %s: %d engines share its limits; this one takes concurrency %d of %d%s",
                    model,
                    share[1],
                    concurrency,
                    limiter.limits.max_concurrency,
                    "".join(
                        f", {name} {value}"
                        for name, value in (("rpm", rpm), ("tpm", tpm))
                        if value is not None
                    ),
                )

    def _replica_changed(self, model: str, replica: Replica, seconds: float | None) -> None:
        """This engine ejected (``seconds``) or readmitted (``None``) a replica: tell the
        others through the database (best effort; they hear within a heartbeat)."""
        work = self.work
        if seconds is None:
            coro = work.readmit_replica(model, replica.name)
        else:
            coro = work.eject_replica(model, replica.name, until=self.engine.clock() + seconds)
        task = asyncio.create_task(coro)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _paused(self, model: str, seconds: float) -> None:
        """Pause ``model``'s upstream for every engine (best effort: this one is paused)."""
        until = self.engine.clock() + seconds
        task = asyncio.create_task(self.work.pause_model(model, until=until))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())


def _log_progress(batch_id: str, completed: int, failed: int, total: int, rate: float) -> None:
    done = completed + failed
    eta = f", ETA {(total - done) / rate:.0f}s" if rate > 0 else ""
    log.info(
        "batch %s: %d/%d done (%d ok, %d failed), %.1f req/s%s",
        batch_id,
        done,
        total,
        completed,
        failed,
        rate,
        eta,
    )


def range_size(total: int, workers: int, largest: int) -> int:
    """How many requests each range of a batch of ``total`` gets: four ranges per live engine
    (so that each engine has two to run and two to take over), at least ``_SMALLEST_RANGE``
    (each range costs a claim and a read of the request index) and at most ``largest``
    (``range_size``: what an engine that dies may leave to be taken over)."""
    return max(min(_SMALLEST_RANGE, largest), min(largest, -(-total // (4 * workers))))
