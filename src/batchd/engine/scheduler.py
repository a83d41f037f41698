"""Which batches this process runs: claims with leases, one runner per claimed batch.

The scheduler claims batches that ran validation and are not terminal (``in_progress``,
``finalizing``, ``cancelling``) with a lease in the store (:meth:`Store.claim_batches`), at most
``max_running_batches`` at a time, and renews each lease every third of ``lease_seconds`` while
its runner works. A process that dies stops renewing; once its leases run out, another engine
sharing the store and the data directory claims the batches and resumes them from their journals.
A lease renewal also reads the batch, so a cancel made through another process reaches the runner.

With the default store (SQLite inside the data directory, which one process holds with a lock),
every lease in it is left over from a dead process, so :meth:`Scheduler.start` drops them all and
a restart resumes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping

import anyio.to_thread

from batchd.config import Settings
from batchd.core.lifecycle import TERMINAL
from batchd.engine.cache import ResultCache
from batchd.engine.dispatch import Engine
from batchd.engine.limits import Limiters
from batchd.engine.retry import RetryStrategy
from batchd.engine.runner import BatchRunner
from batchd.engine.throttle import Throttle
from batchd.errors import StorageFault, StoreError
from batchd.metrics import Metrics
from batchd.providers.base import Provider
from batchd.providers.table import ModelTable
from batchd.storage import Storage
from batchd.store import BatchRecord, SQLStore, Store
from batchd.store.cache import CacheStore
from batchd.store.work import SharedWork

__all__ = ["Scheduler"]

log = logging.getLogger("batchd.engine")

_POLL_SECONDS = 1.0
_FAILED_RUN_COOLDOWN = 30.0
_FAULT_RETRY = 5.0  # seconds before a batch stopped by a store or storage fault runs again


def _owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Scheduler:
    """Claims runnable batches and runs them. ``await start()``, ``await stop()``."""

    def __init__(
        self,
        store: Store,
        storage: Storage,
        settings: Settings,
        providers: Mapping[str, Provider],
        *,
        clock: Callable[[], float] = time.time,
        shared: SharedWork | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        faults = Throttle(log)
        self.engine = Engine(
            store=store,
            storage=storage,
            settings=settings,
            providers=providers if isinstance(providers, ModelTable) else ModelTable(providers),
            limiters=Limiters(providers),
            retry=RetryStrategy(
                max_attempts=settings.max_attempts,
                base=settings.retry_base_seconds,
                cap=max(settings.retry_cap_seconds, settings.retry_base_seconds),
            ),
            owner=_owner_name(),
            journal_dir=settings.data_dir / "journals",
            faults=faults,
            clock=clock,
            shared=shared,
            on_pause=self._paused,
            metrics=metrics or Metrics(process=False),
            cache=_result_cache(store, settings, faults, clock),
        )
        self._runners: dict[str, tuple[BatchRunner, asyncio.Task[None]]] = {}
        self._cooldown: dict[str, float] = {}
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def store(self) -> Store:
        return self.engine.store

    @property
    def running(self) -> list[str]:
        """The ids of the batches this process is running."""
        return list(self._runners)

    async def start(self) -> None:
        await anyio.to_thread.run_sync(
            lambda: self.engine.journal_dir.mkdir(parents=True, exist_ok=True)
        )
        if self.settings.database_url is None:
            dropped = await self.store.release_all_leases()
            if dropped:
                log.info("released %d leases left by a previous process", dropped)
        await self._remove_stale_journals()
        self._loop_task = asyncio.create_task(self._loop(), name="batch-scheduler")

    async def stop(self) -> None:
        """Stop claiming; every runner stops (in-flight requests get a short grace)."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        runners = list(self._runners.values())
        for runner, _task in runners:
            runner.request_stop()
        await asyncio.gather(*(task for _runner, task in runners), return_exceptions=True)

    def wake(self) -> None:
        """Claim now (a batch became runnable)."""
        self._wakeup.set()

    def cancel(self, batch_id: str) -> None:
        """A batch moved to ``cancelling``: tell its runner, or claim it to finish the cancel."""
        found = self._runners.get(batch_id)
        if found is not None:
            found[0].request_cancel()
        else:
            self.wake()

    async def _loop(self) -> None:
        faults = self.engine.faults
        while not self._stopping:
            try:
                await self._claim()
            except StoreError as exc:
                faults.warning("claim", "claiming batches waits for the store: %s", exc)
            except Exception:
                log.exception("claiming batches failed; retrying")
            else:
                if faults.clear("claim"):
                    log.info("claiming batches works again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), _POLL_SECONDS)
            self._wakeup.clear()

    async def _claim(self) -> None:
        free = self.settings.max_running_batches - len(self._runners)
        if free <= 0:
            return
        now = self.engine.clock()
        claimed = await self.store.claim_batches(
            owner=self.engine.owner,
            now=now,
            lease_seconds=self.settings.lease_seconds,
            limit=free + len(self._cooldown),
        )
        await self._start_runners(claimed)

    async def _start_runners(self, claimed: list[BatchRecord]) -> None:
        """A runner for each claimed batch (the lease is given back if it cools down)."""
        for batch in claimed:
            cooldown = self._cooldown.get(batch.id)
            if len(self._runners) >= self.settings.max_running_batches or (
                cooldown is not None and cooldown > time.monotonic()
            ):
                await self.store.release_lease(batch.id, owner=self.engine.owner)
                continue
            self._cooldown.pop(batch.id, None)
            runner = BatchRunner(self.engine, batch)
            task = asyncio.create_task(self._run(runner), name=f"run-{batch.id}")
            self._runners[batch.id] = (runner, task)

    def _paused(self, model: str, seconds: float) -> None:
        """An upstream of ``model`` answered 429 (one process: its gate is paused already)."""

    async def _run(self, runner: BatchRunner) -> None:
        batch_id = runner.batch_id
        renewer = asyncio.create_task(self._renew(runner), name=f"lease-{batch_id}")
        try:
            batch = runner.batch
            if batch.status == "in_progress" and batch.ending is None and not self.settings.shared:
                log.info("batch %s: running (%d requests)", batch_id, runner.batch.total)
            await runner.run()
        except asyncio.CancelledError:
            raise
        except (StoreError, StorageFault) as exc:
            # Logged by the runner (once a minute); it resumes from its journal once it clears.
            log.debug("batch %s: stopped by %r; running it again in %gs", batch_id, exc, 5.0)
            self._cooldown[batch_id] = time.monotonic() + _FAULT_RETRY
        except Exception:
            log.exception("batch %s: the run failed; retrying in %gs", batch_id, 30.0)
            self._cooldown[batch_id] = time.monotonic() + _FAILED_RUN_COOLDOWN
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            self._runners.pop(batch_id, None)
            with contextlib.suppress(Exception):
                await self.store.release_lease(batch_id, owner=self.engine.owner)
            if not self._stopping:
                self.wake()

    async def _renew(self, runner: BatchRunner) -> None:
        every = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            try:
                batch = await self.store.renew_lease(
                    runner.batch_id,
                    owner=self.engine.owner,
                    now=self.engine.clock(),
                    lease_seconds=self.settings.lease_seconds,
                )
            except StoreError as exc:
                self.engine.faults.warning(
                    f"renew {runner.batch_id}",
                    "batch %s: renewing the lease waits for the store: %s",
                    runner.batch_id,
                    exc,
                )
                continue
            except Exception:
                log.exception("batch %s: renewing the lease failed", runner.batch_id)
                continue
            if batch is None:
                log.warning("batch %s: lease lost to another engine; stopping", runner.batch_id)
                runner.request_stop()
                return
            if batch.status == "cancelling":
                runner.request_cancel()

    async def _remove_stale_journals(self) -> None:
        """Journals of batches that reached a terminal status (a crash before the delete)."""
        paths = await anyio.to_thread.run_sync(
            lambda: sorted(self.engine.journal_dir.glob("*.journal"))
        )
        for path in paths:
            batch = await self.store.get_batch(path.stem)
            if batch is None or batch.status in TERMINAL:
                await anyio.to_thread.run_sync(functools.partial(path.unlink, missing_ok=True))


def _result_cache(
    store: Store, settings: Settings, faults: Throttle, clock: Callable[[], float]
) -> ResultCache | None:
    """The result cache, when a route has ``cache = true``: in the store's database, or in
    ``cache_database_url``'s (opened and closed by the batch manager)."""
    if not any(route.cache for route in settings.models):
        return None
    url = settings.resolved_cache_database_url
    if url is None and not isinstance(store, SQLStore):
        return None
    own = url is not None
    database = SQLStore(url) if url is not None else store
    assert isinstance(database, SQLStore)
    return ResultCache(
        CacheStore(database), settings.cache_max_bytes, faults=faults, clock=clock, own_store=own
    )
