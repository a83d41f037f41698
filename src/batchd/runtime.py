"""The services of one batchd process, built and torn down in one place: ``batchd serve``'s
lifespan and ``batchd run`` (no server) both use :func:`open_services`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from batchd.auth import Authenticator
from batchd.config import Settings
from batchd.engine import BatchManager
from batchd.lock import DataDirLock
from batchd.providers import Provider
from batchd.service import BatchService, FileService
from batchd.storage import LocalStorage, Storage
from batchd.store import SQLStore, Store

__all__ = ["Services", "open_services"]


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    storage: Storage
    manager: BatchManager
    """The engine: validation, the scheduler and its runners, purging."""
    providers: Mapping[str, Provider]
    """One started provider per ``[[models]]`` route, by model name."""
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
    data_lock = lock or DataDirLock(settings.data_dir)
    data_lock.acquire()
    store = SQLStore(settings.resolved_database_url)
    storage = LocalStorage(settings.data_dir / "files")
    try:
        await store.open()
        await storage.open()
        async with contextlib.AsyncExitStack() as stack:
            for provider in providers.values():
                await stack.enter_async_context(provider)
            manager = BatchManager(store, storage, settings, providers)
            await manager.start()
            try:
                yield Services(
                    settings,
                    store,
                    storage,
                    manager,
                    providers,
                    batches=BatchService(store, settings, manager),
                    files=FileService(store, storage, settings, manager),
                    auth=Authenticator(settings, store),
                )
            finally:
                await manager.stop()
    finally:
        await store.close()
        data_lock.release()
