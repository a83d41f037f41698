"""The services of one batchd process, built and torn down in one place: ``batchd serve``'s
lifespan and ``batchd run`` (no server) both use :func:`open_services`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from batchd.auth import Authenticator
from batchd.config import Settings
from batchd.engine import BatchManager
from batchd.errors import ConfigError
from batchd.lock import DataDirLock
from batchd.metrics import Metrics
from batchd.providers import ModelTable, Provider
from batchd.service import BatchService, FileService
from batchd.service.batches import EngineHooks
from batchd.service.idempotency import IdempotencyService
from batchd.storage import Storage, open_storage
from batchd.store import BatchRecord, SQLStore, Store
from batchd.store.idempotency import IdempotencyStore
from batchd.webhooks.deliver import Deliverer

__all__ = ["Services", "open_services"]

log = logging.getLogger("batchd")


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    storage: Storage
    manager: BatchManager | None
    """The engine: validation, the scheduler and its runners, purging (``None`` in an API
    process without one, ``batchd serve --no-engine``)."""
    providers: ModelTable
    """One started provider per ``[[models]]`` route, by route name or alias."""
    batches: BatchService
    files: FileService
    auth: Authenticator | None = None
    """Who may call the API (``None``: everyone, as the default project)."""
    metrics: Metrics = field(default_factory=Metrics)
    """What ``/metrics`` (and ``batchd worker --metrics-port``) shows of this process."""
    idempotency: IdempotencyService | None = None
    """``Idempotency-Key`` of the create calls (``None``: the header is ignored)."""


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    providers: Mapping[str, Provider],
    *,
    lock: DataDirLock | None = None,
    engine: bool = True,
) -> AsyncIterator[Services]:
    """Lock the data directory (unless ``lock``, already held, is given; not at all when the
    database is shared: :attr:`Settings.shared`), open the store and the storage, start the
    providers and, with ``engine``, the batch manager (which resumes unfinished batches); on
    exit stop them in the reverse order. Without ``engine`` (an API process), the engines of
    other processes take the batches, woken by the database's notifications."""
    table = providers if isinstance(providers, ModelTable) else ModelTable(providers)
    _log_routes(table)
    if not engine and not settings.shared:
        raise ConfigError(
            "an API process without an engine needs a shared database: set database_url "
            "(BATCHD_DATABASE_URL, e.g. postgresql://user@host/db) and run `batchd worker` "
            "processes on it"
        )
    data_lock = None if settings.shared else (lock or DataDirLock(settings.data_dir))
    if data_lock is not None:
        data_lock.acquire()
    store = SQLStore(settings.resolved_database_url)
    try:
        storage = open_storage(settings)
        await store.open()
        await storage.open()
        async with contextlib.AsyncExitStack() as stack:
            for provider in table.values():
                await stack.enter_async_context(provider)
            deliverer = Deliverer(store, settings)  # webhooks of the outbox's terminal events
            await deliverer.start()
            stack.push_async_callback(deliverer.stop)
            metrics = Metrics()
            metrics.watch(table)
            manager = (
                BatchManager(store, storage, settings, table, metrics=metrics) if engine else None
            )
            hooks: EngineHooks = manager if manager is not None else _NoEngine()
            if manager is not None:
                await manager.start()
            try:
                yield Services(
                    settings,
                    store,
                    storage,
                    manager,
                    table,
                    batches=BatchService(store, settings, hooks, storage=storage),
                    files=FileService(store, storage, settings, hooks, metrics=metrics),
                    auth=Authenticator(settings, store),
                    metrics=metrics,
                    idempotency=IdempotencyService(IdempotencyStore(store)),
                )
            finally:
                if manager is not None:
                    await manager.stop()
    finally:
        await store.close()
        if data_lock is not None:
            data_lock.release()


class _NoEngine:
    """The engine hooks of an API process without an engine: nothing to do, as the status
    change itself (its ``NOTIFY``) wakes the engines of the worker processes."""

    def batch_created(self, batch: BatchRecord) -> None:
        return None

    def batch_cancelled(self, batch: BatchRecord) -> None:
        return None

    def files_deleted(self) -> None:
        return None


def _log_routes(table: ModelTable) -> None:
    """Say which models are served, under which aliases, and which route takes every request."""
    aliases: dict[str, list[str]] = {}
    for alias, name in table.aliases.items():
        aliases.setdefault(name, []).append(alias)
    for name, provider in table.items():
        also = f" (aliases: {', '.join(aliases[name])})" if name in aliases else ""
        log.info("model %s: provider %s%s", name, provider.name, also)
    if table.names.force is not None:
        log.info("every request is served by %s, whatever its body.model", table.names.force)
