"""The services of one batchd process, built and torn down in one place: ``batchd serve``'s
lifespan and ``batchd run`` (no server) both use :func:`open_services`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from batchd.auth import Authenticator
from batchd.config import Settings
from batchd.engine import BatchManager
from batchd.lock import DataDirLock
from batchd.providers import ModelTable, Provider
from batchd.service import BatchService, FileService
from batchd.storage import LocalStorage, Storage
from batchd.store import SQLStore, Store

__all__ = ["Services", "open_services"]

log = logging.getLogger("batchd")


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    storage: Storage
    manager: BatchManager
    """The engine: validation, the scheduler and its runners, purging."""
    providers: ModelTable
    """One started provider per ``[[models]]`` route, by route name or alias."""
    batches: BatchService
    files: FileService
    auth: Authenticator | None = None
    """Who may call the API (``None``: everyone, as the default project)."""


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    providers: Mapping[str, Provider],
    *,
    lock: DataDirLock | None = None,
) -> AsyncIterator[Services]:
    """Lock the data directory (unless ``lock``, already held, is given), open the store and the
    storage, start the providers and the batch manager (which resumes unfinished batches); on
    exit stop them in the reverse order."""
    table = providers if isinstance(providers, ModelTable) else ModelTable(providers)
    _log_routes(table)
    data_lock = lock or DataDirLock(settings.data_dir)
    data_lock.acquire()
    store = SQLStore(settings.resolved_database_url)
    storage = LocalStorage(settings.data_dir / "files")
    try:
        await store.open()
        await storage.open()
        async with contextlib.AsyncExitStack() as stack:
            for provider in table.values():
                await stack.enter_async_context(provider)
            manager = BatchManager(store, storage, settings, table)
            await manager.start()
            try:
                yield Services(
                    settings,
                    store,
                    storage,
                    manager,
                    table,
                    batches=BatchService(store, settings, manager),
                    files=FileService(store, storage, settings, manager),
                    auth=Authenticator(settings, store),
                )
            finally:
                await manager.stop()
    finally:
        await store.close()
        data_lock.release()


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
